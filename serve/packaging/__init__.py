"""Packaging: a calibrated model as one ONNX graph with the decision inside, and Triton's layout.

``decision_graph`` appends the certified rule (score, threshold, argmax) to a model's logits as
ONNX nodes (needs ``onnx``, not torch); ``triton`` writes a Triton model directory for it.

May import: ``serve.calibration`` and the maths at the bottom of ``serve``.
"""

__all__ = ["decision_graph", "triton"]
