"""Figure 5 of Wang et al. (2021): training accuracy in the Figure 4(b) setting.

The same experiment as ``fig4b`` (``configs/fig4b.py``): 1000 digits, 20% label noise;
its summary leads with the training accuracy, which TbT drives towards 100% by fitting
the noisy labels while TbV does not.
"""

import ml_collections

from configs import fig4b


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    return fig4b.get_config(preset)
