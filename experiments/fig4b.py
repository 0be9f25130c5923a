"""Figure 4(b) of Wang et al. (2021); the setting is ``configs/fig4b.py``."""

from __future__ import annotations

import functools

from experiments import mnist_lopt, mnist_report

PAGE = "experiments/fig4.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 110

run = functools.partial(mnist_lopt.run_setting, "fig4b")
summarize = mnist_report.summary
