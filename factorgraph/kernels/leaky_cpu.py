"""Numba CPU kernels of the LeakyReLU factor, elementwise over a vector of units.

The per-element functions (``*_one``) compute the NumPy reference of
:mod:`factorgraph.equations.leaky_relu` (moment matching, and the marginal-approximation forward and
backward with the same guardrails) for one unit; the CPU kernels loop over units and the CUDA kernels
(:mod:`factorgraph.kernels.leaky_cuda`) run one thread per unit on device-compiled copies of the same
functions.  ``tests/test_kernels_cpu.py`` asserts equality with the reference.  ``counts`` indices are the
``L_*`` constants.
"""

import math

import numpy as np

from numba import njit, prange

from factorgraph import config
from factorgraph.kernels import use_threads
from factorgraph.gaussian import CF_T
from factorgraph.kernels.scalar import (LOG_SQRT_2PI, MIN_NORMAL, MIN_U, NEGLIGIBLE_LOG_WEIGHT, SQRT1_2,
                                       block52_log_weight, block52_moments, block52_parts, block52_prep, mixture,
                                       mixture_exponent, mixture_with, shift_and_factor_from)
from factorgraph.kernels.vecmath import erfc_map, exp_map, log1p_map, log_map

L_FWD_FALLBACK, L_BWD_CLAMP, L_BWD_FALLBACK, L_U_FLOOR, L_MIN_RHO = range(5)
GUARD_NAMES = ("leaky_forward_fallback", "leaky_backward_clamp", "leaky_backward_fallback",
               "truncation_u_floor", "min_rho_clamp")
LOG_MIN_MASS = math.log(config.MIN_TILTED_MASS)
GAIN = config.LEAKY_BACKWARD_MIN_GAIN
TINY = config.TINY_PRECISION
MIN_RHO = config.MIN_PRECISION


@njit(cache=True, inline="always")
def moment_match_t(ta, ra):
    """``(t, sigma)`` of input (ta, ra): ``t = mu / sigma``."""
    sigma = 1.0 / math.sqrt(ra)
    return ta / ra / sigma, sigma


@njit(cache=True, inline="always")
def moment_match_one(ta, ra, slope):
    """Moment-matched output (tau, rho, u-floors) for input (ta, ra).

    The reference mixes the truncations of ``N(mu, sigma^2)`` to ``a >= 0`` (mass ``Phi(t)``, ``t = mu /
    sigma``) and to ``a < 0`` (mass ``Phi(-t)``, scaled by ``-slope``) with log-weights; here the two masses
    come from one ``erfc`` of ``|t|`` (the small tail ``e`` and ``1 - e``), ``phi(t)`` from one ``exp``,
    and the weights are the masses themselves (they sum to 1): the same numbers with two transcendental
    calls instead of eight."""
    t, sigma = moment_match_t(ta, ra)
    return moment_match_from(t, sigma, slope, 0.5 * math.erfc(abs(t) * SQRT1_2),
                             math.exp(-0.5 * t * t - LOG_SQRT_2PI))


@njit(cache=True, inline="always")
def moment_match_from(t, sigma, slope, tail, phi):
    """:func:`moment_match_one` given ``tail = erfc(|t| / sqrt 2) / 2`` and ``phi = phi(t)``."""
    w_pos = 1.0 - tail if t >= 0 else tail
    w_neg = tail if t >= 0 else 1.0 - tail
    sp, up = shift_and_factor_from(t, phi, w_pos)
    sn, un = shift_and_factor_from(-t, phi, w_neg)
    f = 0
    if up < MIN_U:
        up = MIN_U
        f += 1
    if un < MIN_U:
        un = MIN_U
        f += 1
    m1 = sigma * sp
    m2 = -slope * sigma * sn
    dm = m1 - m2
    mean = w_pos * m1 + w_neg * m2
    var = sigma * sigma * (w_pos * up + w_neg * slope * slope * un) + w_pos * w_neg * dm * dm
    return mean / var, 1.0 / var, f


@njit(cache=True, inline="always")
def fwd_from_mixture(ta, ra, tz, rz, slope, mean, var, log_m0):
    """Training forward (tau, rho, fallback?, u-floors of the fallback) from the tilted mixture's moments and
    log mass: the marginal minus the backward message, or moment matching where the mass is below
    ``MIN_TILTED_MASS``, the marginal is not finite or not tighter than the two messages."""
    rho_hat = 1.0 / var if var == var else math.nan
    tau_hat = mean * rho_hat
    if (log_m0 < LOG_MIN_MASS or not math.isfinite(rho_hat) or not math.isfinite(tau_hat)
            or rho_hat < ra + rz):
        t, r, f = moment_match_one(ta, ra, slope)
        return t, r, 1, f
    return tau_hat - tz, rho_hat - rz, 0, 0


