"""Benchmarks for l2l_jax: ``python -m benchmarks.run --preset cpu-small`` (``make bench``).

Time per meta-gradient, compile time, XLA's memory estimate and accuracy against the
mpmath reference, for each meta-gradient method over unroll lengths ``t``. Results are
written as JSON, a markdown table and a plot under ``benchmarks/results/``.
"""
