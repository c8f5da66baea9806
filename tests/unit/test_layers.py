"""No import cycle between modules, the part of the house plan `lint-imports` cannot see.

The contracts in pyproject.toml (``[tool.importlinter]``, run by ``make test`` and ``make lint``)
hold the layers, serve's independence from training, bench and torch, and no cycle between the
siblings of any package. A cycle through a package's own ``__init__`` (``p`` imports ``p.a``,
which imports ``p``) has no two siblings in it, so ``acyclic_siblings`` misses it; this test
looks at every module. Imports inside functions and under ``if TYPE_CHECKING:`` count: an import
that runs late is still a dependency.
"""

from __future__ import annotations

import grimp

PACKAGES = ("serve", "training", "bench")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One cycle through the component's first module, each import with its line."""
    first = component[0]
    back = min((m for m in component[1:]
                if graph.direct_import_exists(importer=m, imported=first)),
               key=lambda m: len(graph.find_shortest_chain(first, m) or component))
    chain = [*graph.find_shortest_chain(first, back), first]
    steps = []
    for a, b in zip(chain, chain[1:], strict=False):
        detail = graph.get_import_details(importer=a, imported=b)
        where = f" (l.{detail[0]['line_number']}: {detail[0]['line_contents']})" if detail else ""
        steps.append(f"  {a} -> {b}{where}")
    return f"{len(component)} modules import each other: {', '.join(component)}\n" + "\n".join(steps)


def test_cycle_finder_sees_a_cycle_through_a_package_init() -> None:
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "q"):
        g.add_module(m)
    g.add_import(importer="p", imported="p.a")
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p")
    g.add_import(importer="q", imported="p")
    assert _cycles(g) == [["p", "p.a", "p.b"]]
    assert "p -> p.a" in _describe(g, ["p", "p.a", "p.b"])


def test_no_import_cycle_between_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (move the shared piece into a module both can import):\n" \
        + "\n".join(_describe(graph, c) for c in cycles)