@njit(cache=True, inline="always")
def fwd_marginal_one(ta, ra, tz, rz, slope):
    """Training forward (tau, rho, fallback?, u-floors) of one unit."""
    lw1, t1, s1, p1 = block52_parts(ta, ra, tz, rz)
    lw2, t2, s2, p2 = block52_parts(-tz, rz, -ta / slope, ra / (slope * slope))
    m1, v1, f1 = block52_moments(t1, s1, p1, lw1 < lw2 - NEGLIGIBLE_LOG_WEIGHT)
    m2, v2, f2 = block52_moments(t2, s2, p2, lw2 < lw1 - NEGLIGIBLE_LOG_WEIGHT)
    mean, var, log_m0 = mixture(lw1, m1, v1, lw2, -m2, v2)
    t, r, fb, f3 = fwd_from_mixture(ta, ra, tz, rz, slope, mean, var, log_m0)
    return t, r, fb, f1 + f2 + f3


@njit(cache=True, inline="always")
def bwd_from_mixture(ta, ra, tz, rz, mean, var):
    """Backward message (tau, rho) to the input from the tilted mixture's moments, then
    min_rho(MIN_PRECISION), with the flags (clamped?, fallback?, min_rho?)."""
    rho_hat = 1.0 / var if var == var else math.nan
    floor = ra + GAIN
    clamped = 0
    if rho_hat < floor:
        if math.isfinite(rho_hat):
            clamped = 1
        rho_hat = floor
    tau_hat = mean * rho_hat
    fallback = 0
    if not math.isfinite(rho_hat) or not math.isfinite(tau_hat) or (tz < 0 and rz < TINY):
        fallback = 1
        t, r = 0.0, 0.0
    else:
        t, r = tau_hat - ta, rho_hat - ra
    low = 0
    if r < MIN_RHO:
        low = 1
        t = t / r * MIN_RHO if r > 0 else 0.0
        r = MIN_RHO
    return t, r, clamped, fallback, low


@njit(cache=True, inline="always")
def bwd_marginal_one(ta, ra, tz, rz, slope):
    """Backward message (tau, rho) to the input of one unit, then min_rho(MIN_PRECISION), with the
    flags (clamped?, fallback?, u-floors, min_rho?)."""
    lw1, t1, s1, p1 = block52_parts(ta, ra, tz, rz)
    lw2, t2, s2, p2 = block52_parts(-ta, ra, -slope * tz, slope * slope * rz)
    lw2 -= math.log(slope)
    m1, v1, f1 = block52_moments(t1, s1, p1, lw1 < lw2 - NEGLIGIBLE_LOG_WEIGHT)
    m2, v2, f2 = block52_moments(t2, s2, p2, lw2 < lw1 - NEGLIGIBLE_LOG_WEIGHT)
    mean, var, _ = mixture(lw1, m1, v1, lw2, -m2, v2)
    t, r, clamped, fallback, low = bwd_from_mixture(ta, ra, tz, rz, mean, var)
    return t, r, clamped, fallback, f1 + f2, low


#: inside :func:`factorgraph.kernels.threaded` (prediction and batched sweeps), kernels over at least this
#: many units run on all threads; elsewhere (the per-example schedules) on one
THREADS_MIN = 2048
#: the threaded kernels split the units into this many blocks, each run by the serial loop
BLOCKS = 64
#: units per tile of the serial kernels (a multiple of 4; their scratch rows stay in the L1 cache)
TILE = 64


@njit(cache=True, error_model="numpy")
def _moment_match_serial(a_t, a_r, slope, out_t, out_r):
    """:func:`moment_match_one` of all units, its erfc and exp four lanes at a time over tiles of ``TILE``."""
    n = a_t.shape[0]
    w = np.empty((4, TILE))
    floors = 0
    for lo in range(0, n, TILE):
        m = min(TILE, n - lo)
        m4 = (m + 3) // 4 * 4
        for i in range(m4):
            t, sigma = moment_match_t(np.float64(a_t[lo + i]), np.float64(a_r[lo + i])) if i < m else (0.0, 1.0)
            w[0, i], w[1, i] = t, sigma
            w[2, i], w[3, i] = abs(t) * SQRT1_2, -0.5 * t * t - LOG_SQRT_2PI
        erfc_map(w[2], w[2], m4)
        exp_map(w[3], w[3], m4)
        for i in range(m):
            out_t[lo + i], out_r[lo + i], f = moment_match_from(w[0, i], w[1, i], slope, 0.5 * w[2, i], w[3, i])
            floors += f
    return floors


