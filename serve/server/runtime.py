"""An onnxruntime session for one classifier: load, check providers, read metadata, run.

Calibration, evaluation, the server and the benchmark all get logits through this module, so the
numbers calibration certifies are the numbers the server computes.

onnxruntime falls back to CPU *silently* when CUDA cannot be initialised; :class:`OnnxModel`
reads the providers the session really activated and refuses ``device="cuda"`` without CUDA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from serve.errors import AbstainError, MissingExtraError

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
}


class ModelLoadError(AbstainError):
    """The model file is missing, corrupt, or not a classifier abstain can serve."""


def _ort():
    try:
        import onnxruntime
    except ModuleNotFoundError as err:
        raise MissingExtraError("cpu", "onnxruntime") from err
    return onnxruntime


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


MAX_MODEL_BYTES = 4 << 30


def read_model_bytes(path: Path) -> bytes:
    """A model file's bytes, read once (the session and the hash both use them)."""
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelLoadError(f"{path} is {size} bytes; models over {MAX_MODEL_BYTES} bytes "
                                 "(protobuf's limit is 2 GiB without external data) are refused")
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a directory, not a model file") from None
    except OSError as err:
        raise ModelLoadError(f"cannot read {path}: {err.strerror or err}") from None


def _parse_metadata(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def providers_for(device: Device) -> list[str]:
    """Execution providers to request for a device, best first, always ending with CPU."""
    available = set(_ort().get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = ["CUDAExecutionProvider"]
    if os.environ.get("ABSTAIN_TENSORRT") == "1":
        wanted.insert(0, "TensorrtExecutionProvider")
    chosen = [p for p in wanted if p in available]
    if device == "cuda" and "CUDAExecutionProvider" not in chosen:
        raise ModelLoadError(
            "--device cuda, but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {sorted(available)}). Install the 'gpu' extra "
            "(pip install 'abstain[gpu]', without onnxruntime beside it) or use --device cpu")
    return [*chosen, "CPUExecutionProvider"]


@dataclass
class OnnxModel:
    """A loaded ONNX classifier: input ``(batch, *input_shape)`` → output ``logits (batch, K)``.

    Attributes:
        path: the model file.
        device: requested device; ``providers`` holds what onnxruntime really activated.
        intra_op_threads: onnxruntime intra-op threads (0 = onnxruntime's default).
    """

    path: Path
    device: Device = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    model_bytes: bytes | None = field(default=None, repr=False)   # None: read ``path`` once
    session: Any = field(init=False, repr=False)
    sha256: str = field(init=False)
    metadata: dict[str, Any] = field(init=False)
    providers: list[str] = field(init=False)

    def __post_init__(self) -> None:
        ort = _ort()
        self.path = Path(self.path)
        if self.model_bytes is None:
            self.model_bytes = read_model_bytes(self.path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads:
            opts.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads:
            opts.inter_op_num_threads = self.inter_op_threads
        opts.log_severity_level = 3
        requested = providers_for(self.device)
        try:
            # Built from the bytes that are hashed below, never from the path again: a file
            # renamed into place in between cannot pair one model with another's calibration.
            self.session = ort.InferenceSession(self.model_bytes, sess_options=opts,
                                                providers=requested)
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise ModelLoadError(
                f"cannot load {self.path}: not a valid ONNX model ({first}). "
                "Re-export it with `abstain export` or restore the file") from err
        self.providers = list(self.session.get_providers())
        if self.device == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise ModelLoadError(
                f"--device cuda, but onnxruntime activated only {self.providers} for {self.path} "
                "(CUDA libraries missing or no GPU visible). Fix the CUDA install or use --device cpu")
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        self.model_bytes = None                       # the session holds its own copy
        self.metadata = _parse_metadata(self.session.get_modelmeta().custom_metadata_map)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path}: abstain serves single-input classifiers; "
                                 f"this model has {len(inputs)} inputs")
        self._input = inputs[0]
        names = [o.name for o in outputs]
        self.output_name = "logits" if "logits" in names else names[0]
        # On CUDA, I/O binding: the input is copied to the device once and the logits land
        # in host memory directly, without the copies session.run makes around the graph.
        self._io_binding = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        log.info("loaded %s (sha256 %s…) on %s", self.path, self.sha256[:12], self.providers[0])

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first active one)."""
        return self.providers[0]

    @cached_property                    # read per request: the session's answer never changes
    def input_name(self) -> str:
        return self._input.name

    @cached_property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape (the batch axis removed); from metadata when the graph is symbolic."""
        dims = self._input.shape[1:]
        if all(isinstance(d, int) for d in dims):
            return tuple(dims)
        meta = self.metadata.get("input_shape")
        if isinstance(meta, list):
            return tuple(int(d) for d in meta)
        raise ModelLoadError(f"{self.path}: input shape {self._input.shape} is not fixed; add "
                             "'input_shape' metadata")

    @cached_property
    def input_dtype(self) -> np.dtype:
        return np.dtype(_ORT_DTYPES.get(self._input.type, np.float32))

    @property
    def num_classes(self) -> int:
        names = self.metadata.get("class_names")
        if isinstance(names, list):
            return len(names)
        dim = self.session.get_outputs()[0].shape[-1]
        if isinstance(dim, int):
            return dim
        return int(self.run(np.zeros((1, *self.input_shape), self.input_dtype)).shape[1])

    @cached_property
    def class_names(self) -> list[str]:
        names = self.metadata.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) else [str(i) for i in range(self.num_classes)]

    def run(self, x: np.ndarray) -> np.ndarray:
        """One session run: ``x (n, *input_shape)`` → ``logits (n, K)`` in the model's dtype."""
        if self._io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
            binding.bind_output(self.output_name, "cpu")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def batches(self, x: np.ndarray, batch_size: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(x), batch_size):
            yield start, self.run(np.ascontiguousarray(x[start:start + batch_size], self.input_dtype))

    def logits(self, x: np.ndarray, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
        """Logits for a whole array, in batches, as float64 ``(n, K)``."""
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise AbstainError(f"inputs have per-sample shape {x.shape[1:]}, but {self.path} "
                               f"expects {self.input_shape}")
        out = np.empty((len(x), self.num_classes), np.float64)
        it = self.batches(x, batch_size)
        if progress:
            from rich.progress import track
            it = track(it, total=-(-len(x) // batch_size), description="logits (onnxruntime)")
        for start, z in it:
            out[start:start + len(z)] = z
        return out

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once so the first real request pays no allocation cost."""
        for b in batch_sizes:
            self.run(np.zeros((b, *self.input_shape), self.input_dtype))
