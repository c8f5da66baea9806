# Two entry points for a fresh machine (Python ≥ 3.10, make): `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# Label Studio for the review e2e tests: its own environment, so its pins never enter abstain's.
LS_VENV ?= .venv-labelstudio
LABEL_STUDIO ?= label-studio==1.23.2
# torch for the test suite, CPU build. torch==2.13.0 resolves to the CPU build only where the
# package index serves one (macOS, Linux aarch64, or a local wheel house with 2.13.0+cpu); on
# plain PyPI for Linux x86_64 it is the multi-GB CUDA build. There, pass PyTorch's CPU index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: serve test lint sysdeps npmdeps bench gpu-check clean proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs onnxruntime, not torch; `data` lets calibrate/evaluate read mnist1d and digits.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,data]'
	touch $@

# Everything the suite needs: the cpu runtime, training (torch CPU build), test tools.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)') '$(TORCH)'
	$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU build)')"
	$(BIN)/pip install --quiet -e '.[cpu,data,train,dev,loop,review]'
	touch $@ $(VENV)/.serve

# System tools the integration tests drive for real: Prometheus + promtool, wrk, PostgreSQL (the
# loop tests start a throw-away cluster with initdb + pg_ctl; the package's own cluster stays off).
# The tests start their own Prometheus, so the package's service must not start: where no
# policy-rc.d exists, a temporary one (exit 101) stops the postinst from starting it (in a
# container without an init that start fails and would fail the install).
sysdeps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v wrk >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); POLICY=/usr/sbin/policy-rc.d; ADDED=; \
	  if [ ! -e $$POLICY ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$POLICY >/dev/null && $$SUDO chmod 755 $$POLICY && ADDED=1; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus wrk postgresql >/dev/null; \
	  RC=$$?; if [ -n "$$ADDED" ]; then $$SUDO rm -f $$POLICY; fi; exit $$RC; }

$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --quiet '$(LABEL_STUDIO)'

# A second ONNX runtime for the decision-graph test: onnxruntime-node, pinned by tests/node's lock
# file. Its postinstall would fetch CUDA binaries from nuget.org; the CPU binaries ship in the
# package, so ONNXRUNTIME_NODE_INSTALL=skip keeps the install to the npm registry.
npmdeps: tests/node/node_modules/.installed
tests/node/node_modules/.installed: tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	cd tests/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Ctrl-C or SIGTERM is how this server stops, so that ends in exit 0, not make's
# "*** [serve] Terminated": Ctrl-C reaches the server directly (the shell ignores it); a SIGTERM
# sent to make alone is passed on; the server drains, then the recipe waits for it to exit.
serve: $(VENV)/.serve
	@$(BIN)/abstain serve models --host 127.0.0.1 --port $(PORT) & pid=$$!; \
	  trap 'kill -TERM $$pid 2>/dev/null' TERM; trap '' INT; \
	  wait $$pid; rc=$$?; while kill -0 $$pid 2>/dev/null; do wait $$pid; rc=$$?; done; \
	  if [ $$rc -ge 128 ]; then exit 0; else exit $$rc; fi

test: $(VENV)/.test sysdeps npmdeps $(LS_VENV)/bin/label-studio
	$(BIN)/ruff check serve training tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider tests

# The benchmark (a development script): make bench ARGS='--overload --grpc'
bench: $(VENV)/.test sysdeps
	$(BIN)/python -m bench $(ARGS)

# On a machine with CUDA: the CUDA tests, the provider check and the GPU benchmark, ≤ 8 minutes.
# onnxruntime-gpu replaces onnxruntime, so it gets a venv of its own.
gpu-check: sysdeps
	test -x .venv-gpu/bin/python || $(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/pip install --quiet '$(TORCH)' -e '.[gpu,data,train,dev]'
	# The CUDA/cuDNN libraries built for this onnxruntime-gpu (pip wheels; gpu_check.py puts their
	# lib dirs on LD_LIBRARY_PATH), whatever CUDA torch's wheel brought.
	.venv-gpu/bin/pip install --quiet 'onnxruntime-gpu[cuda,cudnn]'
	.venv-gpu/bin/python bench/gpu_check.py

# ruff, then the house plan: the import contracts in pyproject.toml ([tool.importlinter]).
lint: $(VENV)/.test
	$(BIN)/ruff check serve training tests bench
	$(BIN)/lint-imports

# The gRPC messages (KServe v2): the .proto compiled to a descriptor set, committed;
# tests/unit/test_grpc_proto.py checks that this command reproduces it byte for byte.
proto: $(VENV)/.test
	$(BIN)/python -m grpc_tools.protoc -I serve/server/protocol/proto \
	  --descriptor_set_out=serve/server/protocol/proto/grpc_predict_v2.desc grpc_predict_v2.proto

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .hypothesis .import_linter_cache .grimp_cache
