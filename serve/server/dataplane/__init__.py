"""The data plane: every inference request takes the same stages, one module each, whichever
its transport.

========  ==========================  ===============================================================
stage     module                      what it does
========  ==========================  ===============================================================
route     ``dataplane/head.py``       path → (protocol, model, version); the headers read once
admit     ``dataplane/admit.py``      API key, body limits, in-flight caps, queue room, deadline —
                                      all from the headers, before a byte of the body is read
decode    ``dataplane/decode.py``     body (read by ``dataplane/body.py``) → a validated tensor
                                      (v1 JSON / images, v2 JSON / binary, gRPC messages:
                                      ``serve/server/protocol/``)
batch     ``dataplane/batch.py``      the adaptive batcher: queue, coalesce, deadlines, back-pressure
run       ``serve/server/runtime.py`` one onnxruntime session run → logits
decide    ``serve/decision.py``       logits → label, score, reject (the certified threshold)
record    ``dataplane/record.py``     per batch: metrics, drift, the decision store
encode    ``dataplane/encode.py``     outputs → v1 / v2 response bytes (gRPC: ``protocol/grpc_v2.py``)
========  ==========================  ===============================================================

``dataplane/infer.py`` (:meth:`DataPlane.infer`) runs the stages for one request and counts it.
Two transports only convert to and from it: ``serve/server/rest.py`` (HTTP v1 / v2, the one
route of every inference endpoint) and ``serve/server/grpc_service.py`` (KServe v2 gRPC). An
error is answered the same way by both (``serve/server/error_answers.py``), and so is a client
that retries at once after a 503 (``serve/server/shed_hold.py``). ``serve/server/control.py``
serves everything else (health, metadata, admin, metrics, docs).

May import: the rest of ``serve.server`` below the transports (``protocol``, ``repository``,
``runtime``, ``settings``, ``error_answers``), ``serve.monitoring`` and the maths; never a
transport (``rest``, ``grpc_service``, ``http_protocol``) or ``control``.
"""

__all__ = ["admit", "batch", "batch_queue", "body", "decode", "encode", "head", "infer",
           "queue_limit", "record", "stats"]
