# drift-sgl: `make setup` then `make test` (see README.md).
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV     := python3 -m uv
MODEL  ?=
PORT   ?= 30000
ARGS   ?=
TINY_MODEL_DIR ?= models/tiny-llama
LINT_PATHS := python test bench sgl-kernel-ext

.PHONY: setup test lint format serve serve-cluster tiny-model ext clean

setup:
	python3 -m pip install --quiet uv
	$(UV) venv $(VENV) --python python3.11 --allow-existing
	$(UV) pip install --python $(PY) -e '.[test,plot,bench,cluster]'
	$(PY) -m drift_sgl.cpu.stub

lint:
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format:
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

test: lint
	$(PY) -m pytest -q

# The optional CUDA extension (sgl-kernel-ext/README.md); skips itself without nvcc.
ext:
	$(PY) sgl-kernel-ext/build.py

$(TINY_MODEL_DIR)/config.json:
	$(PY) -m drift_sgl.tools.tiny_model $(TINY_MODEL_DIR)

tiny-model: $(TINY_MODEL_DIR)/config.json

# `make serve` serves the tiny model (on CPU when there is no NVIDIA driver);
# `make serve MODEL=path ARGS="..."` serves a real one.
ifeq ($(strip $(MODEL)),)
serve: tiny-model
	$(PY) -m drift_sgl.launch_server --model-path $(TINY_MODEL_DIR) --host 127.0.0.1 \
		--port $(PORT) --max-total-tokens 8192 $(ARGS)
else
serve:
	$(PY) -m drift_sgl.launch_server --model-path $(MODEL) --port $(PORT) $(ARGS)
endif

# Two drift workers behind SGLang's gateway (docs/scale-out.md); WORKERS=N, PORT=... (the gateway's).
WORKERS ?= 2
serve-cluster: tiny-model
	$(PY) -m drift_sgl.launch_cluster --workers $(WORKERS) --port $(PORT) \
		--model-path $(if $(strip $(MODEL)),$(MODEL),$(TINY_MODEL_DIR)) \
		$(if $(strip $(MODEL)),,--max-total-tokens 8192) $(ARGS)

clean:
	rm -rf test-logs .pytest_cache .ruff_cache
