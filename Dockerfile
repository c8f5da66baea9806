# abstain inference server on a CUDA runtime: onnxruntime-gpu, no torch.
#   docker build -t abstain .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -v "$PWD/models:/models:ro" abstain --device cuda
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ABSTAIN_MODEL_REPOSITORY=/models \
    ABSTAIN_HOST=0.0.0.0 \
    ABSTAIN_PORT=8000

# The base image fixes the distribution; its python3 is the one the CUDA libraries are tested with.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY serve ./serve
# Installs this checkout (its own pins live in pyproject.toml); the gpu extra brings onnxruntime-gpu.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" && rm -rf /src

RUN groupadd --system --gid 10001 abstain \
    && useradd --system --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin abstain
# The default model is baked in; mount another repository over /models to serve yours.
COPY --chown=abstain:abstain models /models

USER 10001:10001
WORKDIR /home/abstain
# 8000: HTTP (v1 + v2); 8001: the v2 gRPC protocol (inference.GRPCInferenceService).
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["abstain", "serve", "/models", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001"]
