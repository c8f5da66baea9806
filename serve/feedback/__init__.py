"""The feedback loop: decision records, audits, the review API and live risk.

``store`` holds one row per served sample and its human labels (SQLite or PostgreSQL; its tables
in ``store_schema``, connections and transactions in ``store_connection``);
``recorder`` moves records off the request path (``flusher`` is its writing thread, ``rows`` turns
a batch into rows, ``failures`` tells an outage from a bad row) and runs ``retention``; ``audit``
draws the uniform audit sample;
``risk`` turns labelled audits into an anytime-valid bound on the live selective risk;
``change`` detects a jump of that risk (an e-detector), ``guard`` acts on an alarm; ``api``
is the review/feedback/monitor router; ``access`` its trust boundary (roles, bounded bodies read
after the key, store outages as 503); ``labelstudio`` the Label Studio bridge;
``recalibrate`` certifies from audits, ``window`` chooses which and how unlabelled ones count;
``wiring`` is what the server holds.

May import: ``serve.calibration`` and the maths at the bottom of ``serve``.
"""

__all__ = ["access", "api", "audit", "change", "failures", "flusher", "gauges", "guard",
           "labelstudio", "recalibrate", "recorder", "retention", "risk", "rows", "store",
           "store_connection", "store_schema", "window", "wiring"]
