# make test: install into .venv and run the test suite (CPU).
# make demo: install, then segment the example images with the shipped model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned as a matching pair for the test references (timm needs
# torchvision); on a GPU or Jetson machine install your platform's torch first (README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: install test test-all demo bench native clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m clippy_rt.demo --out $(DEMO_OUT)

bench: install
	$(PY) benchmarks/run_all.py

native:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
	cmake --build build -j2

clean:
	rm -rf build $(DEMO_OUT) .pytest_cache
