"""Image uploads → model input, following the model's ``preprocessing`` metadata (contract 2).

``{"kind": "image", "mode": "L"|"RGB", "size": [H, W], "scale": s, "layout": "NCHW"}``: decode
(PNG or JPEG only), convert to ``mode``, resize to ``size``, multiply the 0..255 pixels by
``scale``; the graph does any further normalisation.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve.server.protocol import RequestError

FORMATS = ("PNG", "JPEG")
MAX_PIXELS = 40_000_000


def image_spec(preprocessing: dict[str, Any], model: str) -> dict[str, Any]:
    """The model's image preprocessing, or a 415 explaining that it takes vectors."""
    if preprocessing.get("kind") != "image":
        raise RequestError(
            f"model {model!r} takes feature vectors, not images (its preprocessing is "
            f"{preprocessing.get('kind', 'none')!r}); send JSON {{\"instances\": [[...], ...]}}",
            415, "unsupported_media")
    return preprocessing


def decode_image(data: bytes, spec: dict[str, Any], filename: str = "image") -> np.ndarray:
    """PNG/JPEG bytes → float32 ``(C, H, W)`` (NCHW without the batch) ready for the model."""
    if not data:
        raise RequestError(f"{filename}: the uploaded file is empty", 422, "bad_image")
    mode = spec.get("mode", "RGB")
    h, w = (int(v) for v in spec.get("size", (0, 0)))
    scale = float(spec.get("scale", 1.0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            if img.width * img.height > MAX_PIXELS:
                raise RequestError(f"{filename}: {img.width}×{img.height} pixels is too large "
                                   f"(limit {MAX_PIXELS}); downscale it first", 413, "bad_image")
            img.load()
    except RequestError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(f"{filename}: not a readable PNG or JPEG image ({err}); upload a PNG "
                           "or JPEG file", 422, "bad_image") from None
    img = img.convert(mode)
    if h and w and img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) * np.float32(scale)   # (H, W) or (H, W, C)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)   # (C, H, W)
    return np.ascontiguousarray(arr)
