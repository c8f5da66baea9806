"""Monitoring: the Prometheus series of the server and the label-free deferral-drift test.

``monitor`` (:class:`~serve.monitoring.monitor.Monitor`: what the request path reports),
``model_series`` (a version's series going live and leaving, on hot reload),
``tally`` (applies what the hot path queued, once per flush), ``prometheus`` (multiprocess
set-up, vectorised histogram updates), ``drift`` (the deferral-rate test), ``shift`` (the
anytime-valid label-free shift monitor: an e-detector with a stated false-alarm rate),
``cascade_metrics`` (per-stage series of a cascade).

May import: ``serve.calibration`` and the maths at the bottom of ``serve``.
"""

__all__ = ["cascade_metrics", "drift", "model_series", "monitor", "prometheus", "shift", "tally"]
