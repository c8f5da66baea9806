"""The v2 gRPC endpoint (``--grpc-port``): KServe's ``inference.GRPCInferenceService``.

An ``grpc.aio`` server on uvicorn's own event loop, started and stopped in the app's lifespan
(``serve/server/app.py``). ``ModelInfer`` takes the data plane's stages, the same objects HTTP uses:

========  ===================================================================================
auth      metadata ``authorization: Bearer <key>`` (``admit.check_key``), before any lookup
admit     ``Admission.admit``: message size, in-flight caps, queue room (the same counters as
          HTTP, so both protocols share the limits); the deadline is the gRPC deadline
decode    ``serve/server/protocol/grpc_v2.py``: the message → the ``Decoded`` HTTP v2 produces
batch     ``mv.batcher.result(...)``: the same batcher, hence the same coalesced runs
decide    in the batch run (``ModelVersion.infer``), as for HTTP
record    the batcher's hook (metrics, drift, sinks) + the request counters, endpoint label
          ``grpc:<Method>``
encode    ``grpc_v2.encode_infer``; errors → a gRPC status with the HTTP error's message
========  ===================================================================================

Status codes, messages and trailing metadata: ``serve/server/error_answers.py``, as for HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serve import __version__
from serve.errors import AbstainError
from serve.server.control import metadata
from serve.server.dataplane.admit import NotReady, check_key
from serve.server.dataplane.head import MAX_ID_CHARS, Head, new_request_id
from serve.server.error_answers import grpc_status, grpc_trailer, record
from serve.server.protocol import RequestError
from serve.server.protocol import grpc_v2 as P

log = logging.getLogger("serve.grpc")
EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
# Messages up to this much over --max-body-bytes reach admission and get its 413 message;
# larger ones are refused by grpc itself (RESOURCE_EXHAUSTED, grpc's wording).
SIZE_SLACK = 64 * 1024


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class Servicer:
    """The six RPCs over one :class:`serve.server.app.App` (its repository, admission, monitor)."""

    def __init__(self, app: Any) -> None:
        self.repo, self.admission, self.monitor = app.repo, app.admission, app.monitor
        self.max_instances = app.settings.max_instances

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
        md = _metadata(context)
        rid = (request.id or md.get("x-request-id", ""))[:MAX_ID_CHARS] or new_request_id()
        model = version = ""
        self.monitor.request_started()
        t0, status = time.perf_counter(), 500
        try:
            check_key(md.get("authorization", ""), self.admission.api_key)  # before any lookup
            if not self.repo.ready:
                raise NotReady("the server is starting or stopping: retry, or wait for "
                               "ServerReady")
            mv = self.repo.get(request.model_name, request.model_version or None)
            model, version = mv.name, str(mv.version)
            resp = await self._infer(request, md, context, rid)
            status = 200
            return resp
        except AbstainError as err:
            status = err.status
            record(self.monitor, err, model, version)
            context.set_trailing_metadata(grpc_trailer(err, rid))
            code, msg = grpc_status(err), str(err)
        except asyncio.CancelledError:
            status = 499                  # the client cancelled or its deadline passed
            raise
        except Exception as err:
            log.exception("internal error (a bug in abstain) on gRPC request %s: %s", rid, err)
            self.monitor.error("internal", model, version)
            code, msg = grpc.StatusCode.INTERNAL, ("internal server error (a bug; it has been "
                                                   f"logged with request id {rid})")
        finally:
            self.monitor.request_finished("grpc:ModelInfer", "gRPC", status,
                                          time.perf_counter() - t0, model, version, inference=True)
        await context.abort(code, msg)

    async def _infer(self, request: Any, md: dict[str, str], context: Any, rid: str) -> Any:
        name, ver = request.model_name, request.model_version or None
        mv = self.repo.get(name, ver)
        batcher = mv.batcher
        assert batcher is not None
        size = request.ByteSize()
        head = Head(content_type="grpc", content_length=size)
        ticket = self.admission.admit(head, batcher, "grpc")             # admit
        try:
            remaining = context.time_remaining()
            timeout = self.admission.request_timeout_s if remaining is None else min(remaining, 3600)
            if timeout <= 0:
                raise RequestError("the gRPC deadline had passed before the request was read; "
                                   "give the call a longer timeout", 504, "deadline")
            deadline = time.monotonic() + timeout
            mv = self.repo.get(name, ver)                                # no await from here …
            m = mv.model
            req, _ = P.parse_infer(request, m.input_name, m.input_shape, m.input_dtype,
                                   self.max_instances)                   # decode
            batcher = mv.batcher
            assert batcher is not None
            self.admission.learn(batcher, "grpc", size, len(req.x))
            alone = self.admission.inflight == 1
            ticket.hand_over()
            out = await batcher.result(req.x, deadline, alone, rid)      # … to submit: batch,
            if any(name == "probabilities" for name, _ in req.outputs):  # run, decide, record
                out = {**out, "probabilities": mv.rule.probabilities(out["logits"])}
            return P.encode_infer(out, mv.class_names, mv.name, str(mv.version), req.id or rid,
                                  req.outputs)                           # encode
        finally:
            self.admission.release(ticket)


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


async def start_grpc(app: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server on the running loop; returns it and the bound port.

    Raises:
        RuntimeError: the port cannot be bound (in use, or a bad host).
    """
    limit = app.settings.max_body_bytes + SIZE_SLACK
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((handlers(Servicer(app)),))
    bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC port {host}:{port}: pass another --grpc-port "
                           "or stop the other server")
    await server.start()
    log.info("gRPC v2 (inference.GRPCInferenceService) on %s:%d", host, bound)
    return server, bound
