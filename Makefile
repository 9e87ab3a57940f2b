# Two commands: `make convert` (the whole pipeline into artifacts/) and
# `make test`. Both create .venv with the pinned stack first if needed.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
WEIGHTS ?= auto
SEED    ?= 0
WORKDIR ?= artifacts
SHAPE   ?= 1,3,1024,2048
# make convert gates on one full-size sample: each backend takes 10-45 s per
# 2048x1024 image on two cores, so every added sample adds about two minutes.
# PARITY_IMAGES=converter/samples checks all three (as does
# `ocrnet-convert parity` on its own).
PARITY_IMAGES ?= converter/samples/street_1.jpg
CLI     := $(BIN)/ocrnet-convert
# The Paddle 3 toolchain for PIR exports (paddlepaddle 3.3.1, paddle2onnx 2.1.0,
# numpy 2) in an interpreter of its own: docs/paddle3.md says why.
PADDLE3 := $(VENV)/paddle3
P3STAMP := $(PADDLE3)/.installed
READY   := $(STAMP) $(P3STAMP)

.PHONY: setup convert quantize package lint test test-slow test-e2e bench clean

setup: $(READY)

# requirements.lock pins every package (the stack of the README plus their
# dependencies), so that two machines build the same artifacts.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

# paddle2onnx 2.1.0 has wheels for CPython 3.9-3.12 only: on 3.13 this step
# fails, and PIR exports are refused with that reason (legacy ones convert).
$(P3STAMP): requirements-paddle3.lock $(STAMP)
	$(PYTHON) -m venv $(PADDLE3)
	$(PADDLE3)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-paddle3.lock
	touch $(P3STAMP)

# The stage order lives in converter/pipeline.py; `convert` runs it.
convert: $(READY)
	$(CLI) convert --weights $(WEIGHTS) --seed $(SEED) --workdir $(WORKDIR) --input-shape $(SHAPE) \
		--images $(PARITY_IMAGES)

# INT8 by NNCF post-training quantization of the FP32 IR (after make convert),
# its Model API flavour, then parity again so that the report gates INT8 too.
quantize: $(READY)
	$(CLI) quantize --workdir $(WORKDIR)
	$(CLI) model-api --workdir $(WORKDIR)
	$(CLI) parity --workdir $(WORKDIR) --images $(PARITY_IMAGES)
	$(CLI) manifest --workdir $(WORKDIR)

# OVMS repository, OMZ layout and the release archive, from a gated build.
DIST ?= dist
package: $(READY)
	archive=$$($(CLI) package --workdir $(WORKDIR) --output $(DIST)) && $(CLI) package --verify "$$archive"

# Three tiers (docs/development.md). `make test`: every behaviour that the
# lite model or a 256x512 input shows (at most 10 minutes here), on two
# workers, a test file each (most of its time is process start-up and model
# loads, not arithmetic); test-slow: what needs W48, a second NNCF run or a
# Ray cluster; test-e2e: full size, `make convert` and diagnose held to their
# memory bounds, one process at a time. .ci/run runs all three.
PYTEST := $(BIN)/python -m pytest -q -ra --durations=25

# The linter over everything, the type checker over the lower layers
# (pyproject.toml says which); tests/test_layers.py holds the house rules.
lint: $(READY)
	$(BIN)/ruff check
	$(BIN)/mypy

test: $(READY)
	$(PYTEST) -n 2 --dist loadfile

test-slow: $(READY)
	$(PYTEST) -m slow

test-e2e: $(READY)
	$(PYTEST) -m e2e

bench: $(READY)
	$(CLI) bench --workdir $(WORKDIR)

clean:
	rm -rf $(WORKDIR) $(DIST)
