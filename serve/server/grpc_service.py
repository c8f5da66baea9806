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
from serve.server.dataplane.admit import check_key
from serve.server.dataplane.decode import Decoder
from serve.server.dataplane.head import Head, Route, new_request_id
from serve.server.dataplane.infer import DataPlane
from serve.server.error_answers import grpc_status, grpc_trailer
from serve.server.protocol import Decoded, RequestError, clean_id
from serve.server.protocol import grpc_v2 as P
from serve.server.repository import ModelVersion
from serve.server.shed_hold import PeerHolds

log = logging.getLogger(__name__)
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
# Messages up to this much over --max-body-bytes reach admission and get its 413 message;
# larger ones are refused by grpc itself (RESOURCE_EXHAUSTED, grpc's wording).
SIZE_SLACK = 64 * 1024


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class GrpcCall:
    """One ``ModelInfer`` call (a :class:`serve.server.dataplane.infer.Call`)."""

    __slots__ = ("route", "head", "rid", "message", "context")
    method = "gRPC"
    only_when_ready = True                  # UNAVAILABLE while starting: clients wait on it

    def __init__(self, message: Any, context: Any) -> None:
        md = _metadata(context)
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


class Servicer:
    """The six RPCs over the data plane (and its repository, admission and monitor)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.repo, self.admission, self.monitor = plane.repo, plane.admission, plane.monitor
        self.holds = PeerHolds(self.plane.shed_hold_s)

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
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        holds, arrived = self.holds, time.monotonic()
        if holds:                                   # any peer held (or remembered)?
            await self._wait_hold(context.peer(), arrived, context)
        call = GrpcCall(request, context)
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

    async def _wait_hold(self, peer: str, now: float, context: Any) -> None:
        """Wait out ``peer``'s hold, or as much of it as the call's deadline leaves (the data
        plane then answers DEADLINE_EXCEEDED)."""
        wait = self.holds.wait_s(peer, now)
        if wait > 0:
            remaining = context.time_remaining()
            await asyncio.sleep(wait if remaining is None else max(min(wait, remaining), 0.0))


def _guard(name: str, fn: Callable[[Any, Any], Awaitable[Any]], monitor: Any) -> Callable:
    """Health/metadata RPCs: their errors become statuses, and each call is counted."""
    endpoint = f"grpc:{name}"

    async def call(request: Any, context: Any) -> Any:
        t0, status = time.perf_counter(), 200
        try:
            return await fn(request, context)
        except AbstainError as err:
            status = err.status
            code, msg = grpc_status(err), str(err)
        finally:
            monitor.request_finished(endpoint, "gRPC", status, time.perf_counter() - t0)
        await context.abort(code, msg)

    return call


def handlers(servicer: Servicer) -> grpc.GenericRpcHandler:
    table = {}
    for name, (req, resp) in P.METHODS.items():
        fn = getattr(servicer, name)
        if name != "ModelInfer":
            fn = _guard(name, fn, servicer.monitor)
        table[name] = grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=P.MESSAGES[req].FromString,
            response_serializer=P.MESSAGES[resp].SerializeToString)
    return grpc.method_handlers_generic_handler(P.SERVICE, table)


async def start_grpc(plane: DataPlane, host: str, port: int,
                     max_body_bytes: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running loop; returns it and the bound port.

    Raises:
        RuntimeError: the port cannot be bound (in use, or a bad host).
    """
    limit = max_body_bytes + SIZE_SLACK
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((handlers(Servicer(plane)),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC port {host}:{port}: pass another --grpc-port "
                           "or stop the other server")
    await server.start()
    log.info("gRPC v2 (inference.GRPCInferenceService) on %s:%d", host, bound)
    return server, bound
