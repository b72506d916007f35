# The single entry point. `make demo` and `make test` each do all set-up on a fresh Debian 12
# (root) and are fast the second time: every step checks before it acts.
SHELL := /bin/bash
VENV ?= venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-mesos setup host venv image network lint unit unit-nolibvirt clean-venv

# One task through the local agent stand-in and the real executor, in a fresh real VM.
demo: setup
	$(VENV)/bin/vm-isolation-run --command 'echo "hello from $$(hostname), kernel $$(uname -r)"; grep -m1 "model name" /proc/cpuinfo'

# Lint and the fast lane first (fail fast), then everything against the real stack.
test: setup lint unit
	$(PY) -m pytest -m 'real or mesos' $(PYTEST_ARGS)

# The fast lane: tests/unit on fakes and in-process servers. It needs neither root, nor
# libvirtd, nor host set-up, only the venv (`make venv`: Debian's python3 with python3-venv, gcc
# and the Python headers, which `make setup`'s host step installs first);
# `make unit-nolibvirt` runs it as on a host without libvirt-python (imports of it refused).
# VMISO_REQUIRE_MESOS is for the real-cluster run that follows in `make test`, not this one.
unit: venv
	VMISO_REQUIRE_MESOS= $(PY) -m pytest tests/unit -m 'not real and not mesos' --timeout=120 $(PYTEST_ARGS)

unit-nolibvirt:
	VMISO_BLOCK_IMPORTS=libvirt $(MAKE) unit

# The real-cluster suite (tests/mesos): a real mesos-master and mesos-agents from MESOS_HOME
# (a Mesos build; on these hosts ../shared/mesos), real VMs. Without MESOS_HOME it is skipped.
MESOS_HOME ?=
test-mesos: setup
	$(if $(MESOS_HOME),MESOS_HOME=$(abspath $(MESOS_HOME))) $(PY) -m pytest -m mesos $(PYTEST_ARGS)

setup: host venv image network

host:
	scripts/host-setup.sh

# The venv is rebuilt when the packaging changes. pymesos's dependency http-parser is built
# first by scripts/install-http-parser.sh (it does not pip-install on Python >= 3.11).
# It is built on Debian's python3 (host-setup installs python3-venv): with the agent's default
# --switch_user the executor runs as the framework's user, who must be able to run this venv's
# interpreter (a python under /root is not theirs to run). A venv on another interpreter is
# rebuilt.
HOST_PYTHON ?= /usr/bin/python3
venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml Makefile scripts/install-http-parser.sh
	if [ -f $(VENV)/pyvenv.cfg ] && ! grep -qx "home = $$(dirname $(HOST_PYTHON))" $(VENV)/pyvenv.cfg; then \
	  echo "venv: $(VENV) is not on $(HOST_PYTHON): rebuilding it"; rm -rf $(VENV); fi
	test -x $(PY) || $(HOST_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	scripts/install-http-parser.sh $(abspath $(PY))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The fast guest kernel (scripts/build-kernel.sh: ~5-15 min the first time, then cached by its
# build id), the base images with Debian's kernel and initramfs (scripts/build-image.sh), and the
# debian-cloud image (cloud-init kind, scripts/build-cloud-image.sh: ~5 min the first time, then cached).
image: host
	scripts/build-kernel.sh
	scripts/build-image.sh busybox python
	scripts/build-cloud-image.sh

network: venv host
	$(PY) -m vm_isolation.hostsetup

lint: venv
	$(VENV)/bin/ruff check vm_isolation tests bin bench
	$(VENV)/bin/mypy

clean-venv:
	rm -rf $(VENV)

# Benchmarks (bench/): floor vs executor cold path, concurrency, disk, address discovery, kill,
# footprint. Writes bench/results/<time>/ and refreshes bench/RESULTS.md + RESULTS.png.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS='--reps 3 --only floor,coldpath'.
.PHONY: bench
BENCH_ARGS ?=
bench: setup
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q matplotlib
	$(PY) -m bench --publish $(BENCH_ARGS)

# Soak (not in CI, ~10-20 min): many launches with random KILLs, executor SIGKILLs and a libvirtd
# restart, then the reaper; prints status and leftover counts. SOAK_ARGS='--launches 20' etc.
# SOAK_ARGS='--mesos ../shared/mesos' soaks through a real master and agent instead (agent
# restarts, executor SIGKILLs; the reaper watcher alone cleans up): bench/soak_mesos.py.
.PHONY: soak
SOAK_ARGS ?=
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)
