"""Model registry: every model is ``standardise → body → fc`` with penultimate features exposed.

Standardisation (mean/std of the training split) is a buffer inside the model, so the exported
ONNX graph takes the raw inputs the server receives. ``features(x)`` returns the penultimate
representation ``(n, d)`` and ``fc`` is the final linear layer (its weight is the classifier
``W (K, d)`` for the neural-collapse diagnostics).

``mlp`` and ``cnn1d`` have no batch-dependent layers (no BatchNorm, no dropout), so a DDP run
with the same global batch matches a single-process run up to float rounding.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from serve.errors import AbstainError

Shape = tuple[int, ...]


class ModelError(AbstainError):
    """An unknown model name, or a model that does not fit the data's input shape."""


class Standardize(nn.Module):
    """``(x − mean) / std`` with stats as buffers; per feature for vectors, per channel for images."""

    def __init__(self, in_shape: Shape) -> None:
        super().__init__()
        stat_shape = (in_shape[0], *[1] * (len(in_shape) - 1)) if len(in_shape) == 3 else in_shape
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    @torch.no_grad()
    def fit(self, x: np.ndarray) -> None:
        """Set the stats from training inputs ``x (n, *in_shape)``."""
        a = np.asarray(x, np.float64)
        axes = (0, 2, 3) if a.ndim == 4 else (0,)
        mean, std = a.mean(axis=axes), a.std(axis=axes)
        std = np.where(std < 1e-6, 1.0, std)  # constant pixels/features: leave unscaled
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(self.mean.shape))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``logits = fc(body(standardise(x)))``; ``features(x) = body(standardise(x))``."""

    def __init__(self, in_shape: Shape, body: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.norm = Standardize(self.in_shape)
        self.body = body
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))  # (n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))  # (n, K)

    @property
    def classifier(self) -> nn.Linear:
        return self.fc


def _mlp(in_shape: Shape) -> tuple[nn.Module, int]:
    d = int(np.prod(in_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()), 256


def _cnn1d(in_shape: Shape) -> tuple[nn.Module, int]:
    if len(in_shape) not in (1, 2):
        raise ModelError(f"cnn1d needs 1-D inputs (L,) or (C, L); the data has shape {in_shape}. "
                         "Use --model cnn or resnet18 for images, mlp for anything")
    c, length = (1, in_shape[0]) if len(in_shape) == 1 else in_shape
    out_len = (((length + 1) // 2) + 1) // 2
    body = nn.Sequential(
        nn.Unflatten(1, (c, length)) if len(in_shape) == 1 else nn.Identity(),  # (n, C, L)
        nn.Conv1d(c, 32, 5, padding=2), nn.ReLU(),
        nn.Conv1d(32, 64, 5, stride=2, padding=2), nn.ReLU(),   # (n, 64, ⌈L/2⌉)
        nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.ReLU(),   # (n, 64, ⌈L/4⌉)
        nn.Flatten(), nn.Linear(64 * out_len, 128), nn.ReLU(),  # (n, 128)
    )
    return body, 128


def _need_image(name: str, in_shape: Shape) -> int:
    if len(in_shape) != 3:
        raise ModelError(f"{name} needs image inputs (C, H, W); the data has shape {in_shape}. "
                         "Use --model cnn1d or mlp for vectors")
    return in_shape[0]


def _cnn(in_shape: Shape) -> tuple[nn.Module, int]:
    c = _need_image("cnn", in_shape)

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    body = nn.Sequential(*block(c, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (n, 128)
    return body, 128


class _BasicBlock(nn.Module):
    def __init__(self, i: int, o: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.short = (nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                      if stride != 1 or i != o else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def _resnet18(in_shape: Shape) -> tuple[nn.Module, int]:
    """ResNet-18 for 32×32 inputs (CIFAR stem: 3×3 conv, no max-pool)."""
    c = _need_image("resnet18", in_shape)
    layers: list[nn.Module] = [nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    width = 64
    for o, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_BasicBlock(width, o, stride), _BasicBlock(o, o, 1)]
        width = o
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # (n, 512)
    return nn.Sequential(*layers), 512


def _timm(name: str, in_shape: Shape) -> tuple[nn.Module, int]:
    import timm

    c = _need_image(f"timm:{name}", in_shape)
    try:
        body = timm.create_model(name, pretrained=False, num_classes=0, in_chans=c)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ModelError(f"timm has no model {name!r} ({err}); see timm.list_models()") from err
    return body, int(body.num_features)


MODELS: dict[str, Callable[[Shape], tuple[nn.Module, int]]] = {
    "mlp": _mlp, "cnn1d": _cnn1d, "cnn": _cnn, "resnet18": _resnet18,
}


def model_names() -> list[str]:
    names = list(MODELS)
    if importlib.util.find_spec("timm") is not None:
        names.append("timm:<name>")
    return names


def create_model(name: str, in_shape: Sequence[int], num_classes: int) -> Classifier:
    """Build a classifier by registry name for inputs ``(n, *in_shape)`` and ``num_classes``."""
    shape = tuple(int(d) for d in in_shape)
    if name.startswith("timm:"):
        if importlib.util.find_spec("timm") is None:
            raise ModelError(f"{name} needs timm, which is not installed (pip install timm)")
        body, dim = _timm(name[5:], shape)
    elif name in MODELS:
        body, dim = MODELS[name](shape)
    else:
        raise ModelError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
    return Classifier(shape, body, dim, num_classes)
