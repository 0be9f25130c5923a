"""Closed forms and references: the exact meta-objectives and meta-gradients of GD on
quadratics and least squares, in log space (:mod:`.spectral`, :mod:`.spectral_ls`), the
log-space numerics they rest on (:mod:`.numerics`), and the mpmath references the tests
and experiments compare against (:mod:`.reference`)."""
