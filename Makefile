# Two entry points do all set-up on a fresh machine:
#   make run    install, obtain the default model, start slmd
#   make test   install, obtain the models, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The multimodal helper library is not needed and doubles the llama.cpp build.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
TINY   := build/models/tiny-q4_0.gguf

.PHONY: install run test model tiny-model proto proto-check bench clean deb wheels deb-tools train-tiny

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# llama-cpp-python compiles llama.cpp from source (about 4-7 minutes on 2 cores)
# through packaging/llama-wheel.sh, with the fixes in packaging/llama-cpp/patch.py;
# its wheel cache is keyed by the flags, patches, compiler and CPU (pip's own is
# keyed by the source URL alone); a missing cache only costs time.
$(VENV)/.installed: $(BIN)/python pyproject.toml clients/python/pyproject.toml packaging/llama-wheel.sh packaging/llama-cpp/patch.py
	whl=$$(packaging/llama-wheel.sh $(BIN)/python) && \
	  $(BIN)/python -m pip install --quiet --no-deps --force-reinstall "$$whl"
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[dev,test,bench,train]'
	touch $@

install: $(VENV)/.installed

model: install
	$(BIN)/slmd pull

$(TINY): $(VENV)/.installed training/make_tiny.py training/model.py training/export.py
	$(BIN)/slmd pull
	$(BIN)/python -m training.make_tiny --out $(TINY)

tiny-model: $(TINY)

run: model
	$(BIN)/slmd serve $(ARGS)

test: model tiny-model deb-tools
	SLMD_REQUIRE_MODELS=1 $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

proto: install
	protos/generate.sh

proto-check: install
	protos/generate.sh --check

bench: model
	$(BIN)/python benchmarks/engine.py

# Every training stage (training/README.md) end to end on tiny settings, a few minutes on CPU.
train-tiny: model
	$(BIN)/python -m training.pipeline --work build/train-tiny

# The Debian package (build/deb/) and the wheels + sdists of both packages (dist/).
deb: install deb-tools
	packaging/deb/build.sh

wheels: install
	packaging/build-wheels.sh

# tests/packaging builds and installs the .deb: dpkg-deb, Debian's python3 with
# venv, and systemd-analyze for the unit checks. Installed only where missing.
deb-tools:
	@if ! { command -v dpkg-deb && command -v systemd-analyze && /usr/bin/python3 -c 'import ensurepip'; } >/dev/null 2>&1 \
	    && command -v apt-get >/dev/null; then \
	  apt-get update -qq && apt-get install -y -qq dpkg-dev python3 python3-venv systemd; fi

clean:
	rm -rf build .pytest_cache
