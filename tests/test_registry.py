"""One registry of experiments (experiments/registry.py): the CLI, the Makefile and the
documentation's navigation derive from it, so an experiment is its module plus its config."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
from experiments import cli, registry

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_experiment_has_a_module_a_config_and_a_page():
    found = registry.experiments()
    assert len(found) >= 10
    for e in found:
        module = importlib.import_module(f"experiments.{e.name}")
        assert callable(module.run) and callable(module.summarize), e.name
        assert (ROOT / "configs" / f"{e.name}.py").is_file(), e.name
        assert (ROOT / "docs" / e.page).is_file(), (e.name, e.page)
        assert e.title, f"experiments/{e.name}.py has no docstring"


def test_each_experiments_page_is_some_experiments_page():
    pages = {e.page for e in registry.experiments()}
    on_disk = {f"experiments/{p.name}" for p in (ROOT / "docs" / "experiments").glob("*.md")}
    assert on_disk == pages


def test_the_cli_offers_exactly_the_registry():
    assert experiments.EXPERIMENTS == registry.names()
    groups = [set(registry.names(g)) for g in registry.GROUPS]
    assert set().union(*groups) == set(registry.names()) and sum(map(len, groups)) == len(
        registry.names()
    )  # every experiment in exactly one group
    listing = cli.registry_listing(["--list", "quick"]).split()
    assert tuple(listing) == registry.names("quick")
    runs = [line.split() for line in cli.registry_listing(["--runs"]).splitlines()]
    assert [r[0] for r in runs if r[0] == r[1]] == list(registry.names())  # default runs
    with pytest.raises(SystemExit, match="group must be one of"):
        cli.registry_listing(["--list", "slow"])


def test_an_experiment_reading_another_ones_results_runs_after_it():
    order = registry.names()
    assert order.index("fig5") > max(order.index(f) for f in ("fig4a", "fig4b", "fig4c"))


def test_the_makefile_names_no_experiment():
    """``figures``, ``figures-check`` and ``figures-check-mnist`` read the registry."""
    make = (ROOT / "Makefile").read_text()
    assert "-m experiments --runs" in make and "-m experiments --list" in make
    named = re.findall(r"-m experiments (\w+)", make)
    assert set(named) & set(registry.names()) == {"fig1"}  # `make run`: the main job


def test_the_docs_navigation_is_the_registry(tmp_path):
    """The mkdocs hook fills the Experiments section from the registry, in ORDER."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        hooks = importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    config = {"config_file_path": str(ROOT / "mkdocs.yml"), "nav": [{"Experiments": []}]}
    pages = hooks.on_config(config)["nav"][0]["Experiments"]
    assert pages == list(dict.fromkeys(e.page for e in registry.experiments()))
    with pytest.raises(ValueError, match="Experiments"):
        hooks.on_config({"config_file_path": str(ROOT / "mkdocs.yml"), "nav": []})


def test_list_runs_without_importing_jax():
    code = (
        "import sys; from experiments import cli; cli.main(['--list']); print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"
