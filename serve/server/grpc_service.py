"""The v2 gRPC endpoint (``--grpc-port``): KServe's ``inference.GRPCInferenceService``.

An ``grpc.aio`` server on uvicorn's own event loop, started and stopped in the app's lifespan
(``serve/server/app.py``). ``ModelInfer`` is the data plane's gRPC transport, as
``serve/server/rest.py`` is its HTTP one: a :class:`GrpcCall` — the message, its metadata
(``authorization``, ``x-request-id``) and its deadline — goes through
:meth:`serve.server.dataplane.infer.DataPlane.infer`, which runs the same stages on the same
objects as for HTTP (admission's counters and limits, the model's batcher, the record hook), and
counts it under the endpoint label ``grpc:ModelInfer``. The servicer only converts:
``protocol/grpc_v2.py`` decodes the message to the ``Decoded`` HTTP v2 produces and encodes the
outputs; an error becomes a gRPC status with the HTTP error's message
(``serve/server/error_answers.py``: codes, ``retry-after`` / ``x-request-id`` trailing metadata).

The shed hold (``serve/server/shed_hold.py``): a peer answered 503 (RESOURCE_EXHAUSTED, or
UNAVAILABLE while not ready) has its next calls wait out the hold before admission — as an
HTTP client's connection is not read — within each call's own deadline.

Limits before work: ``ModelInfer`` is registered as a request-*streaming* handler without a
deserializer, so grpc hands over nothing before the servicer asks. The servicer checks the API
key from the metadata first (an unauthenticated call is refused with its message unread: HTTP/2
flow control keeps it at the client), then reads the one message under a bound on the bytes
being read at once (``--max-body-buffer-bytes`` / the message limit calls; others wait for their
turn, within their deadline), each message at most ``--max-body-bytes`` (+ ``SIZE_SLACK``;
grpc's own ``grpc.max_receive_message_length``), and parses it itself: bytes that are not a
``ModelInferRequest`` are INVALID_ARGUMENT (logged once per ``LOG_EVERY_S``), never UNKNOWN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from serve import __version__
from serve.errors import AbstainError
from serve.server.control import metadata
from serve.server.dataplane.admit import check_key, key_ok
from serve.server.dataplane.decode import Decoder
from serve.server.dataplane.head import Head, Route, new_request_id
from serve.server.dataplane.infer import DataPlane
from serve.server.error_answers import grpc_status, grpc_trailer, record
from serve.server.model_version import ModelVersion
from serve.server.protocol import Decoded, RequestError, clean_id
from serve.server.protocol import grpc_v2 as P
from serve.server.shed_hold import PeerHolds

log = logging.getLogger(__name__)
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
# Messages up to this much over --max-body-bytes reach admission and get its 413 message;
# larger ones are refused by grpc itself (RESOURCE_EXHAUSTED, grpc's wording).
SIZE_SLACK = 64 * 1024
LOG_EVERY_S = 30.0


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GrpcCall:
    """One ``ModelInfer`` call (a :class:`serve.server.dataplane.infer.Call`)."""

    __slots__ = ("route", "head", "rid", "message", "context")
    method = "gRPC"
    only_when_ready = True                  # UNAVAILABLE while starting: clients wait on it

    def __init__(self, message: Any, context: Any, md: dict[str, str] | None = None) -> None:
        md = _metadata(context) if md is None else md
        self.route = Route("grpc", message.model_name, message.model_version or None)
        self.head = Head(content_length=message.ByteSize(),
                         authorization=md.get("authorization", ""),
                         request_id=clean_id(md.get("x-request-id")) or "")
        self.rid = new_request_id()
        self.message, self.context = message, context

    def deadline(self, default_s: float) -> float:
        remaining = self.context.time_remaining()
        timeout = default_s if remaining is None else min(remaining, 3600)
        if timeout <= 0:
            raise RequestError("the gRPC deadline had passed before the request was read; "
                               "give the call a longer timeout", 504, "deadline")
        return time.monotonic() + timeout

    async def read(self, limit: int) -> Any:
        return self.message                 # grpc read it (and refused it over its own cap)

    def decode(self, decoder: Decoder, body: Any, mv: ModelVersion) -> Decoded:
        m = mv.model
        return P.parse_infer(body, m.input_name, m.input_shape, m.input_dtype,
                             decoder.max_instances)[0]

    def encode(self, mv: ModelVersion, req: Decoded, out: dict[str, np.ndarray]) -> Any:
        return P.encode_infer(out, mv.class_names, mv.name, str(mv.version),
                              req.id or self.head.request_id or self.rid, req.outputs)

    def error(self, err: AbstainError) -> AbstainError:
        return err                          # ModelInfer aborts the call with it


class Malformed(RequestError):
    def __init__(self, what: str, err: Exception | None = None) -> None:
        why = f" ({str(err).splitlines()[0][:200]})" if err is not None and str(err) else ""
        super().__init__(f"the request is not a valid {what} protobuf message{why}; send one "
                         f"serialized inference.{what}", 400, "malformed_protobuf")


class Servicer:
    """The six RPCs over the data plane (and its repository, admission and monitor).

    Args:
        plane: the data plane.
        max_message_bytes: the largest message grpc accepts (``grpc.max_receive_message_length``).
        max_reading_bytes: the bound on message bytes being read at once (ModelInfer).
    """

    def __init__(self, plane: DataPlane, max_message_bytes: int = 16 * 1024 * 1024 + SIZE_SLACK,
                 max_reading_bytes: int = 256 * 1024 * 1024) -> None:
        self.plane = plane
        self.repo, self.admission, self.monitor = plane.repo, plane.admission, plane.monitor
        self.holds = PeerHolds(self.plane.shed_hold_s)
        self.readers = max(1, max_reading_bytes // max_message_bytes)
        self._reading: asyncio.Semaphore | None = None      # made on the server's loop
        self._next_log = 0.0

    def malformed(self, err: Malformed, method: str) -> None:
        """Count a malformed message and log it at most once per ``LOG_EVERY_S``."""
        record(self.monitor, err)
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + LOG_EVERY_S
            log.warning("gRPC %s: %s (logged once per %.0f s; counted in abstain_errors_total"
                        "{reason=\"malformed_protobuf\"})", method, err, LOG_EVERY_S)

    # ------------------------------------------------------------------ health and metadata
    def _ready(self) -> bool:
        return self.repo.ready and bool(self.repo.versions())

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return P.MESSAGES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return P.MESSAGES["ServerReadyResponse"](ready=self._ready())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return P.MESSAGES["ServerMetadataResponse"](name="abstain", version=__version__,
                                                    extensions=EXTENSIONS)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        check_key(_metadata(context).get("authorization", ""), self.admission.api_key)
        self.repo.get(request.name, request.version or None)
        return P.MESSAGES["ModelReadyResponse"](ready=self.repo.ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        check_key(_metadata(context).get("authorization", ""), self.admission.api_key)
        return P.model_metadata(metadata(self.repo, self.repo.get(request.name,
                                                                  request.version or None)))

    # ------------------------------------------------------------------ inference
    async def ModelInfer(self, requests: Any, context: Any) -> Any:
        """``requests``: the call's message stream, unread (see the module doc)."""
        holds, arrived = self.holds, time.monotonic()
        if holds:                                   # any peer held (or remembered)?
            await self._wait_hold(context.peer(), arrived, context)
        md = _metadata(context)
        if key_ok(md.get("authorization", ""), self.admission.api_key):
            request = await self._read(requests, context)
        else:                                       # refused by the data plane, message unread
            request = P.ModelInferRequest()
        call = GrpcCall(request, context, md)
        answer = await self.plane.infer(call)
        failed = isinstance(answer, AbstainError)
        if failed and answer.status == 503:
            holds.shed(context.peer(), arrived, time.monotonic())
        elif holds:
            holds.served(context.peer(), time.monotonic())
        if not failed:
            context.set_trailing_metadata((("x-request-id", call.rid),))
            return answer
        context.set_trailing_metadata(grpc_trailer(answer, call.rid))
        await context.abort(grpc_status(answer), str(answer))

    async def _read(self, requests: Any, context: Any) -> Any:
        """The call's one ``ModelInferRequest``, read while fewer than ``readers`` calls read,
        within the call's deadline and ``--request-timeout-s`` (a slow sender holds no reader
        for longer: DEADLINE_EXCEEDED, as HTTP answers a slow body 408)."""
        t0 = time.perf_counter()
        remaining = context.time_remaining()
        wait_s = self.admission.request_timeout_s
        if remaining is not None:
            wait_s = max(min(wait_s, remaining), 0.0)
        try:
            try:
                raw = await asyncio.wait_for(self._read_one(requests), wait_s)
            except TimeoutError:
                raise RequestError(f"the message did not arrive within {wait_s:.3g} s (the call's "
                                   "deadline or --request-timeout-s): send it at once after "
                                   "starting the call", 504, "deadline") from None
            if raw is None:
                raise Malformed("ModelInferRequest", ValueError("the call sent no message"))
            try:
                return P.ModelInferRequest.FromString(raw)
            except Exception as err:                # protobuf's DecodeError, or worse
                raise Malformed("ModelInferRequest", err) from None
        except RequestError as err:
            self.monitor.request_started()
            self.monitor.request_finished("grpc:ModelInfer", "gRPC", err.status,
                                          time.perf_counter() - t0, inference=True)
            if isinstance(err, Malformed):
                self.malformed(err, "ModelInfer")
            else:
                record(self.monitor, err)
            await context.abort(grpc_status(err), str(err))

    async def _read_one(self, requests: Any) -> bytes | None:
        if self._reading is None:
            self._reading = asyncio.Semaphore(self.readers)
        async with self._reading:
            return await anext(aiter(requests), None)

    async def _wait_hold(self, peer: str, now: float, context: Any) -> None:
        """Wait out ``peer``'s hold, or as much of it as the call's deadline leaves (the data
        plane then answers DEADLINE_EXCEEDED)."""
        wait = self.holds.wait_s(peer, now)
        if wait > 0:
            remaining = context.time_remaining()
            await asyncio.sleep(wait if remaining is None else max(min(wait, remaining), 0.0))


