# make test: install into .venv with the locked versions and run the test suite (CPU).
# make test-latest: the same suite on the newest releases (.venv-latest), then what moved.
# make lock: write the lock from .venv-latest (after test-latest passed).
# make demo: install only what the demo needs (the package, and torch unless the venv has
#   one), then segment the example images with the shipped model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST_VENV ?= .venv-latest
LATEST_PY := $(LATEST_VENV)/bin/python
# Exact versions the suite passed with (pip constraints); `make test LOCK=` installs without them.
LOCK ?= tests/constraints.txt
LOCK_FLAG := $(if $(LOCK),-c $(LOCK))
BUILD_LOCK_FLAG := $(if $(LOCK),--build-constraint $(LOCK))
# torch and torchvision are pinned as a matching pair for the test references (timm needs
# torchvision); on a GPU or Jetson machine install your platform's torch first (README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# The demo runs on the package's own dependencies (torch, numpy, pillow, safetensors and the
# tokenizers): no extras. A torch already in the venv (a CUDA or Jetson build) is kept.
DEMO_TORCH ?= torch==2.14.1
DEMO_OUT ?= demo-out
# --no-compile: the demo byte-compiles only the modules it imports, not every installed file.
PIP_QUIET := -q --disable-pip-version-check --no-compile

.PHONY: install test test-latest lock test-all demo bench native clean mutants

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(LOCK_FLAG) --upgrade pip
	$(PY) -m pip install -q $(LOCK_FLAG) $(TORCH_PINS)
	$(PY) -m pip install -q $(LOCK_FLAG) $(BUILD_LOCK_FLAG) -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# A fresh environment every time, so nothing is left over from the locked one.
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_PY) -m pip install -q --upgrade pip
	$(LATEST_PY) -m pip install -q --upgrade torch torchvision
	$(LATEST_PY) -m pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	$(LATEST_PY) tools/env_lock.py diff $(LOCK)
	$(LATEST_PY) -m pytest -q; status=$$?; \
	$(LATEST_PY) tools/env_lock.py diff $(LOCK); \
	if [ $$status -ne 0 ]; then echo "make test-latest: the suite failed on the newest releases; the packages that moved are listed above"; fi; \
	exit $$status

lock:
	@test -x $(LATEST_PY) || { echo "make lock: run make test-latest first (it builds $(LATEST_VENV))"; exit 2; }
	$(LATEST_PY) tools/env_lock.py write $(LOCK)

$(VENV)/.demo-installed: pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install $(PIP_QUIET) $(LOCK_FLAG) --upgrade pip
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install $(PIP_QUIET) $(LOCK_FLAG) $(DEMO_TORCH)
	@# setuptools warns about every editable install with a package-dir (a UserWarning).
	@PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install $(PIP_QUIET) $(LOCK_FLAG) $(BUILD_LOCK_FLAG) -e .
	@touch $@

demo: $(VENV)/.demo-installed
	$(PY) -m clippy_rt.demo --out $(DEMO_OUT)

bench: install
	$(PY) benchmarks/run_all.py

# mutmut goes in its own environment, which sees the test environment's packages (a .pth
# file), so the locked test environment stays as the lock says.
MUTMUT ?= mutmut==3.8.1
MUTANTS_VENV ?= build/mutants-venv
MUTANTS_PY := $(MUTANTS_VENV)/bin/python
MODULE ?=
TESTS ?= tests/test_$(basename $(notdir $(MODULE))).py
MUTANTS_TIMEOUT ?= 600
MUTANTS_CHILDREN ?= 2

$(MUTANTS_VENV)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(MUTANTS_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(MUTANTS_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/clippy-rt-test-env.pth"
	$(MUTANTS_PY) -m pip install -q $(MUTMUT)
	touch $@

mutants: $(MUTANTS_VENV)/.installed
	@test -n "$(MODULE)" || { echo "make mutants: name the module, e.g. make mutants MODULE=clippy_rt/stream.py TESTS=\"tests/test_stream.py\""; exit 2; }
	$(MUTANTS_PY) tools/mutants.py $(MODULE) $(TESTS) --children $(MUTANTS_CHILDREN) --timeout $(MUTANTS_TIMEOUT)

native:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j2

clean:
	rm -rf build $(DEMO_OUT) .pytest_cache
