"""``abstain calibrate MODEL --from-feedback STORE``: the flags, their refusals and the table.

A dry run by default: it prints the certificate in force (with its live status) beside the
proposed one and changes no file; ``--write`` writes the proposal (``calibration.json.bak`` and
the probe batch kept). A flag it cannot use is refused (exit 2, naming it), never ignored.
The library is :mod:`serve.feedback.recalibrate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from serve.cli.argtypes import fraction
from serve.errors import AbstainError

# Flags of `abstain calibrate` that mean nothing to a recertification from feedback, and why.
_NO_DATASET = "recertification reads the audited samples of the store, not a dataset"
_NO_TUNING = ("recertification keeps the score and temperature of the calibration in force "
              "(the stored scores were computed with them): there is no tuning split")
UNUSABLE = {"--data": _NO_DATASET, "--logits": _NO_DATASET, "--device": _NO_DATASET,
            "--batch-size": _NO_DATASET, "--score": _NO_TUNING, "--temperature": _NO_TUNING,
            "--tune-fraction": _NO_TUNING, "--seed": _NO_TUNING,
            "--target-coverage": "recertification certifies the target risk r* of the calibration "
                                 "in force; a coverage target is not a certificate"}
FEEDBACK_ONLY = ("--write", "--since", "--until", "--pool-epochs", "--max-pending")


class _Given(argparse.Action):
    """Mixed into every option's action: records the option in ``namespace.given``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        namespace.given = frozenset(getattr(namespace, "given", frozenset())) | {
            max(self.option_strings, key=len)}
        super().__call__(parser, namespace, values, option_string)


def track_given(p: argparse.ArgumentParser) -> None:
    """Let the handler tell a flag the user gave from its default (``args.given``)."""
    for action in p._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            action.__class__ = type(f"Given{type(action).__name__}", (_Given, type(action)), {})
    p.set_defaults(given=frozenset())


def add_feedback_args(p: argparse.ArgumentParser) -> None:
    """The ``--from-feedback`` group of ``abstain calibrate``."""
    g = p.add_argument_group("recertification from feedback (--from-feedback)")
    g.add_argument("--from-feedback", metavar="STORE", default=None,
                   help="re-certify the threshold on the AUDITED samples of a decision store "
                   "(a --state-dir or postgresql:// URL); keeps the score, r* and δ; a dry run "
                   "unless --write (default: off)")
    g.add_argument("--write", action="store_true",
                   help="write the proposed calibration.json (the current one kept as "
                   "calibration.json.bak; the probe batch kept); without it no file changes")
    g.add_argument("--since", metavar="TIME", default=None,
                   help="use the audits drawn since TIME (unix seconds or ISO 8601, UTC unless "
                   "it says otherwise), of any epoch of the lineage; fix it before looking at "
                   "labels (default: the audits of the calibration in force only)")
    g.add_argument("--until", metavar="TIME", default=None,
                   help="end the window before TIME, e.g. before audits still waiting for labels "
                   "(default: now)")
    g.add_argument("--pool-epochs", action="store_true",
                   help="pool the audits of every epoch of the lineage, after tests of "
                   "exchangeability with the current epoch (refused if any rejects)")
    g.add_argument("--max-pending", type=fraction(0.05, closed_right=True), default=0.05,
                   help="refuse while more than this share of the window's audits is unlabelled; "
                   "below it, each unlabelled audit counts as an error")


def refuse_unusable(args: argparse.Namespace, target_risk: float, delta: float) -> None:
    """Exit-2 refusal of every given flag ``--from-feedback`` cannot honour, each named."""
    given = set(getattr(args, "given", ()))
    bad = [f"{flag} ({why})" for flag, why in UNUSABLE.items() if flag in given]
    for flag, dest, certified, name in (("--target-risk", "target_risk", target_risk, "r*"),
                                        ("--delta", "delta", delta, "δ")):
        if flag in given and getattr(args, dest) != certified:
            bad.append(f"{flag} {getattr(args, dest):g} ({name} of the calibration in force is "
                       f"{certified:g}; recertification restores that guarantee — to certify "
                       f"another {name}, run `abstain calibrate` on calibration data)")
    if bad:
        raise AbstainError("--from-feedback cannot use " + "; ".join(bad) + ". Drop "
                           + ("it" if len(bad) == 1 else "them"))


def refuse_feedback_only(args: argparse.Namespace) -> None:
    """Without ``--from-feedback``, its own flags mean nothing: refuse them by name."""
    given = sorted(set(getattr(args, "given", ())) & set(FEEDBACK_ONLY))
    if given:
        raise AbstainError(f"{', '.join(given)} only apply with --from-feedback STORE (a "
                           "calibration on data always writes, keeping calibration.json.bak)")


def _fmt(v: float | None, spec: str = ".4f", none: str = "—") -> str:
    return none if v is None else format(v, spec)


