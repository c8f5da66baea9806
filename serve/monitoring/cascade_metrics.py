"""Prometheus series per cascade stage: samples answered and deferred, time spent in the stage.

``abstain_cascade_stage_samples_total{model, version, stage, outcome}`` counts, per stage, the
samples it accepted (``answered``) and passed on (``deferred``: to the next stage, or from the
last stage to people); ``abstain_cascade_stage_duration_seconds{model, version, stage}`` is the
time a request spent in each stage it reached (its queue wait and run on the stage's batcher).
``model``/``version`` name the cascade; each stage model's own series stay its own.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram

from serve.monitoring.tally import LATENCY_BUCKETS

Hook = Callable[[list[int], list[int], list[int], list[float]], None]


class CascadeMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.samples = Counter("abstain_cascade_stage_samples",
                               "Cascade samples per stage: answered there or deferred onward.",
                               ("model", "version", "stage", "outcome"), registry=registry)
        self.duration = Histogram("abstain_cascade_stage_duration_seconds",
                                  "Time a cascade request spent in each stage it reached.",
                                  ("model", "version", "stage"), buckets=LATENCY_BUCKETS,
                                  registry=registry)

    def hook(self, model: str, version: str) -> Hook:
        """The cascade batcher's per-request hook (children resolved once per stage)."""
        children: dict[int, tuple] = {}

        def of(stage: int) -> tuple:
            c = children.get(stage)
            if c is None:
                s = str(stage)
                c = children[stage] = (self.samples.labels(model, version, s, "answered"),
                                       self.samples.labels(model, version, s, "deferred"),
                                       self.duration.labels(model, version, s))
            return c

        def on_request(reached: list[int], answered: list[int], deferred: list[int],
                       seconds: list[float]) -> None:
            for k, (a, d, t) in enumerate(zip(answered, deferred, seconds, strict=True), 1):
                ans, dfr, dur = of(k)
                if a:
                    ans.inc(a)
                if d:
                    dfr.inc(d)
                dur.observe(t)

        return on_request
