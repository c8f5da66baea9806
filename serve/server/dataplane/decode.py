"""Decode: a request body → a validated input tensor and the options that shape the answer.

v1 takes JSON ``{"instances": ...}``, PNG/JPEG bodies, or multipart forms of images; v2 takes
JSON or the binary tensor extension (``serve/server/protocol/``). A body that parses as JSON is accepted
whatever ``Content-Type`` says (``curl -d`` labels JSON as a form); one that does not is a 415
unless it was declared JSON (then the JSON error, 400). Images are decoded off the
event loop, after their header dimensions were counted against the per-request and per-second
pixel budgets, so an image bomb can neither stall the server nor run unbounded; so are tensor
bodies of ``OFF_LOOP_BYTES`` or more. gRPC messages arrive parsed: ``protocol/grpc_v2.py``
decodes them to the same :class:`Decoded`.
"""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from serve.server.dataplane.head import Head, Route
from serve.server.model_version import ModelVersion
from serve.server.protocol import Decoded, RequestError, check_batch, parse_uint, v1, v2
from serve.server.protocol.images import FORMATS, decode_image, image_spec

IMAGE_TYPES = ("image/png", "image/jpeg")
# Bodies this large are decoded in the decode thread, so that a turn of the event loop that
# decodes many of them does not delay every other answer (a refusal included). The thread buys
# no parallelism (orjson holds the GIL) and each hop costs GIL hand-offs and wake-ups that the
# inference thread pays for, so only large bodies take it: JSON of 64 KiB parses in ~0.2 ms here.
# (Measured, 64-sample requests of 27 KB at 16× overload: with the limit at 16 KiB goodput was
# 861/s and served p99 53.6 ms; at 64 KiB 900/s and 48.5 ms, refusals answered in 3.2 ms p99.)
OFF_LOOP_BYTES = 64 * 1024


class PixelBudget:
    """Token bucket of decoded pixels per second, shared by all requests of the process."""

    def __init__(self, per_request: int, per_second: int) -> None:
        self.per_request, self.per_second = per_request, per_second
        self._tokens, self._t = float(per_second), time.monotonic()

    def take(self, pixels: int) -> None:
        if pixels > self.per_request:
            raise RequestError(f"the images hold {pixels} pixels in all; the limit per request is "
                               f"{self.per_request} (--max-image-pixels): send fewer or smaller "
                               "images", 413, "too_many_pixels")
        now = time.monotonic()
        self._tokens = min(float(self.per_second), self._tokens + (now - self._t) * self.per_second)
        self._t = now
        if pixels > self._tokens:
            err = RequestError(f"image decoding is at its limit of {self.per_second} pixels/s "
                               "(--max-image-pixels-per-s); retry shortly", 503, "pixel_budget")
            err.headers = {"Retry-After": "1"}
            raise err
        self._tokens -= pixels


def _pixels(files: list[tuple[str, bytes]]) -> int:
    """Total pixels the images declare in their headers (nothing is decoded)."""
    total = 0
    for name, data in files:
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as img:
                total += img.width * img.height
        except Exception:
            raise RequestError(f"{name}: not a readable PNG or JPEG image; upload a PNG or JPEG "
                               "file", 422, "bad_image") from None
    return total


def _decode_all(files: list[tuple[str, bytes]], spec: dict) -> np.ndarray:
    return np.stack([decode_image(data, spec, name) for name, data in files])