def _table(p: Any, write: bool) -> None:
    from rich.table import Table

    from serve.cli.console import report_console

    con = report_console()
    old, new, cert, live, w = p.old, p.new, p.cert, p.live, p.window
    t = Table(title=f"{p.model_dir}: the certificate in force and the proposed one "
                    f"(r* = {old.target_risk:g}, δ = {old.delta:g})")
    for col, just in (("", "left"), ("in force", "right"), ("proposed", "right")):
        t.add_column(col, justify=just)
    th_new = ("—" if cert is None else "not certified" if new is None
              else "none (defer all)" if cert.threshold is None else f"{cert.threshold:.6g}")
    cov_old, cov_new = p.coverage_at(old.threshold), (p.coverage_at(cert.threshold)
                                                      if new is not None else None)
    defer = (f"{1000 * (1 - cov_old):.0f}" if cov_old is not None else "—",
             f"{1000 * (1 - cov_new):.0f} ({1000 * (cov_old - cov_new):+.0f})"
             if cov_new is not None and cov_old is not None else "—")
    rows = [
        ("calibration", old.sha256[:12], "none" if new is None
         else new.sha256[:12] + ("" if write else " (not written)")),
        ("threshold", "none (defer all)" if old.threshold is None else f"{old.threshold:.6g}",
         th_new),
        ("coverage (its certification data)", f"{old.coverage:.4f}",
         _fmt(cert.coverage if cert is not None and cert.certified else None)),
        ("coverage on the window's audits", _fmt(cov_old), _fmt(cov_new)),
        ("deferrals per 1,000 predictions (window)", *defer),
        ("risk bound (post-selection CP)", f"{old.risk_upper_bound:.4f}",
         _fmt(cert.risk_upper_bound if cert is not None and cert.certified else None)),
        ("evidence", f"{old.n_cert} samples"
         + (f" ({old.data.get('source') or old.data.get('spec')})" if old.data else ""),
         f"{len(w)} audits: {int(w.labelled.sum())} labelled ({int(w.wrong.sum())} wrong), "
         f"{w.n_unlabelled} unlabelled = errors"),
        ("accepted / errors", f"{old.score_params.get('n_accepted', '—')} / "
                              f"{old.score_params.get('n_errors', '—')}",
         "—" if cert is None or not cert.certified else f"{cert.n_accepted} / {cert.n_errors}"),
        ("live status (accepted audits)", f"{live.status}: {live.errors} wrong of {live.labels} "
         f"labelled, {live.pending_audits} pending, {live.expired_audits} expired", ""),
        ("live risk bounds (labelled; pessimistic)",
         f"[{live.lower:.4f}, {live.upper:.4f}]; ≤ {live.upper_pessimistic:.4f}", ""),
    ]
    for row in rows:
        t.add_row(*row)
    con.print(t)
    con.print(f"window: {p.choice.describe(old.sha256)}; unlabelled audits count as errors "
              f"(--max-pending {p.choice.max_pending:g})")
    for c in p.outcome.changes:
        con.print(f"change check: {c.what} ({c.n} audits): p = {c.p_value:.3g}"
                  f"{' — ROSE within the window' if c.rejected else ''}")
    for c in p.outcome.pool:
        con.print(f"pool check: {c.test} vs {c.epoch[:12]}: p = {c.p_value:.3g}"
                  f"{' — REJECTED' if c.rejected else ''}")
    if old.threshold is not None and cert is not None:
        m = p.outcome.more_labels
        more = ("none would: its error rate on the window is not below r*" if m is None
                else "already enough" if m == 0 else f"≈ {m} more")
        con.print(f"labelled audits to certify at the in-force threshold's coverage: {more}")


def from_feedback_main(args: argparse.Namespace) -> int:
    """The ``--from-feedback`` branch of ``abstain calibrate``."""
    from serve.calibration.artifact import FILENAME, load_calibration
    from serve.cli.console import report_console
    from serve.feedback.recalibrate import WindowChoice, propose, write_proposal
    from serve.feedback.window import parse_time

    path = Path(args.model)
    model_dir = path if path.is_dir() else path.parent
    if not (model_dir / FILENAME).is_file():
        raise AbstainError(f"{model_dir} has no calibration.json to re-certify: run `abstain "
                           "calibrate` on calibration data first, serve, then recalibrate from feedback")
    old = load_calibration(model_dir)
    refuse_unusable(args, old.target_risk, old.delta)
    choice = WindowChoice(since=None if args.since is None else parse_time(args.since),
                          until=None if args.until is None else parse_time(args.until),
                          pool=args.pool_epochs, max_pending=args.max_pending)
    p = propose(model_dir, args.from_feedback, choice, args.method, args.allow_defer_all)
    _table(p, args.write and p.new is not None)
    con = report_console()
    if p.new is None:
        raise AbstainError(p.refusal or "nothing to propose")
    if p.refusal:
        con.print(f"[bold red]{p.refusal}[/bold red]")
    if not args.write:
        con.print(f"[bold]dry run:[/bold] no file changed. Add --write to write "
                  f"{model_dir / FILENAME} (the current one kept as {FILENAME}.bak)")
        return 0
    backup = write_proposal(p)
    probe = f"; probe batch {model_dir / 'probe.npz'} kept" if p.new.probe_sha256 else ""
    con.print(f"wrote {model_dir / FILENAME} (sha256 {p.new.sha256[:12]}); kept the previous "
              f"calibration as {backup}{probe}. A server polling the repository hot-reloads it "
              "as a new live-risk epoch")
    return 0
