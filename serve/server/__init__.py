"""The inference server: one ASGI app (data plane beside control plane), HTTP and gRPC.

``app`` builds the server from ``settings``; ``dataplane/`` is the request path both transports
share (``DataPlane.infer``), ``rest`` and ``grpc_service`` only convert to and from it;
``error_answers`` answers an error in either (and counts it), ``shed_hold`` holds back a client
that retries at once after a 503; ``control`` serves health, metadata, admin, ``/metrics`` and
docs; ``repository`` loads ``models/<name>/<version>`` (``runtime``: the onnxruntime session,
``threads``: its thread plan) and the cascades among them (``cascade``: a cascade version;
``cascade_batch``: stage 1 on every sample, later stages on a batch's deferrals only, through
their own batchers, decided per batch); ``http_protocol`` is uvicorn's HTTP protocol with limits
and timeouts; ``garbage`` keeps the cyclic GC off the request path.

May import: ``serve.feedback``, ``serve.packaging``, ``serve.monitoring``, ``serve.calibration``
and the maths at the bottom of ``serve``. Never ``serve.cli``, ``training``, ``bench`` or torch.
"""

__all__ = ["app", "cascade", "cascade_batch", "control", "dataplane", "docs_ui", "error_answers", "garbage", "grpc_service",
           "http_protocol", "metrics_port", "protocol", "repository", "repository_files", "rest",
           "runtime", "settings", "shed_hold", "threads"]
