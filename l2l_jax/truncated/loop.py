"""The meta-training loop: jitted meta-steps, a progress bar, JSONL metrics and orbax
checkpoints that resume bit-exactly."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import chex
import jax
import optax
from jax.sharding import Mesh
from tqdm.auto import tqdm

from l2l_jax import input_checks
from l2l_jax.truncated.checkpoints import host_value, restore_checkpoint, save_checkpoint
from l2l_jax.truncated.config import TruncatedConfig
from l2l_jax.truncated.sharding import check_mesh, replicate, shard_state
from l2l_jax.truncated.state import TruncatedState
from l2l_jax.truncated.step import init_state, make_meta_step

Array = jax.Array
MetaParams = chex.ArrayTree


@dataclasses.dataclass(frozen=True)
class TruncatedResult:
    """A :func:`meta_train` run: the final state and the metrics of this call's steps."""

    state: TruncatedState
    metrics: list[dict[str, Any]]

    @property
    def meta_params(self) -> MetaParams:
        return self.state.meta_params

    @property
    def nonfinite_count(self) -> int:
        """Meta-steps skipped over the whole run (including before a resume)."""
        return int(host_value(self.state.nonfinite_count))


def _host_metrics(metrics: Mapping[str, Array]) -> dict[str, Any]:
    out = {}
    for name, value in metrics.items():
        v = host_value(value)
        out[name] = bool(v) if v.dtype == bool else (int(v) if v.dtype.kind in "iu" else float(v))
    return out


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the lines of meta-steps after ``last_step`` (written after the checkpoint)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= last_step
    ]
    path.write_text("".join(line + "\n" for line in kept))


def meta_train(
    task,
    optimizer,
    config: TruncatedConfig,
    steps: int,
    *,
    key: Array,
    meta_params: MetaParams | None = None,
    meta_optimizer: optax.GradientTransformation | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    keep: int = 3,
    resume: bool = False,
    metrics_path: str | Path | None = None,
    progress: bool | str = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    mesh: Mesh | None = None,
) -> TruncatedResult:
    """Meta-train ``optimizer`` on ``task`` until ``steps`` meta-steps are done in total.

    A Python loop over the jitted :func:`meta_step`. With ``checkpoint_dir``, an orbax
    ``CheckpointManager`` saves the whole :class:`TruncatedState` (meta-parameters,
    meta-optimizer state, all runs, PRNG key, counters) and the config every
    ``checkpoint_every`` meta-steps and at the end, keeping the last ``keep``;
    ``resume=True`` continues from the latest one (or starts fresh if there is none), and
    ends bit-identical to an uninterrupted run. Without ``resume`` an existing checkpoint
    is an error. Metrics of each meta-step (``step``, ``meta_loss``, ``grad_norm``,
    ``nonfinite``, ``train_loss``, ``resets``, ``step_time``, ``time`` since this call
    started) are appended to ``metrics_path`` (default ``checkpoint_dir/metrics.jsonl``,
    written by process 0 only in a multi-process run; on resume, lines after the
    checkpoint are dropped) and passed to ``callback(step,
    metrics)``.

    ``mesh`` (opt-in; e.g. :func:`meta_batch_mesh` over all devices) splits the meta-batch
    over the devices of a 1-d :class:`jax.sharding.Mesh` (``meta_batch`` must be a
    multiple of their number): each device advances ``B / n`` runs, the meta-parameters
    are replicated and the mean over the meta-batch is reduced across devices by XLA.
    The meta-parameters agree with the unsharded run up to float rounding (the order of
    the mean's sums changes); checkpoints hold whole arrays and resume onto the mesh.
    ``mesh=None`` (default) is the single-device program.

    ``key`` is a PRNG key (``jax.random.key(seed)``), not an int seed; ``meta_params``,
    when given, must have the shapes of ``optimizer.meta_params_shapes`` (a learned
    optimizer's): both are checked here, naming the argument.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    input_checks.positive_int("checkpoint_every", checkpoint_every)
    key = input_checks.prng_key("key", key)
    if meta_params is not None:
        input_checks.meta_params("meta_params", meta_params, optimizer)
    if mesh is not None:
        check_mesh(mesh, config)
    state = init_state(key, task, optimizer, config, meta_params, meta_optimizer)
    if mesh is not None:
        state, task = shard_state(state, mesh), replicate(task, mesh)
    manager = None
    if checkpoint_dir is not None:
        import orbax.checkpoint as ocp

        checkpoint_dir = Path(checkpoint_dir).absolute()
        manager = ocp.CheckpointManager(
            checkpoint_dir,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        latest = manager.latest_step()
        if latest is not None:
            if not resume:
                manager.close()
                raise ValueError(
                    f"{checkpoint_dir} already holds checkpoints (latest: step {latest}); "
                    "pass resume=True to continue, or use a new directory."
                )
            state = restore_checkpoint(manager, state, config, latest)
        if metrics_path is None and jax.process_index() == 0:
            # one writer: in a multi-process run every process shares checkpoint_dir
            metrics_path = checkpoint_dir / "metrics.jsonl"
    start = int(host_value(state.step))
    if metrics_path is not None:
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            _truncate_jsonl(metrics_path, start)
        elif metrics_path.exists():
            metrics_path.unlink()
    step_fn = make_meta_step(optimizer, config, meta_optimizer, mesh)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    label = progress if isinstance(progress, str) else "meta-training"
    try:
        with tqdm(total=steps, initial=min(start, steps), desc=label, disable=not progress) as bar:
            for _ in range(start, steps):
                t_step = time.perf_counter()
                state, metrics = step_fn(state, task)
                record = {"step": int(host_value(state.step)), **_host_metrics(metrics)}
                now = time.perf_counter()
                record.update(step_time=now - t_step, time=now - t0)
                history.append(record)
                if metrics_path is not None:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record['meta_loss']:.4g}")
                if manager is not None and record["step"] % checkpoint_every == 0:
                    save_checkpoint(manager, state, config)
                if callback is not None:
                    callback(record["step"], record)
        if manager is not None and manager.latest_step() != int(host_value(state.step)):
            save_checkpoint(manager, state, config)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()
    return TruncatedResult(state=state, metrics=history)
