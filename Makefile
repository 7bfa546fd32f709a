# Two entry points: `make demo` and `make test`. Both build .venv once and reuse it;
# stamps are keyed on setup.cfg so an edit to the pins re-runs the install.
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
# Horovod must compile against the TensorFlow already in the venv: no build isolation,
# TensorFlow + Gloo only (no MPI/PyTorch/MXNet on this stack).
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
               HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
HOROVOD_VERSION := 0.28.1
PYTEST_ARGS ?=

.PHONY: install install-bench demo test test-fast bench sample wheel clean-venv

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=23.2" "setuptools>=68" wheel

$(VENV)/.stamp-deps: setup.cfg pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev]'
	touch $@

# pip keeps the built Horovod wheel in its cache, so a second fresh venv skips the compile.
$(VENV)/.stamp-horovod: $(VENV)/.stamp-deps
	@if $(PY) -c "import horovod.tensorflow as h; assert h.gloo_built()" 2>/dev/null; then \
	  echo "horovod already built"; \
	else \
	  command -v cmake >/dev/null || $(PIP) install --quiet cmake; \
	  $(HOROVOD_ENV) $(PIP) install --no-build-isolation "horovod==$(HOROVOD_VERSION)"; \
	fi
	$(PY) -c "import horovod.tensorflow as h; assert h.gloo_built(), 'horovod built without Gloo'"
	touch $@

install: $(VENV)/.stamp-horovod

# The peers the comparison tests and benchmarks run against (Surprise, implicit, Cornac's
# PyTorch VAECF with the CPU torch of setup.cfg's pin). Surprise ships
# only a source distribution: pip builds it (Cython + numpy) in an isolated build env, and keeps
# the wheel in its cache, so a second fresh venv installs it in seconds. The stamp makes a
# rerun a no-op; numpy stays at the pinned 2.0.x (the runtime constraint below).
$(VENV)/.stamp-bench: $(VENV)/.stamp-deps
	$(PIP) install --quiet -e '.[bench]' "$$($(PY) -c 'import numpy; print("numpy==" + numpy.__version__)')"
	$(PY) -c "import surprise, implicit, torch, cornac.models.vaecf.vaecf"
	touch $@

install-bench: install $(VENV)/.stamp-bench

demo: install
	$(PY) -m pipelines.demo

# The whole suite, with the peers installed: the Surprise/implicit comparisons run, not skip.
test: install-bench
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no horovodrun, tuning searches or real ML-100K runs).
test-fast: install-bench
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install-bench
	$(PY) -m pipelines.benchmark all

sample: install
	$(PY) -m pipelines.make_sample

# A wheel and sdist in dist/ (the embedded sample and the sample configs are inside the wheel).
wheel: $(VENV)/.stamp-deps
	$(PY) -m build --outdir dist .

clean-venv:
	rm -rf $(VENV)

# ---- Container images (docker/README.md) --------------------------------------------------
# make docker-base   Debian bookworm base image from Debian packages (debootstrap), imported
# make docker        the cpu and gpu images (layers cached; a second run rebuilds nothing)
# make docker-test   the in-container smoke tests (tests/test_docker.py, TFMF_DOCKER_TESTS=1)
# ENGINE=docker works too; BASE_IMAGE=debian:bookworm-slim skips the bootstrap where a registry
# is reachable. HOST_CA: a CA bundle handed to pip as a build secret (never stored in a layer).
ENGINE       ?= podman
BASE_IMAGE   ?= localhost/tfmf-base:bookworm
IMAGE        ?= localhost/tfmf
HOROVOD_NCCL ?= 0
HOST_CA      ?= /etc/ssl/certs/ca-certificates.crt
DOCKER_PY    ?= $(if $(wildcard $(PY)),$(PY),python3)
DOCKER_LOG   ?= runs/docker
comma := ,
DOCKER_BUILD = ENGINE=$(ENGINE) docker/engine.sh build --network host -f docker/Dockerfile \
               $(if $(filter podman,$(ENGINE)),--ignorefile docker/Dockerfile.dockerignore) \
               $(if $(wildcard $(HOST_CA)),--secret id=pipca$(comma)src=$(HOST_CA)) \
               --build-arg BASE_IMAGE=$(BASE_IMAGE)

.PHONY: docker docker-engine docker-base docker-cpu docker-gpu docker-test

# The engine, runc (podman's crun cannot run on cgroup v1/v2 hybrid hosts) and debootstrap, from
# Debian's packages when missing (as root).
DOCKER_APT_PACKAGES ?= $(if $(filter podman,$(ENGINE)),podman buildah runc,docker.io) debootstrap
docker-engine:
	@if command -v $(ENGINE) >/dev/null && command -v debootstrap >/dev/null && \
	    { [ "$(ENGINE)" != podman ] || command -v runc >/dev/null; }; then \
	  echo "$$($(ENGINE) --version)"; \
	else \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DOCKER_APT_PACKAGES); \
	fi

docker-base: docker-engine
	$(if $(filter localhost/tfmf-base:%,$(BASE_IMAGE)),ENGINE=$(ENGINE) docker/bootstrap-base.sh $(BASE_IMAGE),@echo "base $(BASE_IMAGE) comes from a registry")

# Each build's wall time is appended to $(DOCKER_LOG)/build-times.txt.
docker-cpu docker-gpu: docker-%: docker-base
	@mkdir -p $(DOCKER_LOG)
	@start=$$(date +%s); \
	$(DOCKER_BUILD) --target $* $(if $(filter gpu,$*),--build-arg HOROVOD_NCCL=$(HOROVOD_NCCL)) \
	  -t $(IMAGE):$* . && \
	echo "$$(date -u +%FT%TZ) $(IMAGE):$* built in $$(( $$(date +%s) - start )) s" \
	  | tee -a $(DOCKER_LOG)/build-times.txt
	@ENGINE=$(ENGINE) docker/engine.sh image ls $(IMAGE):$*

docker: docker-cpu docker-gpu

docker-test:
	TFMF_DOCKER_TESTS=1 TFMF_DOCKER_ENGINE=$(ENGINE) TFMF_DOCKER_IMAGE=$(IMAGE) \
	  $(DOCKER_PY) -m pytest -p no:cacheprovider -k in_container tests/test_docker.py -v $(PYTEST_ARGS)
