"""Acting on a live-risk alarm: ``--on-risk-alarm keep | defer``.

After every maintenance pass of the recorder (every few seconds, beside the live-risk gauges),
:meth:`RiskGuard.check` looks at each served (model, version, calibration) epoch. Its alarm is
*active* when

* the live-risk status is ``alarm``: the confidence sequence's lower end exceeds r* (``risk.py``;
  once audits expire unlabelled, on the basis that counts them as errors), or
* the risk-change e-detector over its labelled audits has fired (``change.py``: the sequence
  bounds the average since the calibration took effect, the detector finds a jump after calm).

The detector's alarm is a stopping time: once it fires the epoch stays alarmed. Everything is
recomputed from the store, so a restart finds the same state. Then, per the policy:

* ``keep`` (the default): serve on; the gauge ``abstain_risk_alarm_active{model,version}``, a
  warning log line and the review queue (``risk_alarms``) say so.
* ``defer``: the same, and the epoch's decision rule defers every prediction from the next batch
  on (:attr:`serve.decision.DecisionRule.force_defer`). Loading a new calibration — a new rule,
  a new epoch with no evidence against it — clears it.

(``fallback``, a stricter threshold certified in advance, is refused by the settings until
``calibration.json`` can hold one.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from serve.feedback.change import ARL, ChangeStatus, detect
from serve.feedback.gauges import LoopMetrics
from serve.feedback.risk import LiveRisk
from serve.feedback.store import Store

log = logging.getLogger(__name__)
POLICIES = ("keep", "defer")
PREFIX = "risk_alarm:"

Epoch = tuple[str, str, str]


def alarm_key(model: str, version: str, calibration_sha256: str) -> str:
    return f"{PREFIX}{model}/{version}/{calibration_sha256}"


def active_alarms(store: Store) -> list[dict[str, Any]]:
    """The alarms the guard marked active in the store (what the review queue shows)."""
    out = []
    for raw in store.values(PREFIX).values():
        item = json.loads(raw)
        if item.get("active"):
            out.append(item)
    return sorted(out, key=lambda a: a.get("since", 0.0))


class RiskGuard:
    """Turns the served epochs' live risk into an alarm and, with ``defer``, into deferrals.

    Args:
        store: the decision store (labelled audits; alarms are written to its ``kv``).
        metrics: the loop's gauges.
        policy: ``keep`` or ``defer``.
        arl: the change detector's average run length to a false alarm.
        rules: the served epochs → each one's decision rule (anything with ``force_defer``).
    """

    def __init__(self, store: Store, metrics: LoopMetrics, policy: str = "keep",
                 arl: float = ARL, rules: Callable[[], Mapping[Epoch, Any]] | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"--on-risk-alarm {policy!r}: choose one of {', '.join(POLICIES)}")
        self.store, self.metrics, self.policy, self.arl = store, metrics, policy, arl
        self.rules = rules or (lambda: {})
        self.active: dict[Epoch, dict[str, Any]] = {}

    def served(self) -> set[Epoch]:
        return set(self.rules())

    def check(self, risks: list[LiveRisk]) -> None:
        """One pass over the served epochs' live risk (the recorder's maintenance thread)."""
        rules = self.rules()
        seen: set[Epoch] = set()
        for r in risks:
            key = (r.model, r.version, r.calibration_sha256)
            if key not in rules:
                continue
            seen.add(key)
            change = detect(self.store.audit_outcomes(*key), r.target_risk, self.arl)
            label = (r.model, r.version, r.calibration_sha256[:12])
            if change.observations:
                self.metrics.change.labels(*label).set(change.log_statistic)
            self.metrics.change_detected.labels(*label).set(int(change.alarm))
            reasons = self._reasons(r, change)
            if reasons and key not in self.active:
                self._raise(key, r, reasons)
            rule = rules[key]
            if key in self.active and self.policy == "defer" and not rule.force_defer:
                rule.force_defer = True
            self.metrics.alarm_active.labels(r.model, r.version).set(int(key in self.active))
        for key in [k for k in self.active if k not in rules]:     # no longer served
            self._clear(key)
        for key in rules:
            if key not in seen:                                   # served, nothing recorded yet
                self.metrics.alarm_active.labels(key[0], key[1]).set(int(key in self.active))

    @staticmethod
    def _reasons(r: LiveRisk, change: ChangeStatus) -> list[str]:
        out = []
        if r.status == "alarm":
            expired = getattr(r, "expired_audits", 0)
            basis = (f"{r.errors} errors in {r.labels} labelled audits" if not expired else
                     f"{r.errors} errors in {r.labels} labelled audits + {expired} expired "
                     "unlabelled ones counted as errors")
            value = f" {r.lower:.4f}" if not expired else ""
            out.append(f"live-risk lower bound{value} > r* = {r.target_risk:g} ({basis}, "
                       f"δ = {r.delta:g})")
        if change.alarm:
            out.append(f"risk-change detector fired at labelled audit {change.alarm_at} of "
                       f"{change.observations} (average run length to a false alarm ≥ "
                       f"{change.arl:g})")
        return out

    def _raise(self, key: Epoch, r: LiveRisk, reasons: list[str]) -> None:
        item = {"model": r.model, "version": r.version, "calibration_sha256": r.calibration_sha256,
                "active": True, "since": time.time(), "policy": self.policy, "reasons": reasons,
                "action": ("every prediction is deferred until a new calibration loads"
                           if self.policy == "defer" else "serving on (--on-risk-alarm keep)")}
        self.active[key] = item
        log.warning("live-risk alarm on %s/%s (calibration %s): %s; %s", r.model, r.version,
                    r.calibration_sha256[:12], "; ".join(reasons), item["action"])
        self._write(key, item)

    def _clear(self, key: Epoch) -> None:
        item = {**self.active.pop(key), "active": False, "cleared": time.time()}
        log.info("live-risk alarm on %s/%s (calibration %s) cleared: that calibration is no "
                 "longer served", key[0], key[1], key[2][:12])
        self._write(key, item)

    def _write(self, key: Epoch, item: dict[str, Any]) -> None:
        try:
            self.store.set_value(alarm_key(*key), json.dumps(item))
        except Exception as err:  # noqa: BLE001 - the gauge and the log already say it
            log.warning("could not record the risk alarm in the store: %s", err)
