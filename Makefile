# l2l_jax: every target creates the virtualenv on first use, so `make run` and
# `make test` work on a fresh clone with nothing installed but Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PRESET ?= cpu-small
OUT    ?= runs

.PHONY: setup run test test-isa test-slow lint bench bench-estimators bench-group accelerator-check docs figures figures-check figures-check-mnist clean

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

## test-slow: the end-to-end tests marked slow (experiment CLIs, multi-process meta-training); a test
## may take up to an hour here (the stored fig4b seed's rerun takes 10-40 min on 2 cores), 900 s in make test
test-slow: $(STAMP)
	$(PY) -m pytest -n auto --dist loadfile --max-worker-restart=0 --timeout=3600 -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check l2l_jax experiments configs benchmarks scripts tests
	$(VENV)/bin/ruff format --check l2l_jax experiments configs benchmarks scripts tests

## bench: benchmarks as JSON + markdown under benchmarks/results/ (PRESET=cpu-small|accelerator);
## BENCH_ARGS=--no-peer skips the learned_optimization comparison (subprocesses, ~10 min on 2 cores)
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

## accelerator-check: on a GPU machine (no virtualenv: its python3 with jax[cuda]), at most 8 min:
## `bench PRESET=accelerator`, then 200 meta-steps of fig4b's paper preset, into OUT/accelerator-check
## (see scripts/accelerator_check.sh for the wheels to carry in .whl/)
accelerator-check:
	PYTHON=$(PYTHON) scripts/accelerator_check.sh $(OUT)/accelerator-check

## figures: regenerate the experiment results and the figures the docs show (about 4.6 hours on 2 CPU
## cores, the sum of each command's measured time: the eleven quick experiments 23 min, meta_tune and
## fig4a-c 27-28 min each and ood 8 min on idle cores, the two paper-preset ood runs 70 and 63 min
## with other work beside them)
figures: $(STAMP)
	$(PY) -m experiments fig1 --out results/fig1
	$(PY) -m experiments fig1_momentum --out results/fig1_momentum
	$(PY) -m experiments thm3 --out results/thm3
	$(PY) -m experiments sweep --out results/sweep
	$(PY) -m experiments fig2 --out results/fig2
	$(PY) -m experiments fig3 --out results/fig3
	$(PY) -m experiments thm5 --out results/thm5
	$(PY) -m experiments thm6 --out results/thm6
	$(PY) -m experiments health --out results/health
	$(PY) -m experiments meta_tune --out results/meta_tune
	$(PY) -m experiments fig4a --out results/fig4a
	$(PY) -m experiments fig4b --out results/fig4b
	$(PY) -m experiments fig4c --out results/fig4c
	$(PY) -m experiments fig5 --out results/fig5
	$(PY) -m experiments towers --out results/towers
	$(PY) -m experiments stability --out results/stability
	$(PY) -m experiments ood --out results/ood
	$(PY) -m experiments ood --out results/ood_paper --preset paper
	$(PY) -m experiments ood --out results/ood_paper_seed1 --preset paper --config.seed=1

## figures-check: regenerate the experiments that take minutes (not the MNIST meta-training ones) under
## OUT/figures-check and compare them with results number by number: bit for bit when a stored
## file was written on this host (CPU, extensions, XLA_FLAGS' --xla_cpu_max_isa, jax/jaxlib), else
## at the level of claims within the tolerance table of scripts/compare_results.py (MODE=bitwise|claims
## forces one); writes results/figures_check.{json,md} (naming the mode and why) and fails on a difference
QUICK_FIGURES = fig1 fig1_momentum thm3 sweep fig2 fig3 thm5 thm6 health stability towers
# check_figures,TARGET,NAMES: rerun NAMES under OUT/TARGET, compare with results, report in results/TARGET.{json,md} (- as _)
define check_figures
	for e in $(2); do $(PY) -m experiments $$e --no-progress --out $(OUT)/$(1)/$$e || exit 1; done
	$(PY) scripts/compare_results.py $(OUT)/$(1) results $(2) \
		--out results/$(subst -,_,$(1)).json --made-by "make $(1)" $(if $(MODE),--mode $(MODE))
endef
figures-check: $(STAMP)
	$(call check_figures,figures-check,$(QUICK_FIGURES))

## figures-check-mnist: the same for the MNIST meta-training experiments and the default ood study
## (about 2 hours on 2 idle CPU cores; fig5 is a function of fig4a-c's results.json, so equal inputs
## give equal claims; the two paper-preset ood runs, an hour each, are left out); writes
## results/figures_check_mnist.{json,md}
MNIST_FIGURES = meta_tune fig4a fig4b fig4c ood
figures-check-mnist: $(STAMP)
	$(call check_figures,figures-check-mnist,$(MNIST_FIGURES))

## docs: build the mkdocs site with --strict
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site runs .pytest_cache .ruff_cache .hypothesis
