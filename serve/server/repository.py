"""The model repository ``<root>/<name>/<version>/{model.onnx, calibration.json}`` and hot reload.

Each servable version is a :class:`ModelVersion` (serve/server/model_version.py): its onnxruntime
session, verified calibration, decision rule and batcher. The live set is an immutable mapping swapped in one assignment, so a
request that already holds a version finishes on it while new requests see the new set. A version
that fails to load (bad model, missing/malformed calibration, wrong model hash) is refused with a
logged error and, on reload, whatever served before keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serve.calibration.cascade_artifact import read_spec
from serve.errors import AbstainError
from serve.monitoring.monitor import Monitor
from serve.server.cascade import (
    CascadeVersion,
    cascade_signature,
    is_cascade_dir,
    load_cascade,
)
from serve.server.cascade_batch import CascadeBatcher
from serve.server.model_version import Batcher, ModelVersion, load_version
from serve.server.protocol import short
from serve.server.repository_files import (  # noqa: F401  (re-exported)
    MODEL_FILE,
    NAME_RE,
    VERSION_RE,
    scan,
    valid_name,
    version_signature,
)
from serve.server.runtime import Device
from serve.server.settings import ModelSource

log = logging.getLogger(__name__)


class ModelNotFound(AbstainError):
    status = 404
    reason = "unknown_model"


Served = ModelVersion | CascadeVersion             # what the live set holds


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    serving: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "unloaded": self.unloaded, "failed": self.failed,
                "serving": self.serving}


class ModelRepository:
    """All servable versions under ``root``; reload swaps the live set atomically."""

    def __init__(self, source: ModelSource, *, monitor: Monitor,
                 batcher_factory: Callable[[ModelVersion], Batcher] | None = None,
                 preloaded: list[ModelVersion] | None = None,
                 cascade_record: Callable[[Any], Any] | None = None) -> None:
        self.root = Path(source.root)
        self.on_probe_mismatch = source.on_probe_mismatch
        self.follow_symlinks = source.follow_symlinks
        self.monitor = monitor
        self.device: Device = source.device
        self.intra_op_threads = source.intra_op_threads
        self.warmup = source.warmup_batch_sizes
        self.batcher_factory = batcher_factory
        self.cascade_record = cascade_record      # cascade → its decision-store hook (or None)
        # Versions `abstain serve` already loaded to validate the start: the first reload adopts
        # them (warming them up) instead of loading every model a second time.
        self._preloaded = {(mv.name, mv.version): mv for mv in preloaded or ()}
        self._live: Mapping[str, Mapping[int, Served]] = MappingProxyType({})
        self._failed: dict[tuple[str, int], tuple] = {}   # signature that failed, to log once
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self.ready = False

    @property
    def models(self) -> Mapping[str, Mapping[int, Served]]:
        return self._live

    def versions(self) -> list[Served]:
        return [mv for vs in self._live.values() for mv in vs.values()]

    def get(self, name: str, version: str | int | None = None) -> Served:
        """The requested version, or the highest one; a 404 error naming what exists."""
        vs = self._live.get(name)
        if not vs:
            known = ", ".join(sorted(self._live)) or "none"
            raise ModelNotFound(f"no model named {short(name)}; serving: {known}")
        if version is None or version == "":
            return vs[max(vs)]
        v = str(version)
        if not VERSION_RE.match(v) or int(v) not in vs:
            raise ModelNotFound(f"model {short(name)} has no version {short(v, 16)}; versions: "
                                f"{', '.join(str(k) for k in sorted(vs))} (positive integers)")
        return vs[int(v)]

    async def reload(self) -> ReloadReport:
        """Scan the repository; load new or changed versions, drop removed ones, keep the rest."""
        async with self._lock:
            report = ReloadReport()
            found = await asyncio.to_thread(scan, self.root, self.follow_symlinks)
            cascades = {k: d for k, d in found.items() if is_cascade_dir(d)}
            current = {(mv.name, mv.version): mv for mv in self.versions()}
            new: dict[tuple[str, int], Any] = {}
            for key, d in found.items():
                if key in cascades:                  # after the models: built on their stages
                    continue
                label = f"{key[0]}/{key[1]}"
                sig = await asyncio.to_thread(version_signature, d)
                old = current.get(key)
                if old is not None and old.signature == sig:
                    new[key] = old
                    continue
                if self._failed.get(key) == sig:      # already refused; keep what serves
                    if old is not None:
                        new[key] = old
                    report.failed[label] = "unchanged since it was refused"
                    continue
                pre = self._preloaded.pop(key, None)
                mv = None
                try:
                    if pre is not None and pre.signature == sig and pre.batcher is None:
                        await asyncio.to_thread(pre.model.warmup, tuple(self.warmup))
                        mv = pre
                    else:
                        mv = await asyncio.to_thread(load_version, d, key[0], key[1], self.device,
                                                     self.intra_op_threads, self.warmup,
                                                     self.on_probe_mismatch)
                    if self.batcher_factory is not None and mv.batcher is None:
                        mv.batcher = self.batcher_factory(mv)
                    # Everything the live set needs is set up before the swap, so the swap
                    # below cannot half-load a version.
                    self.monitor.model_loaded(key[0], str(key[1]), mv.model.provider,
                                              mv.calibration, mv.model.sha256)
                except Exception as err:            # any failure refuses this version only
                    self._failed[key] = sig
                    keep = " (the previously loaded files keep serving)" if old else ""
                    why = str(err) if isinstance(err, AbstainError) else \
                        f"{type(err).__name__}: {err} (unexpected; please report it)"
                    log.error("refused %s%s: %s", label, keep, why)
                    report.failed[label] = why
                    if mv is not None and mv.batcher is not None:
                        self._retire(mv)
                    if old is not None:
                        new[key] = old
                    continue
                self._failed.pop(key, None)
                new[key] = mv
                report.loaded.append(label)
                log.info("serving %s on %s (score %s, threshold %s, certified coverage %.3f)",
                         label, mv.model.provider, mv.calibration.score, mv.calibration.threshold,
                         mv.calibration.coverage)
            self._load_cascades(cascades, current, new, report)
            live: dict[str, dict[int, Any]] = {}
            for (name, version), mv in sorted(new.items()):
                live.setdefault(name, {})[version] = mv
            retired = [mv for key, mv in current.items() if new.get(key) is not mv]
            self._live = MappingProxyType({k: MappingProxyType(v) for k, v in live.items()})
            for mv in retired:
                if (mv.name, mv.version) not in new:
                    report.unloaded.append(f"{mv.name}/{mv.version}")
                    self.monitor.model_unloaded(mv.name, str(mv.version))
                    log.info("unloaded %s/%s", mv.name, mv.version)
                if mv.batcher is not None:   # in-flight requests finish on the old version
                    self._retire(mv)
            report.serving = [f"{mv.name}/{mv.version}" for mv in self.versions()]
            return report

    def _load_cascades(self, found: dict[tuple[str, int], Path], current: dict, new: dict,
                       report: ReloadReport) -> None:
        """Build each cascade on the stage versions just chosen (no await: files are tiny).

        Unlike a model, a cascade that fails keeps nothing serving: its old stages may be gone.
        """
        def stage_of(model: str, version: int) -> Any | None:
            return new.get((model, version))

        for key, d in found.items():
            label = f"{key[0]}/{key[1]}"
            old = current.get(key)
            try:
                stages = [stage_of(r.model, r.version) for r in read_spec(d)]
                if old is not None and old.signature == cascade_signature(d, stages):
                    new[key] = old
                    continue
                cv = load_cascade(d, key[0], key[1], stage_of)
                if self.batcher_factory is not None:
                    cv.batcher = CascadeBatcher(
                        cv, self.monitor.cascade_hook(key[0], str(key[1]), cv.calibration),
                        self.cascade_record(cv) if self.cascade_record is not None else None)
            except Exception as err:
                why = str(err) if isinstance(err, AbstainError) else \
                    f"{type(err).__name__}: {err} (unexpected; please report it)"
                if self._failed.get(key) != why:
                    log.error("refused cascade %s: %s", label, why)
                self._failed[key] = why
                report.failed[label] = why
                continue
            self._failed.pop(key, None)
            new[key] = cv
            report.loaded.append(label)
            c = cv.calibration
            log.info("serving cascade %s: %s (thresholds %s; certified system risk ≤ %g, human "
                     "share %.3f)", label, " → ".join(f"{r.model}/{r.version}" for r in c.stages),
                     ", ".join("none" if r.threshold is None else f"{r.threshold:.4g}"
                               for r in c.stages), c.target_risk, c.human_share)

    def _retire(self, mv: ModelVersion) -> None:
        assert mv.batcher is not None
        task = asyncio.get_running_loop().create_task(mv.batcher.close())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        for mv in self.versions():
            if mv.batcher is not None:
                await mv.batcher.close()
