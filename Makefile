# hp_ros: the README's two commands are `make demo` and `make test`; both set up first.
.PHONY: setup demo test test-fast bench clean

VENV := .venv
PY := $(VENV)/bin/python
ISOLATE := scripts/run_isolated.sh

setup:
	@scripts/setup_env.sh

# The main job on the embedded default (synthetic Allegro sequence, built-in geometry).
demo: setup
	@$(ISOLATE) $(VENV)/bin/hp-ros demo $(DEMO_ARGS)

# The whole test suite (ROS tests run in a private network namespace when possible).
test: setup
	@$(ISOLATE) $(PY) -m pytest $(PYTEST_ARGS)

# Core tests only (no ROS processes).
test-fast: setup
	@$(PY) -m pytest -m "not ros" $(PYTEST_ARGS)

# Speed figures (benchmarks/*.py print one JSON object as their last line).
bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(ISOLATE) $(PY) $$b || exit 1; done

clean:
	rm -rf build log $(VENV)
