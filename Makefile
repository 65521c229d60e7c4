# Quick start:  make demo   (set up .venv, run the default JAX-vs-TensorFlow comparison)
#               make test   (set up .venv, run the tests)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench sweep clean clean-results

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[tf,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m compare run --impl jax,tf-raw,tf-static,tf-dynamic,tf2

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ''

bench: $(STAMP)
	$(PY) -m compare bench --grid
	$(PY) -m compare bench

sweep: $(STAMP)
	$(PY) -m compare sweep

# clean leaves results/ (your outputs) alone; clean-results deletes them.
clean:
	rm -rf $(VENV) build *.egg-info

clean-results:
	rm -rf results
