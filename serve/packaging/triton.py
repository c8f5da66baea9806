"""A Triton model directory for a packaged model: ``<name>/config.pbtxt`` + ``<name>/<version>/model.onnx``.

The configuration is written from the ONNX graph's own inputs and outputs (platform
``onnxruntime_onnx``, dynamic batching), so it cannot disagree with the model it describes.
Outputs of shape ``(batch,)`` (``label``, ``score``, ``reject``) appear to Triton clients as
``(batch, 1)`` through ``reshape { shape: [] }``, the form Triton's batching requires.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import TensorProto

from serve.errors import AbstainError
from serve.files import atomic_write_bytes, atomic_write_text

MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
          TensorProto.FLOAT16: "TYPE_FP16", TensorProto.BFLOAT16: "TYPE_BF16",
          TensorProto.INT64: "TYPE_INT64", TensorProto.INT32: "TYPE_INT32",
          TensorProto.INT16: "TYPE_INT16", TensorProto.INT8: "TYPE_INT8",
          TensorProto.UINT8: "TYPE_UINT8", TensorProto.BOOL: "TYPE_BOOL"}


class TritonError(AbstainError):
    """A model that Triton's configuration cannot describe, or a target that exists."""


def _tensor(v: onnx.ValueInfoProto, batched: bool) -> str:
    t = v.type.tensor_type
    if t.elem_type not in _TYPES:
        raise TritonError(f"tensor {v.name!r} has ONNX type "
                          f"{TensorProto.DataType.Name(t.elem_type)}, which Triton's ONNX backend "
                          "does not take")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if batched:
        dims = dims[1:]
    lines = [f'    name: "{v.name}"', f"    data_type: {_TYPES[t.elem_type]}"]
    if batched and not dims:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {', '.join(map(str, dims))} ]")
    return "  {\n" + "\n".join(lines) + "\n  }"


def config_pbtxt(model: onnx.ModelProto, name: str, max_batch_size: int = 1024,
                 max_queue_delay_us: int = 1000, comment: str = "") -> str:
    """Triton's ``config.pbtxt`` (text protobuf of ``inference.ModelConfig``) for ``model``."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    firsts = [v.type.tensor_type.shape.dim[0] if v.type.tensor_type.shape.dim else None
              for v in (*inputs, *g.output)]
    batched = all(d is not None and not d.HasField("dim_value") for d in firsts)
    if not batched:
        max_batch_size = 0
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    body = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}",
            "input [\n" + ",\n".join(_tensor(v, batched) for v in inputs) + "\n]",
            "output [\n" + ",\n".join(_tensor(v, batched) for v in g.output) + "\n]"]
    if batched:
        body.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    return head + "\n".join(body) + "\n"


def write_model_dir(root: str | os.PathLike[str], name: str, version: int, model: onnx.ModelProto,
                    force: bool = False, comment: str = "") -> tuple[Path, Path]:
    """Write ``root/name/version/model.onnx`` and ``root/name/config.pbtxt`` (both atomically).

    Raises:
        TritonError: a bad name or version, or the version's model.onnx exists and not ``force``.
    """
    if not name or "/" in name or name.startswith("."):
        raise TritonError(f"model name {name!r} is not a directory name; pass --name NAME")
    if not (isinstance(version, int) and version >= 1):
        raise TritonError(f"Triton versions are positive integers; got {version!r}: pass --version N")
    model_path = Path(root) / name / str(version) / MODEL_FILE
    config_path = Path(root) / name / CONFIG_FILE
    if model_path.exists() and not force:
        raise TritonError(f"{model_path} exists; pass --force to replace it")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_path, model.SerializeToString())
    atomic_write_text(config_path, config_pbtxt(model, name, comment=comment))
    return model_path, config_path
