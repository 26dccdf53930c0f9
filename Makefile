# make run  : create .venv if missing, install, run the main job on the bundled demo patient
# make test : create .venv if missing, install, run the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.openatp-installed
DEMO   := resources/demo/pt_demo.npz
export QT_QPA_PLATFORM ?= offscreen

.PHONY: run test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) main.py info $(DEMO)
	$(PY) main.py dvh $(DEMO) --dose $(DEMO)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/dose_engine.py

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
