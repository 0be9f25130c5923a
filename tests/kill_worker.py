"""Worker of ``tests/test_kill_resume.py`` (not collected by pytest: no ``test_`` prefix).

``python tests/kill_worker.py OUT STEPS`` meta-trains the step size of gradient descent on
a small quadratic with truncated backprop for ``STEPS`` meta-steps in total, checkpoints
every 3 meta-steps into ``OUT/ckpt`` and resumes from there (``resume=True``), printing
each finished step on stdout. At the end it writes the final meta-parameters to
``OUT/final.npy``. The test SIGKILLs it at chosen moments and starts it again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import numpy as np

from l2l_jax import inner, tasks, truncated


def main(out: Path, steps: int) -> None:
    task = tasks.Quadratic.random(jax.random.key(0), dim=8, scale=0.5)
    gd = inner.gd()
    cfg = truncated.TruncatedConfig(
        horizon=12, segment=3, meta_batch=2, meta_lr=1e-2, eval_batch_size=None
    )

    def report(step, _record):
        print(step, flush=True)
        time.sleep(0.02)  # leave the killer a window between steps, not only during saves

    run = truncated.meta_train(
        task,
        gd,
        cfg,
        steps,
        key=jax.random.key(1),
        meta_params=gd.hparams(learning_rate=0.05),
        checkpoint_dir=out / "ckpt",
        checkpoint_every=3,
        resume=True,
        progress=False,
        callback=report,
    )
    np.save(out / "final.npy", np.asarray(run.meta_params))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
