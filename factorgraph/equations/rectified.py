"""Moments of rectified and truncated Gaussians: ReLUMoment and Block52 (SPEC 3.1, 3.2).

ReLUMoment, for ``a ~ N(mu, var)`` and ``x = mu / sigma``::

    R1 = E[max(a, 0)]   = sigma phi(x) + mu Phi(x)
    R2 = E[max(a, 0)^2] = sigma mu phi(x) + (var + mu^2) Phi(x)

Block52, for two Gaussians with product ``N(mu_m, var_m)`` and normaliser
``Z = N(mu_1; mu_2, var_1 + var_2)`` (0 when either variance is infinite)::

    B_k = int_0^inf a^k N(a; mu_1, var_1) N(a; mu_2, var_2) da
    B_0 = Z Phi(mu_m / sigma_m),  B_1 = Z R1(mu_m, var_m),  B_2 = Z R2(mu_m, var_m)

:func:`block52_log` returns the same integral as ``(log B_0, B_1 / B_0, B_2 / B_0 - (B_1 / B_0)^2)``,
the log-mass and the mean and variance of the truncated product, computed without underflow or
cancellation; the LeakyReLU equations use that form.
"""

import math

import numpy as np


from factorgraph.backend import get_array_module, special
from factorgraph.gaussian import floor_truncation_factor, truncation_shift_and_factor

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def relu_moments(mu, var):
    """Return ``(R1, R2)``, the first two raw moments of ``max(a, 0)`` for ``a ~ N(mu, var)``.

    Computed as ``Phi(x)`` times the moments of ``a`` given ``a >= 0``: ``R1 = Phi(x) sigma (x + v)``,
    ``R2 = Phi(x) var (u + (x + v)^2)`` with ``x + v`` and ``u`` from
    :func:`~factorgraph.gaussian.truncation_shift_and_factor`, both terms non-negative.  The formulas in
    the module docstring are equal but cancel for ``x << 0`` (at ``mu = -165, var = 19`` they gave
    ``R2 = -2.0e-309``)."""
    xp = get_array_module(mu, var)
    sp = special(xp)
    sigma = xp.sqrt(var)
    x = mu / sigma
    shift, u = truncation_shift_and_factor(x, xp)
    with np.errstate(under="ignore"):
        cdf = xp.exp(sp.log_ndtr(x))
    return cdf * sigma * shift, cdf * var * (u + shift * shift)


def truncated_moments(mu, sigma, xp=np):
    """Mean and variance of ``N(mu, sigma^2)`` restricted to ``a >= 0``, plus ``log P(a >= 0)``.

    Uses ``v = phi(t) / Phi(t)`` from the log-cdf (t = mu / sigma): mean ``mu + sigma v``,
    variance ``sigma^2 (1 - v (v + t))``, by :func:`factorgraph.gaussian.truncation_shift_and_factor`; the factor is floored at ``MIN_TRUNCATION_FACTOR``
    (counted as ``"truncation_u_floor"``).
    """
    sp = special(xp)
    t = mu / sigma
    shift, u = truncation_shift_and_factor(t, xp)
    u = floor_truncation_factor(u, xp)
    return sigma * shift, sigma * sigma * u, sp.log_ndtr(t)


def block52_log(tau1, rho1, tau2, rho2):
    """Block52 of two Gaussians given in natural parameters, in stable form.

    Returns ``(log_b0, mean, var)``: ``log B_0`` (``-inf`` when either precision is 0) and the mean and
    variance of the product density restricted to ``a >= 0``.  Where ``log_b0 == -inf`` the moments are
    those of the other factor alone and carry no weight.
    """
    xp = get_array_module(tau1, tau2)
    rho_m = rho1 + rho2
    safe_m = xp.where(rho_m > 0, rho_m, 1)
    mu_m = (tau1 + tau2) / safe_m
    sigma_m = 1 / xp.sqrt(safe_m)
    # log Z = log N(mu1; mu2, 1/rho1 + 1/rho2), written with the harmonic precision h = rho1 rho2 / rho_m
    both = (rho1 > 0) & (rho2 > 0)
    h = xp.where(both, rho1 * rho2 / safe_m, 1)
    mu1 = tau1 / xp.where(rho1 > 0, rho1, 1)
    mu2 = tau2 / xp.where(rho2 > 0, rho2, 1)
    dmu = mu1 - mu2
    with np.errstate(divide="ignore"):
        log_z = xp.where(both, 0.5 * xp.log(h) - _LOG_SQRT_2PI - 0.5 * h * dmu * dmu, -xp.inf)
    mean, var, log_cdf = truncated_moments(mu_m, sigma_m, xp)
    return log_z + log_cdf, mean, var


def block52(mu1, var1, mu2, var2):
    """Return ``(B0, B1, B2)`` for ``N(mu1, var1)`` and ``N(mu2, var2)``; zero if either var is inf."""
    xp = get_array_module(mu1, mu2)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho1, rho2 = 1 / var1, 1 / var2
        log_b0, mean, var = block52_log(mu1 * rho1, rho1, mu2 * rho2, rho2)
    b0 = xp.exp(log_b0)
    return b0, b0 * mean, b0 * (var + mean * mean)
