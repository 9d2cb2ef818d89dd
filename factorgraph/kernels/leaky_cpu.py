"""Numba CPU kernels of the LeakyReLU factor, elementwise over a vector of units.

They compute the NumPy reference of :mod:`factorgraph.equations.leaky_relu` (moment matching, and the
marginal-approximation forward and backward with the same guardrails) element by element;
``tests/test_kernels_cpu.py`` asserts the equality.  ``counts`` indices are the ``L_*`` constants.
"""

import math

from numba import njit

from factorgraph import config
from factorgraph.kernels.scalar import block52_log, mixture, truncated

L_FWD_FALLBACK, L_BWD_CLAMP, L_BWD_FALLBACK, L_U_FLOOR, L_MIN_RHO = range(5)
GUARD_NAMES = ("leaky_forward_fallback", "leaky_backward_clamp", "leaky_backward_fallback",
               "truncation_u_floor", "min_rho_clamp")
LOG_MIN_MASS = math.log(config.MIN_TILTED_MASS)
GAIN = config.LEAKY_BACKWARD_MIN_GAIN
TINY = config.TINY_PRECISION
MIN_RHO = config.MIN_PRECISION


@njit(cache=True, inline="always")
def _moment_match(ta, ra, slope, counts):
    mu = ta / ra
    sigma = 1.0 / math.sqrt(ra)
    mp, vp, lp, f1 = truncated(mu, sigma)
    mn, vn, lq, f2 = truncated(-mu, sigma)
    counts[L_U_FLOOR] += f1 + f2
    mean, var, _ = mixture(lp, mp, vp, lq, -slope * mn, slope * slope * vn)
    return mean / var, 1.0 / var


@njit(cache=True)
def leaky_fwd_moment_match(a_t, a_r, slope, out_t, out_r, counts):
    for n in range(a_t.shape[0]):
        out_t[n], out_r[n] = _moment_match(a_t[n], a_r[n], slope, counts)


@njit(cache=True)
def leaky_fwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    for n in range(a_t.shape[0]):
        ta, ra, tz, rz = a_t[n], a_r[n], z_t[n], z_r[n]
        lw1, m1, v1, f1 = block52_log(ta, ra, tz, rz)
        lw2, m2, v2, f2 = block52_log(-tz, rz, -ta / slope, ra / (slope * slope))
        counts[L_U_FLOOR] += f1 + f2
        mean, var, log_m0 = mixture(lw1, m1, v1, lw2, -m2, v2)
        rho_hat = 1.0 / var if var == var else math.nan
        tau_hat = mean * rho_hat
        bad = (log_m0 < LOG_MIN_MASS or not math.isfinite(rho_hat) or not math.isfinite(tau_hat)
               or rho_hat < ra + rz)
        if bad:
            counts[L_FWD_FALLBACK] += 1
            out_t[n], out_r[n] = _moment_match(ta, ra, slope, counts)
        else:
            out_t[n] = tau_hat - tz
            out_r[n] = rho_hat - rz


@njit(cache=True)
def leaky_bwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Backward message to the input, then ``min_rho(MIN_PRECISION)`` as the layer applies it."""
    log_inv_slope = -math.log(slope)
    for n in range(a_t.shape[0]):
        ta, ra, tz, rz = a_t[n], a_r[n], z_t[n], z_r[n]
        lw1, m1, v1, f1 = block52_log(ta, ra, tz, rz)
        lw2, m2, v2, f2 = block52_log(-ta, ra, -slope * tz, slope * slope * rz)
        counts[L_U_FLOOR] += f1 + f2
        mean, var, _ = mixture(lw1, m1, v1, lw2 + log_inv_slope, -m2, v2)
        rho_hat = 1.0 / var if var == var else math.nan
        floor = ra + GAIN
        if rho_hat < floor:
            if math.isfinite(rho_hat):
                counts[L_BWD_CLAMP] += 1
            rho_hat = floor
        tau_hat = mean * rho_hat
        if not math.isfinite(rho_hat) or not math.isfinite(tau_hat) or (tz < 0 and rz < TINY):
            counts[L_BWD_FALLBACK] += 1
            t, r = 0.0, 0.0
        else:
            t, r = tau_hat - ta, rho_hat - ra
        if r < MIN_RHO:
            counts[L_MIN_RHO] += 1
            t = t / r * MIN_RHO if r > 0 else 0.0
            r = MIN_RHO
        out_t[n] = t
        out_r[n] = r
