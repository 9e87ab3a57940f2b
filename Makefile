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
CLI     := $(BIN)/ocrnet-convert

.PHONY: setup convert test bench clean

setup: $(STAMP)

# requirements.lock pins every package (the stack of DEVELOPERS.md plus their
# dependencies), so that two machines build the same artifacts.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $(STAMP)

convert: $(STAMP)
	$(CLI) export --weights $(WEIGHTS) --seed $(SEED) --output $(WORKDIR)/paddle \
		--logits-output $(WORKDIR)/paddle-logits
	$(CLI) onnx --workdir $(WORKDIR) --input-shape $(SHAPE)
	$(CLI) openvino --workdir $(WORKDIR) --input-shape $(SHAPE)
	$(CLI) parity --workdir $(WORKDIR)
	$(CLI) manifest --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(CLI) bench --workdir $(WORKDIR)

clean:
	rm -rf $(WORKDIR)
