"""Figure 5 of Wang et al. (2021), and the claims of Figures 4-5 checked over seeds.

Not a new run: it reads the ``results.json`` of fig4a, fig4b and fig4c (``results``),
reports the training accuracy of the fig4b setting (Fig. 5: TbT fits the noisy labels,
TbV does not) and decides the four claims by the pre-registered one-sided paired tests of
:func:`experiments.mnist_report.claims` over meta-training seeds. Run it after the three
settings (``make figures`` does).
"""

import ml_collections


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.results = ml_collections.ConfigDict(
        {
            "fig4a": "results/fig4a/results.json",
            "fig4b": "results/fig4b/results.json",
            "fig4c": "results/fig4c/results.json",
        }
    )
    cfg.preset = preset
    return cfg
