"""Figure 4(c) of Wang et al. (2021); the setting is ``configs/fig4c.py``."""

from __future__ import annotations

import functools

from experiments import mnist_lopt, mnist_report

run = functools.partial(mnist_lopt.run_setting, "fig4c")
summarize = mnist_report.summary
