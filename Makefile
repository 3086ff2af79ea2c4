# make demo  - create .venv, install flamediff (+ the bpy module and the tracking extra, which the demo
#              checkpoint's reference correspondence needs to find the reference photo's pose), build the
#              add-on zip and run the whole product headlessly: rig keyed in bpy -> backend subprocess -> frames (out/demo)
# make test  - create .venv, install flamediff + test dependencies, run pytest
# make results - regenerate docs/RESULTS.md (trains the ablation checkpoints first: 4 x 2,500 steps, about 1.5 h on 2 CPU cores)
# Both are idempotent: the install steps rerun only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test results clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[blender,tracking]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python build_addon.py
	$(BIN)/flamediff demo --out out/demo --addon-zip dist/flamediff-0.1.0.zip

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

results: $(VENV)/.installed
	configs/results/run.sh

clean:
	rm -rf $(VENV) out dist build *.egg-info
