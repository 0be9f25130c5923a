"""Determinism: the same seed gives the same results.json, byte for byte (the experiments
write no timings into these two; only the output folder's path and the date in the
environment record differ), for fig1 and a small fig2, each run twice in one
process (the second run recompiles nothing, so a cache that changed numbers would show)
and into two folders."""

from __future__ import annotations

import re

import pytest

from experiments import cli


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fig1", ["--config.meta_steps=60"]),
        pytest.param(
            "fig2",
            [
                "--config.d=40",
                "--config.n=20",
                "--config.m=20",
                "--config.sigmas=(1.0, 4.0)",
                "--config.refine_steps=10",
                "--config.eta_count=20",
            ],
            marks=pytest.mark.slow,  # an end-to-end experiment run (~40 s)
        ),
    ],
)
def test_same_seed_same_results_json(name, overrides, tmp_path):
    texts = []
    for run in ("a", "b"):
        out = tmp_path / run
        cli.main([name, "--out", str(out), "--no-progress", *overrides])
        # allowed to differ: the output folder's own path and the run's date
        text = (out / "results.json").read_text().replace(str(out), "OUT")
        texts.append(re.sub(r'"date_utc": "[^"]*"', '"date_utc": ""', text))
    assert texts[0] == texts[1]
    assert len(texts[0]) > 200  # a real results file, not an empty one
