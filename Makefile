# Two entry points for a fresh machine (Python ≥ 3.10, make): `make serve` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# Label Studio for the review e2e tests: its own environment, so its pins never enter abstain's.
LS_VENV ?= .venv-labelstudio
LABEL_STUDIO ?= label-studio==1.23.2
# The local CPU build of torch; an unpinned torch would download a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: serve test lint sysdeps clean

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
	$(BIN)/pip install --quiet -e '.[cpu,train,dev,loop]'
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

serve: $(VENV)/.serve
	$(BIN)/abstain serve models --host 127.0.0.1 --port $(PORT)

test: $(VENV)/.test sysdeps $(LS_VENV)/bin/label-studio
	$(BIN)/ruff check serve training tests bench
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider tests

lint: $(VENV)/.test
	$(BIN)/ruff check serve training tests bench

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache .hypothesis
