"""The feedback loop: decision records, audits, the review API and live risk.

``store`` holds one row per served sample and its human labels (SQLite or PostgreSQL);
``recorder`` moves records off the request path; ``audit`` draws the uniform audit sample;
``risk`` turns labelled audits into an anytime-valid bound on the live selective risk; ``api``
is the review/feedback/monitor router. Torch-free, like the rest of ``serve``.
"""
