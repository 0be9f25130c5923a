"""Figure 4(c) of Wang et al. (2021); the setting is ``configs/fig4c.py``."""

from __future__ import annotations

import functools

from experiments import mnist_lopt, mnist_report

PAGE = "experiments/fig4.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 120

run = functools.partial(mnist_lopt.run_setting, "fig4c")
summarize = mnist_report.summary
