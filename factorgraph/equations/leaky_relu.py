"""LeakyReLU factor ``z = max(a, 0) + slope * min(a, 0)``, ``0 < slope < 1`` (SPEC 5.4).

Interfaces: ``input`` a (forward message ``m_a``), ``output`` z (backward message ``m_z``).

* :func:`forward_moment_match` (prediction and fallback): the moments of ``z`` under ``m_a`` alone,
  ``E z = (1 - s) R1 + s mu_a``, ``E z^2 = (1 - s^2) R2 + s^2 (var_a + mu_a^2)``; computed as a
  mixture of the two truncated halves of ``m_a`` so no cancellation occurs.
* :func:`forward_marginal` (training): the marginal of z under ``m_a`` and ``m_z``, with tilted
  moments ``M_k = B_k(mu_a, var_a, mu_z, var_z) + (-1)^k B_k(-mu_z, var_z, -s mu_a, s^2 var_a)``
  (the code-verified formula; the thesis-printed one is wrong), divided by ``m_z``.
* :func:`backward_marginal` (training): the marginal of a, with
  ``M_k = B_k(mu_a, var_a, mu_z, var_z) + (-1)^k (1/s) B_k(-mu_a, var_a, -mu_z/s, var_z/s^2)``,
  precision floored at ``rho_a + LEAKY_BACKWARD_MIN_GAIN``, divided by ``m_a``.

Guardrails (counted in :mod:`factorgraph.guards`):

* ``"leaky_forward_fallback"``: forward uses moment matching where ``M0 < MIN_TILTED_MASS``, the
  marginal is NaN, or its precision is below ``rho_a + rho_z``.
* ``"leaky_backward_clamp"``: backward marginal precision raised to ``rho_a + LEAKY_BACKWARD_MIN_GAIN``.
* ``"leaky_backward_fallback"``: backward gives ``G(0, 0)`` where the marginal is not finite or
  ``tau_z < 0`` and ``rho_z < TINY_PRECISION``.
"""

import math

import numpy as np

from factorgraph import config, guards
from factorgraph.backend import get_array_module
from factorgraph.equations.rectified import block52_log, truncated_moments
from factorgraph.gaussian import Gaussian


def _check_slope(slope):
    if not 0 < slope < 1:
        raise ValueError(f"LeakyReLU slope must be in (0, 1), got {slope}")


def _mixture(lw1, m1, v1, lw2, m2, v2):
    """Mean, variance and log-mass of the mixture with log-weights lw1, lw2."""
    xp = get_array_module(m1)
    log_m0 = xp.logaddexp(lw1, lw2)
    with np.errstate(invalid="ignore"):
        w1 = xp.exp(lw1 - log_m0)
        w2 = xp.exp(lw2 - log_m0)
    dm = m1 - m2
    return w1 * m1 + w2 * m2, w1 * v1 + w2 * v2 + w1 * w2 * dm * dm, log_m0


def forward_moment_match(m_a, slope):
    """Moment-matched output message of LeakyReLU given the input message ``m_a`` (needs rho_a > 0)."""
    _check_slope(slope)
    xp = m_a.xp
    mu, sigma = m_a.mean, 1 / xp.sqrt(m_a.rho)
    mp, vp, log_p = truncated_moments(mu, sigma, xp)  # a > 0 half
    mn, vn, log_q = truncated_moments(-mu, sigma, xp)  # -a for the a < 0 half
    mean, var, _ = _mixture(log_p, mp, vp, log_q, -slope * mn, slope * slope * vn)
    return Gaussian(mean / var, 1 / var)


def forward_marginal(m_a, m_z, slope):
    """Training forward message of LeakyReLU by marginal approximation of the output (SPEC 5.4 b)."""
    _check_slope(slope)
    xp = m_a.xp
    lw1, m1, v1 = block52_log(m_a.tau, m_a.rho, m_z.tau, m_z.rho)
    lw2, m2, v2 = block52_log(-m_z.tau, m_z.rho, -m_a.tau / slope, m_a.rho / (slope * slope))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, var, log_m0 = _mixture(lw1, m1, v1, lw2, -m2, v2)
        rho_hat = 1 / var
        tau_hat = mean * rho_hat
    bad = (
        (log_m0 < np.log(config.MIN_TILTED_MASS))
        | ~xp.isfinite(rho_hat)
        | ~xp.isfinite(tau_hat)
        | (rho_hat < m_a.rho + m_z.rho)
    )
    msg = Gaussian(tau_hat - m_z.tau, rho_hat - m_z.rho)
    if bool(xp.any(bad)):
        guards.record("leaky_forward_fallback", bad)
        fb = forward_moment_match(m_a, slope)
        msg = Gaussian(xp.where(bad, fb.tau, msg.tau), xp.where(bad, fb.rho, msg.rho))
    return msg


def backward_marginal(m_a, m_z, slope):
    """Training backward message of LeakyReLU to its input by marginal approximation (SPEC 5.4 c)."""
    _check_slope(slope)
    xp = m_a.xp
    lw1, m1, v1 = block52_log(m_a.tau, m_a.rho, m_z.tau, m_z.rho)
    lw2, m2, v2 = block52_log(-m_a.tau, m_a.rho, -slope * m_z.tau, slope * slope * m_z.rho)
    lw2 = lw2 - math.log(slope)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, var, _ = _mixture(lw1, m1, v1, lw2, -m2, v2)
        rho_hat = 1 / var
    floor = m_a.rho + config.LEAKY_BACKWARD_MIN_GAIN
    low = rho_hat < floor
    guards.record("leaky_backward_clamp", low & xp.isfinite(rho_hat))
    rho_hat = xp.where(low, floor, rho_hat)
    with np.errstate(invalid="ignore"):
        tau_hat = mean * rho_hat
    bad = (
        ~xp.isfinite(rho_hat)
        | ~xp.isfinite(tau_hat)
        | ((m_z.tau < 0) & (m_z.rho < config.TINY_PRECISION))
    )
    tau = tau_hat - m_a.tau
    rho = rho_hat - m_a.rho
    if bool(xp.any(bad)):
        guards.record("leaky_backward_fallback", bad)
        tau = xp.where(bad, 0, tau)
        rho = xp.where(bad, 0, rho)
    return Gaussian(tau, rho)
