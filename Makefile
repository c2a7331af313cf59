# Two commands do all set-up on a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench figures clean

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

figures: $(STAMP)
	$(PY) guides/make_figures.py

# The measuring scripts of benchmarks/, each printing one JSON line (tests/benchmarks/test_bench_target.py
# keeps the list). Not here: helper modules, and monitor_alarms.py (about 75 minutes of training: run it alone).
BENCHMARKS := ema_update metrics eval_speed data_pipeline step_overhead throughput t4_batch_table real_data gpu_check

bench: $(STAMP)
	for name in $(BENCHMARKS); do $(PY) benchmarks/$$name.py || exit 1; done

clean:
	rm -rf $(VENV) checkpoints .pytest_cache
