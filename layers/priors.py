"""Prior initialisation of weights and biases (SPEC 9).

Means are drawn i.i.d. ``N(0, sigma_l^2)`` with the spectral scale
``sigma_l = min(1, sqrt(d_out / d_in)) / sqrt(d_in)``.  Variances:

* first (constant-input) layer: ``PRIOR_TARGET_VAR / d_in``;
* hidden layer, ``formula="code"`` (default, what produced the thesis results):
  ``(PRIOR_TARGET_VAR - min(1, d_out / d_in) * b) / (d_in * a + b)``;
* hidden layer, ``formula="thesis"``: ``(PRIOR_TARGET_VAR - min(1, d_out / d_in) * b) / (d_in * (a + b))``;
* biases: mean 0, variance ``PRIOR_BIAS_VAR``.

``a`` and ``b`` are the LeakyReLU(0.1) moment constants of :mod:`factorgraph.config`.
"""

import math

import numpy as np

from factorgraph import config
from factorgraph.gaussian import Gaussian


def spectral_scale(d_in, d_out):
    return min(1.0, math.sqrt(d_out / d_in)) / math.sqrt(d_in)


def weight_prior_var(d_in, d_out, first, formula="code"):
    """The prior variance of every weight of a layer (SPEC 9)."""
    if first:
        return config.PRIOR_TARGET_VAR / d_in
    num = config.PRIOR_TARGET_VAR - min(1.0, d_out / d_in) * config.PRIOR_B
    if formula == "code":
        return num / (d_in * config.PRIOR_A + config.PRIOR_B)
    if formula == "thesis":
        return num / (d_in * (config.PRIOR_A + config.PRIOR_B))
    raise ValueError(f"prior formula must be 'code' or 'thesis', got {formula!r}")


def weight_prior(shape, d_in, d_out, first, rng, dtype, options):
    """Gaussian prior of a weight tensor, honouring the overrides ``prior_mean``, ``prior_var``, ``prior``."""
    var = options.get("prior_var")
    if var is None:
        var = weight_prior_var(d_in, d_out, first, options.get("prior", "code"))
    mean = options.get("prior_mean")
    if mean is None:
        mean = rng.normal(0.0, spectral_scale(d_in, d_out), size=shape)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), shape)
    return Gaussian((mean / var).astype(dtype), np.full(shape, 1.0 / var, dtype))


def bias_prior(shape, dtype, options):
    """Gaussian prior of a bias vector: ``N(bias_prior_mean (0), bias_prior_var (0.5))``."""
    var = options.get("bias_prior_var", config.PRIOR_BIAS_VAR)
    mean = options.get("bias_prior_mean", 0.0)
    return Gaussian(np.full(shape, mean / var, dtype), np.full(shape, 1.0 / var, dtype))