@njit(cache=True, parallel=True)
def _moment_match_threads(a_t, a_r, slope, out_t, out_r):
    """:func:`_moment_match_serial` over ``BLOCKS`` blocks of units on all threads."""
    n = a_t.shape[0]
    size = (n + BLOCKS - 1) // BLOCKS
    floors = np.zeros(BLOCKS, np.int64)
    for b in prange(BLOCKS):
        lo, hi = min(n, b * size), min(n, (b + 1) * size)
        floors[b] = _moment_match_serial(a_t[lo:hi], a_r[lo:hi], slope, out_t[lo:hi], out_r[lo:hi])
    return floors.sum()


def leaky_fwd_moment_match(a_t, a_r, slope, out_t, out_r, counts):
    """Moment-matched outputs of all units (on all threads inside :func:`factorgraph.kernels.threaded`,
    i.e. prediction, from ``THREADS_MIN`` units)."""
    fn = _moment_match_threads if use_threads(a_t.shape[0], THREADS_MIN) else _moment_match_serial
    counts[L_U_FLOOR] += fn(a_t, a_r, slope, out_t, out_r)


_PT1, _PS1, _PH1, _PQ1, _PT2, _PS2, _PH2, _PQ2, _ERF1, _ERF2, _PHI1, _PHI2, _LOG1, _LOG2, _EXP, _LP = range(16)


@njit(cache=True, inline="always")
def _load(a_t, a_r, z_t, z_r, n):
    f64 = np.float64  # float32 messages are computed in float64 (the float32 reference rounds to float32)
    return f64(a_t[n]), f64(a_r[n]), f64(z_t[n]), f64(z_r[n])


