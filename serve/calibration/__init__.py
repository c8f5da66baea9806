"""Threshold calibration: choose the score (tuning split), certify λ (certification split), save.

``split`` (stratified tune/certify split), ``choose`` (the score and temperature), ``plan``
(the Learn-then-Test grid and start, fixed on the tuning split), ``binomial`` (the exact binomial
test and Clopper–Pearson bounds ``plan`` and ``certify`` share), ``certify`` (the certificates),
``refusal`` (why nothing was certified, in words), ``pipeline`` (all of them together),
``artifact`` (``calibration.json``), ``probe`` (the probe batch re-run at every load), ``plots``;
for a cascade of models, ``cascade`` (per-stage thresholds certified as one system;
``cascade_plan`` its grid, path and budgets from the tuning split; ``cascade_grid`` counts every
threshold vector at once), ``cascade_pipeline`` and
``cascade_artifact`` (``cascade.json``, ``cascade_calibration.json``).

May import: the maths at the bottom of ``serve`` (scores, selective_metrics, decision, data).
"""

__all__ = ["artifact", "binomial", "cascade", "cascade_artifact", "cascade_grid",
           "cascade_pipeline", "cascade_plan", "certify", "choose", "pipeline", "plan", "plots",
           "probe", "refusal", "split"]
