# make run  : create .venv if missing, install, run the main job on the bundled demo patient
# make test : create .venv if missing, install, run the whole test suite
# make package: the .deb and tarball installers in dist/ (packaging/README.md)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.openatp-installed
DEMO   := resources/demo/pt_demo.npz

.PHONY: run test install bench clean package

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# With a display: the workstation on the demo patient. Without: the automated plan, headless.
run: $(STAMP)
	@if [ -n "$$DISPLAY" ] && [ "$$QT_QPA_PLATFORM" != "offscreen" ]; then \
	  $(PY) main.py gui $(DEMO); \
	else \
	  $(PY) main.py info $(DEMO) && \
	  $(PY) main.py plan $(DEMO) --site hn --out out/demo_plan && \
	  echo "report: $$(pwd)/out/demo_plan/report.html"; \
	fi

test: $(STAMP)
	$(VENV)/bin/lint-imports
	QT_QPA_PLATFORM=$${QT_QPA_PLATFORM:-offscreen} \
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) bench/dose_engine.py
	$(PY) bench/optimizer.py
	$(PY) bench/prediction.py
	$(PY) bench/gui.py

# The Linux installer (.deb + relocatable tarball in dist/), from the wheel, in its own build venv
# (packaging/.venv-build); not part of `make test`. Details and options: packaging/README.md.
package:
	packaging/build_linux.sh

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