def _guard(name: str, fn: Callable[[Any, Any], Awaitable[Any]], servicer: Servicer,
           message: Any) -> Callable:
    """Health/metadata RPCs: the raw message parsed (INVALID_ARGUMENT if it is not one), their
    errors become statuses, and each call is counted."""
    endpoint, monitor = f"grpc:{name}", servicer.monitor

    async def call(raw: bytes, context: Any) -> Any:
        t0, status = time.perf_counter(), 200
        try:
            try:
                request = message.FromString(raw)
            except Exception as err:
                bad = Malformed(message.DESCRIPTOR.name, err)
                servicer.malformed(bad, name)
                raise bad from None
            return await fn(request, context)
        except AbstainError as err:
            status = err.status
            code, msg = grpc_status(err), str(err)
        finally:
            monitor.request_finished(endpoint, "gRPC", status, time.perf_counter() - t0)
        await context.abort(code, msg)

    return call


def handlers(servicer: Servicer) -> grpc.GenericRpcHandler:
    """Every method takes raw bytes (parsed by the servicer); ModelInfer's arrive as a stream so
    that nothing is read before the key is checked (module doc)."""
    table = {}
    for name, (req, resp) in P.METHODS.items():
        fn = getattr(servicer, name)
        ser = P.MESSAGES[resp].SerializeToString
        if name == "ModelInfer":
            table[name] = grpc.stream_unary_rpc_method_handler(fn, response_serializer=ser)
        else:
            table[name] = grpc.unary_unary_rpc_method_handler(
                _guard(name, fn, servicer, P.MESSAGES[req]), response_serializer=ser)
    return grpc.method_handlers_generic_handler(P.SERVICE, table)


async def start_grpc(plane: DataPlane, host: str, port: int, max_body_bytes: int,
                     max_body_buffer_bytes: int = 256 * 1024 * 1024
                     ) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running loop; returns it and the bound port.

    Raises:
        RuntimeError: the port cannot be bound (in use, or a bad host).
    """
    limit = max_body_bytes + SIZE_SLACK
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((handlers(Servicer(plane, limit, max_body_buffer_bytes)),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC port {host}:{port}: pass another --grpc-port "
                           "or stop the other server")
    await server.start()
    log.info("gRPC v2 (inference.GRPCInferenceService) on %s:%d", host, bound)
    return server, bound
