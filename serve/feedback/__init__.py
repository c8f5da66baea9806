"""The feedback loop: decision records, audits, the review API and live risk.

``store`` holds one row per served sample and its human labels (SQLite or PostgreSQL);
``recorder`` moves records off the request path; ``audit`` draws the uniform audit sample;
``risk`` turns labelled audits into an anytime-valid bound on the live selective risk;
``change`` detects a jump of that risk (an e-detector), ``guard`` acts on an alarm; ``api``
is the review/feedback/monitor router; ``labelstudio`` the Label Studio bridge; ``recalibrate``
certifies from labelled audits; ``wiring`` is what the server holds.

May import: ``serve.calibration`` and the maths at the bottom of ``serve``.
"""

__all__ = ["api", "audit", "change", "gauges", "guard", "labelstudio", "recalibrate", "recorder",
           "risk", "store", "wiring"]
