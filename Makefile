# l2l_jax: every target creates the virtualenv on first use, so `make run` and
# `make test` work on a fresh clone with nothing installed but Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= cpu-small
OUT    ?= runs

help:
	@awk '/^## /{sub(/^## /, ""); print}' $(MAKEFILE_LIST)

.PHONY: help setup run test test-isa test-slow test-rerun lint bench bench-estimators bench-group accelerator-check docs figures figures-fig4 figures-check figures-check-mnist clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## run: the main job on its small default (Figure 1 of Wang et al.), with a summary
run: $(STAMP)
	$(PY) -m experiments fig1 --out $(OUT)/fig1

## test: lint, then the whole test suite (what CI runs), one pytest worker per core
## (test files stay whole on one worker, so their module fixtures compile once)
test: $(STAMP) lint
	$(PY) -m pytest -n auto --dist loadfile --max-worker-restart=0 -m "not slow"

## test-isa: the same fast suite compiled as an older CPU would (XLA's --xla_cpu_max_isa), ISA=AVX2|AVX|SSE4_2
## (default AVX): float rounding differs from the native build, so every assert that compares two
## different programs must hold with its stated bound (docs/reliability.md, "Equality in tests")
ISA ?= AVX
test-isa: $(STAMP)
	XLA_FLAGS="$(XLA_FLAGS) --xla_cpu_max_isa=$(ISA)" $(PY) -m pytest -n auto --dist loadfile --max-worker-restart=0 -m "not slow"

## test-slow: the end-to-end tests marked slow (experiment CLIs, multi-process meta-training); each test
## may take up to an hour (--timeout=3600; make test allows 900 s)
test-slow: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile --max-worker-restart=0 --timeout=3600 -m "slow and not rerun"

## test-rerun: seed 0 of the stored fig4b meta-trained again from scratch and compared with it: bit for
## bit on the host that wrote it, else each accuracy within its bound (the learned ones: 1 point)
test-rerun: $(STAMP)
	$(PY) -m pytest --timeout=7200 -m rerun -s

lint: $(STAMP)
	$(VENV)/bin/ruff check l2l_jax experiments configs benchmarks scripts tests
	$(VENV)/bin/ruff format --check l2l_jax experiments configs benchmarks scripts tests

## bench: benchmarks as JSON + markdown under benchmarks/results/ (PRESET=cpu-small|accelerator);
## BENCH_ARGS=--no-peer skips the learned_optimization comparison
bench: $(STAMP)
	$(PY) -m benchmarks.run --preset $(PRESET) $(BENCH_ARGS)

## bench-estimators: only the learned-optimizer estimators group of `make bench` (TBPTT, ES, PES:
## inner steps/s, memory roofline, TBPTT/forward ratio; BENCH_ARGS=--no-peer skips learned_optimization)
bench-estimators: $(STAMP)
	$(PY) -m benchmarks.estimators --preset $(PRESET) $(BENCH_ARGS)

## bench-group: one group of `make bench` alone, GROUP=momentum|estimators|towers|... (JSON + markdown
## under benchmarks/results/GROUP-PRESET.*)
bench-group: $(STAMP)
	$(PY) -m benchmarks.group $(GROUP) --preset $(PRESET) $(BENCH_ARGS)

## accelerator-check: on a GPU machine (no virtualenv: its python3 with jax[cuda]):
## `bench PRESET=accelerator`, then 200 meta-steps of fig4b's paper preset, into OUT/accelerator-check
## (see scripts/accelerator_check.sh for the wheels to carry in .whl/)
accelerator-check:
	PYTHON=$(PYTHON) scripts/accelerator_check.sh $(OUT)/accelerator-check

## figures: regenerate every experiment's results and figures into results/ (the list and order come
## from experiments/registry.py: `python -m experiments --runs`); docs/results.md gives each one's time
figures: $(STAMP)
	$(PY) -m experiments --runs | while read -r name out args; do \
		$(PY) -m experiments $$name --out results/$$out $$args || exit 1; done

## figures-fig4: the learned optimizer on MNIST (docs/experiments/fig4.md) into results/: meta_tune, then
## fig4a-c, then fig5's claims; long on 2 cores (the cost per seed is in each table). Interrupted, the
## same command resumes: per seed, and within a seed from its meta-training checkpoints
figures-fig4: $(STAMP)
	for e in meta_tune fig4a fig4b fig4c fig5; do \
		$(PY) -m experiments $$e --out results/$$e || exit 1; done

## figures-check: rerun the quick experiments (registry group "quick") under
## OUT/figures-check and compare them with results/ number by number: bit for bit when a stored file was
## written on this host (CPU, extensions, XLA_FLAGS' --xla_cpu_max_isa, jax/jaxlib), else at the level
## of claims within the tolerance table of experiments/compare_rules.py (MODE=bitwise|claims forces one);
## writes results/figures_check.{json,md} and fails on a difference
# check_figures,TARGET,GROUP: rerun GROUP under OUT/TARGET, compare with results/, report in results/TARGET.{json,md} (- as _)
define check_figures
	names="$$($(PY) -m experiments --list $(2))" && \
	for e in $$names; do $(PY) -m experiments $$e --no-progress --out $(OUT)/$(1)/$$e || exit 1; done && \
	$(PY) scripts/compare_results.py $(OUT)/$(1) results $$names \
		--out results/$(subst -,_,$(1)).json --made-by "make $(1)" $(if $(MODE),--mode $(MODE))
endef
figures-check: $(STAMP)
	$(call check_figures,figures-check,quick)

## figures-check-mnist: the same for the registry group "mnist" (the learned optimizer's meta-training
## on MNIST and the studies built on it); writes results/figures_check_mnist.{json,md}
figures-check-mnist: $(STAMP)
	$(call check_figures,figures-check-mnist,mnist)

## docs: build the mkdocs site with --strict
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site runs .pytest_cache .ruff_cache .hypothesis