@njit(cache=True, error_model="numpy")
def _marginal_serial(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """Training forward (``backward=False``) or backward messages of all units, ``fwd_marginal_one`` /
    ``bwd_marginal_one`` unit by unit but with their transcendental calls made four lanes at a time
    (:mod:`factorgraph.kernels.vecmath`) over tiles of ``TILE`` units: per tile the two truncation blocks'
    ``block52_prep``, then erfc and exp of all, the log of ``sqrt(h) Phi``, the scalar moments (continued
    fraction in the tails), exp (and log1p) of the mixture exponents, the scalar finish.  Returns the guard
    counts (forward: fallbacks, u-floors; backward: clamps, fallbacks, u-floors, min_rho)."""
    n = a_t.shape[0]
    w = np.empty((16, TILE))
    lw = np.empty((6, TILE))
    acc = np.zeros(4, np.int64)
    inv_s2 = 1.0 / (slope * slope)
    log_slope = math.log(slope)
    for lo in range(0, n, TILE):
        m = min(TILE, n - lo)
        m4 = (m + 3) // 4 * 4
        for i in range(m4):
            if i < m:
                ta, ra, tz, rz = _load(a_t, a_r, z_t, z_r, lo + i)
                t1, s1, h1, q1 = block52_prep(ta, ra, tz, rz)
                if backward:
                    t2, s2, h2, q2 = block52_prep(-ta, ra, -slope * tz, slope * slope * rz)
                else:
                    t2, s2, h2, q2 = block52_prep(-tz, rz, -ta / slope, ra * inv_s2)
            else:  # padding lanes: finite values, results unused
                t1, s1, h1, q1, t2, s2, h2, q2 = 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0
            w[_PT1, i], w[_PS1, i], w[_PH1, i], w[_PQ1, i] = t1, s1, h1, q1
            w[_PT2, i], w[_PS2, i], w[_PH2, i], w[_PQ2, i] = t2, s2, h2, q2
            w[_ERF1, i], w[_ERF2, i] = -t1 * SQRT1_2, -t2 * SQRT1_2
            w[_PHI1, i], w[_PHI2, i] = -0.5 * t1 * t1 - LOG_SQRT_2PI, -0.5 * t2 * t2 - LOG_SQRT_2PI
        erfc_map(w[_ERF1], w[_ERF1], m4)
        erfc_map(w[_ERF2], w[_ERF2], m4)
        exp_map(w[_PHI1], w[_PHI1], m4)
        exp_map(w[_PHI2], w[_PHI2], m4)
        for i in range(m4):
            shm1 = math.sqrt(w[_PH1, i]) * (0.5 * w[_ERF1, i])
            shm2 = math.sqrt(w[_PH2, i]) * (0.5 * w[_ERF2, i])
            w[_LOG1, i] = shm1 if shm1 >= MIN_NORMAL else 1.0
            w[_LOG2, i] = shm2 if shm2 >= MIN_NORMAL else 1.0
        log_map(w[_LOG1], w[_LOG1], m4)
        log_map(w[_LOG2], w[_LOG2], m4)
        for i in range(m4):
            t1, t2 = w[_PT1, i], w[_PT2, i]
            mass1, mass2 = 0.5 * w[_ERF1, i], 0.5 * w[_ERF2, i]
            lw1 = block52_log_weight(t1, w[_PH1, i], w[_PQ1, i], math.sqrt(w[_PH1, i]) * mass1, w[_LOG1, i])
            lw2 = block52_log_weight(t2, w[_PH2, i], w[_PQ2, i], math.sqrt(w[_PH2, i]) * mass2, w[_LOG2, i])
            if backward:
                lw2 -= log_slope
            p1 = w[_PHI1, i] / mass1 if t1 >= -CF_T else math.nan
            p2 = w[_PHI2, i] / mass2 if t2 >= -CF_T else math.nan
            m1, v1, f1 = block52_moments(t1, w[_PS1, i], p1, lw1 < lw2 - NEGLIGIBLE_LOG_WEIGHT)
            m2, v2, f2 = block52_moments(t2, w[_PS2, i], p2, lw2 < lw1 - NEGLIGIBLE_LOG_WEIGHT)
            if i < m:
                acc[2 if backward else 1] += f1 + f2
            lw[0, i], lw[1, i], lw[2, i], lw[3, i], lw[4, i], lw[5, i] = lw1, m1, v1, lw2, -m2, v2
            w[_EXP, i] = mixture_exponent(lw1, lw2)
        exp_map(w[_EXP], w[_EXP], m4)
        if not backward:
            log1p_map(w[_EXP], w[_LP], m4)
        for i in range(m):
            ta, ra, tz, rz = _load(a_t, a_r, z_t, z_r, lo + i)
            mean, var, log_m0 = mixture_with(lw[0, i], lw[1, i], lw[2, i], lw[3, i], lw[4, i], lw[5, i], w[_EXP, i],
                                             0.0 if backward else w[_LP, i])
            if backward:
                t, r, c, fb, low = bwd_from_mixture(ta, ra, tz, rz, mean, var)
                acc[0] += c
                acc[1] += fb
                acc[3] += low
            else:
                t, r, fb, f = fwd_from_mixture(ta, ra, tz, rz, slope, mean, var, log_m0)
                acc[0] += fb
                acc[1] += f
            out_t[lo + i] = t
            out_r[lo + i] = r
    return acc


@njit(cache=True, parallel=True)
def _marginal_threads(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """:func:`_marginal_serial` over ``BLOCKS`` blocks of units on all threads (summed guard counts)."""
    n = a_t.shape[0]
    size = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros((BLOCKS, 4), np.int64)
    for b in prange(BLOCKS):
        lo, hi = min(n, b * size), min(n, (b + 1) * size)
        acc[b] = _marginal_serial(backward, a_t[lo:hi], a_r[lo:hi], z_t[lo:hi], z_r[lo:hi], slope, out_t[lo:hi],
                                  out_r[lo:hi])
    return acc.sum(axis=0)


def _marginal(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    fn = _marginal_threads if use_threads(a_t.shape[0], THREADS_MIN) else _marginal_serial
    return fn(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r)


def leaky_fwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Training forward of all units given their backward messages ``z`` (on all threads inside
    :func:`factorgraph.kernels.threaded`, i.e. batched sweeps and prediction, from ``THREADS_MIN`` units)."""
    fb, f = _marginal(False, a_t, a_r, z_t, z_r, slope, out_t, out_r)[:2]
    counts[L_FWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f


def leaky_bwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Backward message to the input, then ``min_rho(MIN_PRECISION)`` as the layer applies it (threads as
    :func:`leaky_fwd_marginal`)."""
    c, fb, f, low = _marginal(True, a_t, a_r, z_t, z_r, slope, out_t, out_r)
    counts[L_BWD_CLAMP] += c
    counts[L_BWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f
    counts[L_MIN_RHO] += low
