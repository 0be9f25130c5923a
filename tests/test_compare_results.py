"""scripts/compare_results.py: the check behind `make figures-check`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "compare_results", ROOT / "scripts/compare_results.py"
)
compare_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_results)


def test_equal_close_and_different_numbers():
    old = {"a": [1.0, 2.0, None], "b": {"c": 3.0, "seconds": 9.0}, "name": "x", "gone": 1}
    new = {"a": [1.0, 2.0 * (1 + 1e-7), None], "b": {"c": 3.1, "seconds": 1.0}, "name": "x"}
    old |= {"table": "| 1.38 s |", "stable": 1.0}
    new |= {"table": "| 1.16 s |", "stable": 2.0}
    res = compare_results.compare(new, old, rtol=1e-5)
    assert res["equal"] == 3  # 1.0, None, "x"; the timing and the rendered table skipped
    assert res["close"] == 1 and 0 < res["max_rel"] < 1e-6
    assert [d[0] for d in res["differ"]] == ["/b/c", "/gone", "/stable"]
    assert res["differ"][0][1:] == (3.1, 3.0)


def test_main_writes_the_report_and_fails_on_a_difference(tmp_path):
    for where, value in (("new", 1.0), ("old", 1.0), ("bad", 2.0)):
        (tmp_path / where / "exp").mkdir(parents=True)
        (tmp_path / where / "exp" / "results.json").write_text(json.dumps({"v": value}))
    out = tmp_path / "report.json"
    assert (
        compare_results.main(
            [str(tmp_path / "new"), str(tmp_path / "old"), "exp", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["experiments"]["exp"]["equal"] == 1
    assert out.with_suffix(".md").read_text().count("| exp |") == 1
    assert (
        compare_results.main(
            [str(tmp_path / "bad"), str(tmp_path / "old"), "exp", "--out", str(out)]
        )
        == 1
    )
