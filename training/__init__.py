"""abstain's training side (needs the `train` extra): losses, data, models, trainer, ONNX export."""
