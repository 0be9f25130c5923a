"""Figure 5 of Wang et al. (2021): training accuracy in the Figure 4(b) setting.

The same run as ``fig4b``; the summary leads with the final training accuracy.
"""

from __future__ import annotations

import functools

from l2l_jax.experiments import mnist_lopt

run = functools.partial(mnist_lopt.run_setting, "fig5")


def summarize(results: dict) -> str:
    lines = ["final training accuracy (%, mean over runs; noisy labels included):"]
    for r in results["optimizers"].values():
        lines.append(f"  {r['label']}: {100 * r['train_acc']['final']['mean']:.1f}")
    return "\n".join(lines) + "\n\n" + mnist_lopt.summary(results)