class Decoder:
    """Decodes request bodies for one server process (owns the image-decoding thread)."""

    def __init__(self, max_instances: int, max_image_pixels: int, max_pixels_per_s: int) -> None:
        self.max_instances = max_instances
        self.pixels = PixelBudget(max_image_pixels, max_pixels_per_s)
        self._images = ThreadPoolExecutor(1, thread_name_prefix="decode")

    def tensor(self, route: Route, head: Head, body: bytes, mv: ModelVersion) -> Decoded | None:
        """JSON / binary bodies (synchronous, on the loop); None when the body holds images."""
        ctype = head.content_type
        if route.protocol == "v2":
            if ctype == "multipart/form-data" or ctype in IMAGE_TYPES:
                raise RequestError(f"unsupported media type {ctype!r}: v2 infer takes JSON or the "
                                   "binary tensor extension", 415, "unsupported_media")
            m = mv.model
            req = v2.parse_infer(body, head.inference_header, m.input_name, m.input_shape,
                                 m.input_dtype, self.max_instances)
            return Decoded(req.x, req.id, 0, req.outputs)
        if ctype == "multipart/form-data" or ctype in IMAGE_TYPES:
            return None
        try:
            x, top_k, rid = v1.parse_request(body, mv.model.input_shape, mv.model.input_dtype,
                                             len(mv.class_names), self.max_instances)
        except RequestError as err:
            if _declared_json(ctype) or err.reason not in ("malformed_json", "empty_body", "nan"):
                raise
            raise RequestError(f"unsupported media type {ctype!r} and the body is not JSON: send "
                               'JSON ({"instances": [...]}), multipart/form-data with image files, '
                               "or a PNG/JPEG body", 415, "unsupported_media") from None
        return Decoded(x, rid, top_k)

    async def off_loop(self, route: Route, head: Head, body: bytes, mv: ModelVersion) -> Decoded:
        """Decode in the decode thread: images, or a tensor body too large to parse on the loop."""
        loop = asyncio.get_running_loop()
        req = await loop.run_in_executor(self._images, self.tensor, route, head, body, mv)
        return req if req is not None else await self.images(head, body, mv)

    async def images(self, head: Head, body: bytes, mv: ModelVersion) -> Decoded:
        """A PNG/JPEG body or a multipart form of images → the batch, decoded in a thread."""
        spec = image_spec(mv.preprocessing, mv.name)
        raw_k: object = None
        if head.content_type == "multipart/form-data":
            files, raw_k = await _form_files(head, body, self.max_instances)
        else:
            files = [("body", body)]
        query = dict(parse_qsl(head.query.decode("latin-1"), keep_blank_values=True))
        if raw_k is None:
            raw_k = query.get("top_k")
        top_k = v1.parse_top_k(None if raw_k is None else parse_uint(raw_k, "top_k"),
                               len(mv.class_names))
        self.pixels.take(_pixels(files))
        loop = asyncio.get_running_loop()
        x = await loop.run_in_executor(self._images, _decode_all, files, spec)
        what = "images" if len(files) > 1 else "image"
        return Decoded(check_batch(x, mv.model.input_shape, self.max_instances, what), None, top_k)

    def close(self) -> None:
        self._images.shutdown(wait=False)


def _declared_json(ctype: str) -> bool:
    return ctype in ("", "application/json") or ctype.endswith("+json")


async def _form_files(head: Head, body: bytes, max_files: int) -> tuple[list[tuple[str, bytes]], object]:
    """A multipart body (already read and size-checked) → its files and the top_k field."""
    from starlette.datastructures import Headers, UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    sent = False

    async def stream():
        nonlocal sent
        if not sent:
            sent = True
            yield body

    headers = Headers(raw=[(b"content-type", head.raw_content_type)])
    try:
        form = await MultiPartParser(headers, stream(), max_files=max_files, max_fields=16).parse()
    except MultiPartException as err:
        raise RequestError(f"malformed multipart form: {err}; upload images as -F file=@image.png",
                           422 if "Too many" not in str(err) else 413, "bad_form") from None
    files: list[tuple[str, bytes]] = []
    for _, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append((value.filename or "image", await value.read()))
    raw_k = form.get("top_k")
    await form.close()
    if not files:
        raise RequestError("the form has no file: upload images as -F file=@image.png",
                           422, "bad_image")
    if len(files) > max_files:
        raise RequestError(f"too many images: {len(files)}, the limit is {max_files}", 413,
                           "too_many_instances")
    return files, raw_k
