# The two commands of the README, and the details behind them.
#   make run    set up, then train and compare the backbones on the default dataset
#   make test   set up, then run the whole test suite
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
CONFIG ?= configs/butterflies50.toml

.PHONY: setup run test lint export serve slug bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[serve,train,cpu,dev]'
	touch $@

run: setup
	$(PY) -m training compare --config $(CONFIG)

# One worker per core (pytest-xdist), plus one: most tests are single-threaded conversions and
# training steps, and the extra worker fills the time others spend waiting on a browser or a child.
# `--dist load --maxschedchunk 1` hands each worker its next test when it is nearly done, in the order
# of tests/conftest.py: the heavy ones first, so no worker is left alone with a long test at the end.
test: setup
	$(PY) -m pytest -n $$(( $$(nproc) + 1 )) --dist load --maxschedchunk 1

lint: setup
	$(VENV)/bin/ruff check .

export: setup
	$(PY) -m training export --run saved_models/butterflies50 --best

serve: setup
	$(VENV)/bin/streamlit run app/streamlit_app.py

slug: setup
	$(PY) bench/slug.py

# Works from a clean clone: train_compare.py trains the runs it measures (bench/results/), field.py
# measures the cold run's models on leeds-field (and a frozen-feature pilot), and
# serving.py exports the best of a finished run when saved_models/deploy holds no model yet;
# held_out.py trains the recipe again without each fold of species and shows it them (the honest
# leave-species-out figure); suite.py times `make test`'s pytest run. After a failure,
# `bench/train_compare.py --resume` runs only its jobs not yet recorded in bench/results/jobs.json.
bench: setup
	$(PY) bench/extraction.py --config $(CONFIG)
	$(PY) bench/train_compare.py --config $(CONFIG)
	$(PY) bench/field.py --config $(CONFIG) --study
	$(PY) bench/held_out.py --config $(CONFIG)
	$(PY) bench/serving.py --config $(CONFIG)
	$(PY) bench/suite.py

clean:
	rm -rf build .cache .pytest_cache test-artifacts
