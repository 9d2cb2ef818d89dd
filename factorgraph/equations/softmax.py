"""Softmax prediction by the probit approximation (SPEC 3.3, 5.9).

``p = softmax(t)`` with ``t_i = mu_i / sqrt(1 + (pi / 8) var_i)``.
"""

from factorgraph import config


def probit_scaled_means(m):
    """``t_i = mu_i / sqrt(1 + pi var_i / 8)``, written ``mu_i / sqrt(1 + pi / (8 rho_i))``."""
    xp = m.xp
    return m.mean / xp.sqrt(1 + config.PROBIT * m.var)


def probit_softmax(m):
    """Class probabilities over the last axis of the logit messages ``m`` (..., C)."""
    xp = m.xp
    t = probit_scaled_means(m)
    t = t - t.max(axis=-1, keepdims=True)
    e = xp.exp(t)
    return e / e.sum(axis=-1, keepdims=True)
