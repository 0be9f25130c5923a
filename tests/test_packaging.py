"""The built distribution is the library alone: ``pip install .`` installs ``l2l_jax`` and
nothing else (the experiments, their configs, the benchmarks and the results stay in the
repository)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_l2l_jax_only(tmp_path):
    # a copy of the repository (less results, docs and caches): setuptools writes build/
    # and *.egg-info beside pyproject.toml, which must not touch the checkout
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns(".*", "__pycache__", "results", "site", "build", "*.egg-info")
    shutil.copytree(ROOT, src, ignore=ignore)
    # --no-build-isolation: the build backend (setuptools, a dev dependency) is already in
    # the environment, so the test builds offline
    build = ["wheel", str(src), "--no-deps", "--no-build-isolation", "--quiet"]
    out = subprocess.run(
        [sys.executable, "-m", "pip", *build, "--wheel-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("l2l_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"l2l_jax"}, sorted(top)
    top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
    assert zipfile.ZipFile(wheel).read(top_level).decode().split() == ["l2l_jax"]
    # the library's subpackages are all in it
    for package in ("inner", "tasks", "metagrad", "truncated", "learned", "hyper.py"):
        assert any(n.startswith(f"l2l_jax/{package}") for n in names), package


def test_the_old_meta_names_forward_with_a_deprecation_warning():
    """``l2l_jax.meta`` was split into ``metagrad`` and ``truncated``; the names the
    documentation promised still work, and say where they went."""
    import pytest

    from l2l_jax import meta, metagrad, truncated

    with pytest.warns(DeprecationWarning, match=r"l2l_jax\.metagrad\.minimize"):
        assert meta.train is metagrad.minimize
    with pytest.warns(DeprecationWarning, match=r"l2l_jax\.truncated\.meta_train"):
        assert meta.meta_train is truncated.meta_train
    with pytest.warns(DeprecationWarning):
        assert meta.meta_objective is metagrad.meta_objective
    with pytest.raises(AttributeError, match=r"split into l2l_jax\.metagrad"):
        meta.segment_loss  # noqa: B018 (never a documented name)


def test_a_script_written_for_the_old_meta_api_still_runs():
    """The peer comparison's script (``../shared/peers/l2l_throughput.py``) imports
    ``truncated`` from ``l2l_jax.meta`` and passes ``es_pairs`` to ``meta.TruncatedConfig``:
    the package is forwarded, and the removed settings move into the estimator they meant
    (ignored by TBPTT, as they were)."""
    import pytest

    from l2l_jax import meta, truncated

    with pytest.warns(DeprecationWarning, match=r"moved to l2l_jax\.truncated$"):
        from l2l_jax.meta import truncated as old
    assert old is truncated
    with pytest.warns(DeprecationWarning, match=r"l2l_jax\.truncated\.TruncatedConfig"):
        make = meta.TruncatedConfig
    with pytest.warns(DeprecationWarning, match=r"l2l_jax\.truncated\.init_state"):
        assert meta.init_state is truncated.init_state
    shape = dict(horizon=200, segment=20, meta_batch=8, batch_size=32, eval_batch_size=32)
    new = functools.partial(truncated.TruncatedConfig, **shape)
    pes = make(**shape, estimator="pes", es_pairs=2, es_sigma=0.03)
    assert pes == new(estimator=truncated.PES(sigma=0.03, pairs=2))
    assert make(**shape, estimator="es", es_pairs=1) == new(estimator=truncated.ES(pairs=1))
    assert make(**shape, estimator="tbptt", es_pairs=1) == new(estimator="tbptt")
    assert make(**shape) == new()
    with pytest.raises(ValueError, match="estimator"):
        make(**shape, estimator="nope", es_pairs=1)
