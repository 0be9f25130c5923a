"""Analyses of training dynamics: the eigenvalues of an optimizer's step
(:mod:`.stability`, Harrison et al. 2022)."""
