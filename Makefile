# The README's first two commands: `make run` (the product on its embedded defaults) and
# `make test` (the whole suite). Both install what they need into .venv first.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean scale-out bench profile-chunk

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

run: venv
	scripts/run-embedded.sh

test: venv
	scripts/test.sh $(PYTEST_ARGS)

# The Celery multi-worker run alone, with its figures; CAMPAIGN_SCALE_RECIPIENTS sets the size.
scale-out: venv
	scripts/test.sh tests/scale -s

# Ratios measured in one run (benchmarks/); BENCH_ARGS=--smoke for tiny sizes.
bench: venv
	scripts/ensure-system-packages.sh
	PYTHONPATH=include:. $(VENV)/bin/python -m benchmarks $(BENCH_ARGS)

# Where one send_chunk spends its time (cProfile); PROFILE_ARGS="--recipients N".
profile-chunk: venv
	PYTHONPATH=include:. $(VENV)/bin/python -m benchmarks.profile_chunk $(PROFILE_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check include dags plugins tests

clean:
	rm -rf var test-artifacts .pytest_cache
