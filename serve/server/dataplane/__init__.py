"""The data plane: every inference request takes the same seven stages, one module each.

========  ==========================  ===============================================================
stage     module                      what it does
========  ==========================  ===============================================================
route     ``dataplane/head.py``       path → (protocol, model, version); the headers read once
admit     ``dataplane/admit.py``      API key, body limits, in-flight caps, queue room, deadline —
                                      all from the headers, before a byte of the body is read
decode    ``dataplane/decode.py``     body (read by ``dataplane/body.py``) → a validated tensor
                                      (v1 JSON / images, v2 JSON / binary: ``serve/server/protocol/``)
batch     ``dataplane/batch.py``      the adaptive batcher: queue, coalesce, deadlines, back-pressure
run       ``serve/server/runtime.py``        one onnxruntime session run → logits
decide    ``serve/decision.py``       logits → label, score, reject (the certified threshold)
record    ``dataplane/record.py``     per batch: metrics, drift, the decision store
encode    ``dataplane/encode.py``     outputs → v1 / v2 response bytes; errors → JSON with the id
========  ==========================  ===============================================================

``dataplane/app.py`` runs the stages for one request (the only route of every inference
endpoint); ``serve/server/control.py`` serves everything else (health, metadata, admin, metrics, docs).
"""
