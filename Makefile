# Two entry points for a fresh machine (Python ≥ 3.10, make): `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# The local CPU build of torch; an unpinned torch would download a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: serve test lint sysdeps clean bench gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Serving needs onnxruntime, not torch.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu]'
	touch $@

# Everything the suite needs: the cpu runtime, training (torch CPU build), test tools.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[cpu,train,dev]'
	touch $@ $(VENV)/.serve

# System tools the integration tests drive for real: Prometheus + promtool, wrk.
# The tests start their own Prometheus, so the package's service must not start: where no
# policy-rc.d exists, a temporary one (exit 101) stops the postinst from starting it (in a
# container without an init that start fails and would fail the install).
sysdeps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v wrk >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); POLICY=/usr/sbin/policy-rc.d; ADDED=; \
	  if [ ! -e $$POLICY ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee $$POLICY >/dev/null && $$SUDO chmod 755 $$POLICY && ADDED=1; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus wrk >/dev/null; \
	  RC=$$?; if [ -n "$$ADDED" ]; then $$SUDO rm -f $$POLICY; fi; exit $$RC; }

serve: $(VENV)/.serve
	$(BIN)/abstain serve models --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.test sysdeps
	$(BIN)/ruff check serve training tests bench
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider tests

# The benchmark (a development script, bench/): `make bench ARGS="--duration 15 --overload"`.
bench: $(VENV)/.test sysdeps
	$(BIN)/python -m bench $(ARGS)

# The prepared GPU check (bench/gpu_check.py, ≤ 8 min): its own venv, because the `gpu` extra's
# onnxruntime-gpu and the `cpu` extra's onnxruntime overwrite each other in one environment.
GPU_VENV ?= .venv-gpu
$(GPU_VENV)/.gpu: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/pip install --quiet '$(TORCH)'
	$(GPU_VENV)/bin/pip install --quiet -e '.[gpu,train,dev]'
	touch $@

gpu-check: $(GPU_VENV)/.gpu sysdeps
	$(GPU_VENV)/bin/python -m bench.gpu_check

lint: $(VENV)/.test
	$(BIN)/ruff check serve training tests bench

clean:
	rm -rf $(VENV) $(GPU_VENV) .pytest_cache .hypothesis
