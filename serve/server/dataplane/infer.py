"""The data plane: one inference request, whichever the transport, stage by stage.

:meth:`DataPlane.infer` runs a request's stages and counts it; a transport hands it a
:class:`Call` — the request as that transport has it, and how to answer it — and sends back what
``infer`` returns (``serve/server/rest.py``: HTTP v1/v2; ``serve/server/grpc_service.py``: gRPC).

Hot-reload rule: between the look-up that the request is decoded for (``repository.get``) and
``batcher.submit`` there is no ``await``, so a reload can never slip in between and a request
finishes on the version it started with. The one exception is a body decoded off the loop
(images, large bodies): the version is looked up again after it, and the body decoded again if
a reload changed what it decodes to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import numpy as np

from serve.errors import AbstainError
from serve.monitoring.monitor import Monitor
from serve.server.dataplane.admit import Admission, NotReady, check_key
from serve.server.dataplane.batch import Batcher
from serve.server.dataplane.body import ClientGone
from serve.server.dataplane.decode import Decoder
from serve.server.dataplane.head import Arrivals, Head, Route
from serve.server.error_answers import InternalError, record
from serve.server.model_version import ModelVersion
from serve.server.protocol import Decoded
from serve.server.repository import ModelRepository
from serve.server.settings import Batching

log = logging.getLogger(__name__)


class Call(Protocol):
    """One inference request as a transport has it, and how that transport answers it."""

    route: Route            # protocol, model, version (and the endpoint label of the metrics)
    head: Head              # what admission reads: API key, body size, deadline header; and
                            # request_id, the client's own id (cleaned) when it sent one
    rid: str                # the server's request id (new_request_id: the store's key)
    method: str             # the method label of the metrics ("POST", "gRPC")
    only_when_ready: bool   # refuse (NotReady) while the server starts or stops

    def deadline(self, default_s: float) -> float:
        """The absolute ``time.monotonic()`` deadline (``default_s`` when the client set none)."""

    def read(self, limit: int) -> Awaitable[Any]:
        """The body, read once admitted (:class:`ClientGone` when the client left)."""

    def decode(self, decoder: Decoder, body: Any, mv: ModelVersion) -> Decoded | None:
        """The body decoded for ``mv`` on the loop, or None to decode it off the loop."""

    def encode(self, mv: ModelVersion, req: Decoded, out: dict[str, np.ndarray]) -> Any:
        """The answer to a served request."""

    def error(self, err: AbstainError) -> Any:
        """The answer to a failed one (``serve/server/error_answers.py``)."""


class DataPlane:
    """Inference, shared by the transports.

    Args:
        repo: the live model versions.
        admission: the admission stage (in-flight accounting, limits, auth).
        decoder: the decode stage.
        monitor: request metrics.
        shed_hold_s: after a 503, how long the client is not served again
            (``serve/server/shed_hold.py``; each transport applies it).
        arrivals: requests read but not started (HTTP counts them); a request is run at once
            only when it is alone.
    """

    def __init__(self, repo: ModelRepository, admission: Admission, decoder: Decoder,
                 monitor: Monitor, shed_hold_s: float = 0.0,
                 arrivals: Arrivals | None = None) -> None:
        self.repo, self.admission, self.decoder, self.monitor = repo, admission, decoder, monitor
        self.shed_hold_s = shed_hold_s
        self.arrivals = arrivals if arrivals is not None else Arrivals()

    async def infer(self, call: Call) -> Any:
        """Serve ``call`` and count it (its latency ends with its answer encoded: the write is
        the transport's).

        Returns ``call.encode(...)``, or ``call.error(...)`` for a failed request (a bug
        included: logged, answered 500), or None when the client left before its body arrived
        (counted 499, as is a call cancelled meanwhile).
        """
        t0 = time.perf_counter()
        route, head = call.route, call.head
        model = version = ""
        status = 500
        self.monitor.request_started()
        try:
            check_key(head.authorization, self.admission.api_key)     # before any look-up
            if call.only_when_ready and not self.repo.ready:
                raise NotReady("the server is starting or stopping: retry, or wait for "
                               "ServerReady")
            mv = self.repo.get(route.model, route.version)
            model, version = mv.name, str(mv.version)
            batcher = mv.batcher
            assert batcher is not None
            kind = route.protocol + head.content_type
            ticket = self.admission.admit(head, batcher, kind)               # admit
            try:
                deadline = call.deadline(self.admission.request_timeout_s)   # deadline
                body = await call.read(self.admission.max_body_bytes)
                mv = self.repo.get(route.model, route.version)      # look-up: no await from here …
                req = call.decode(self.decoder, body, mv)            # decode: on the loop, or
                while req is None:                                   # (images, large bodies) off
                    decoded_for = mv                                 # it, so the loop keeps
                    req = await self.decoder.off_loop(route, head, body, mv)   # serving
                    mv = self.repo.get(route.model, route.version)
                    if not _same_inputs(mv, decoded_for):            # reloaded meanwhile
                        req = None
                batcher = mv.batcher
                assert batcher is not None
                size = head.content_length
                self.admission.learn(batcher, kind, len(body) if size is None else size,
                                     len(req.x))                     # learn
                alone = self.admission.inflight == 1 and self.arrivals.waiting == 0
                ticket.hand_over()                                   # its room, to its samples
                tag = (call.rid, req.id or head.request_id or None)  # server id, client's id
                out = await batcher.result(req.x, deadline, alone, tag)      # … to submit:
                if req.wants_probabilities:                          # batch, run, decide, record
                    out = {**out, "probabilities": mv.probabilities(out)}
                answer = call.encode(mv, req, out)                   # result → encode
            finally:
                self.admission.release(ticket)
            status = 200
        except ClientGone:
            status, answer = 499, None
        except asyncio.CancelledError:
            status = 499                        # the client cancelled, or its deadline passed
            raise
        except AbstainError as err:
            status, answer = err.status, self._failed(call, err, model, version)
        except Exception as err:
            log.exception("internal error (a bug in abstain) on %s request %s: %s",
                          route.endpoint, call.rid, err)
            status, answer = 500, self._failed(call, InternalError(call.rid), model, version)
        finally:
            self.monitor.request_finished(route.endpoint, call.method, status,
                                          time.perf_counter() - t0, model, version,
                                          inference=True)
        return answer

    def _failed(self, call: Call, err: AbstainError, model: str, version: str) -> Any:
        record(self.monitor, err, model, version)
        return call.error(err)


def _same_inputs(a: ModelVersion, b: ModelVersion) -> bool:
    return a is b or (a.preprocessing == b.preprocessing and a.model.input_shape ==
                      b.model.input_shape and a.model.input_dtype == b.model.input_dtype)


def batcher_factory(batching: Batching, record_hook: Any, monitor: Monitor):
    """The repository's factory: one batcher per loaded version, its record hook attached."""

    def make(mv: ModelVersion) -> Batcher:
        name, ver = mv.name, str(mv.version)
        return Batcher(mv.infer, batching.max_batch_size, batching.max_queue_size,
                       record_hook(mv), lambda depth: monitor.queue_depth(name, ver, depth),
                       name=f"{name}/{ver}", inline_s=batching.inline_run_s,
                       infer_alone=mv.infer_alone,
                       overload_target_s=batching.overload_queue_ms / 1000)

    return make
