# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-kaggle bench figures clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# Each run trains the demo afresh into checkpoints/demo/, replacing the previous demo run (it is deterministic:
# the same numbers again); copy that folder elsewhere to keep a run.
demo: $(STAMP)
	$(PY) train_ultimate.py train --config configs/demo.yaml --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Kaggle's own PyTorch (its image ships torch 2.10 + CUDA 12.8): the GPU-path (fake CUDA), memory, resume,
# DDP and model tests again in a second venv with that torch. requirements.txt's torch floor is the oldest
# version this passes on. CI runs it after `make test`.
KAGGLE_VENV := .venv-kaggle
KAGGLE_TORCH := torch==2.10.* torchvision==0.25.*
KAGGLE_TESTS := tests/models tests/engine/runtime tests/engine/commands/test_memory_estimate.py \
	tests/engine/training/test_resume.py tests/engine/training/test_fp16_cpu.py tests/engine/checkpoint

$(KAGGLE_VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(KAGGLE_VENV)/bin/python || $(PYTHON) -m venv $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(KAGGLE_VENV)/bin/python -m pip install --quiet $(KAGGLE_TORCH) -r requirements-dev.txt
	touch $@

test-kaggle: $(KAGGLE_VENV)/.installed
	$(KAGGLE_VENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.10'), torch.__version__"
	$(KAGGLE_VENV)/bin/python -m pytest -q $(KAGGLE_TESTS)

figures: $(STAMP)
	$(PY) guides/make_figures.py

# The measuring scripts of benchmarks/, each printing one JSON line (tests/benchmarks/test_bench_target.py
# keeps the list). Not here: helper modules, and monitor_alarms.py (about 75 minutes of training: run it alone).
BENCHMARKS := ema_update metrics eval_speed data_pipeline step_overhead throughput expert_dispatch t4_batch_table real_data gpu_check

bench: $(STAMP)
	for name in $(BENCHMARKS); do $(PY) benchmarks/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) $(KAGGLE_VENV) checkpoints .pytest_cache
