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
from factorgraph.kernels.scalar import (LOG_SQRT_2PI, MIN_U, NEGLIGIBLE_LOG_WEIGHT, SQRT1_2, block52_moments,
                                       block52_parts, mixture, shift_and_factor_from)

L_FWD_FALLBACK, L_BWD_CLAMP, L_BWD_FALLBACK, L_U_FLOOR, L_MIN_RHO = range(5)
GUARD_NAMES = ("leaky_forward_fallback", "leaky_backward_clamp", "leaky_backward_fallback",
               "truncation_u_floor", "min_rho_clamp")
LOG_MIN_MASS = math.log(config.MIN_TILTED_MASS)
GAIN = config.LEAKY_BACKWARD_MIN_GAIN
TINY = config.TINY_PRECISION
MIN_RHO = config.MIN_PRECISION


@njit(cache=True, inline="always")
def moment_match_one(ta, ra, slope):
    """Moment-matched output (tau, rho, u-floors) for input (ta, ra).

    The reference mixes the truncations of ``N(mu, sigma^2)`` to ``a >= 0`` (mass ``Phi(t)``, ``t = mu /
    sigma``) and to ``a < 0`` (mass ``Phi(-t)``, scaled by ``-slope``) with log-weights; here the two masses
    come from one ``erfc`` of ``|t|`` (the small tail ``e`` and ``1 - e``), ``phi(t)`` from one ``exp``,
    and the weights are the masses themselves (they sum to 1): the same numbers with two transcendental
    calls instead of eight."""
    mu = ta / ra
    sigma = 1.0 / math.sqrt(ra)
    t = mu / sigma
    tail = 0.5 * math.erfc(abs(t) * SQRT1_2)
    w_pos = 1.0 - tail if t >= 0 else tail
    w_neg = tail if t >= 0 else 1.0 - tail
    phi = math.exp(-0.5 * t * t - LOG_SQRT_2PI)
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
def fwd_marginal_one(ta, ra, tz, rz, slope):
    """Training forward (tau, rho, fallback?, u-floors) of one unit."""
    lw1, t1, s1, p1 = block52_parts(ta, ra, tz, rz)
    lw2, t2, s2, p2 = block52_parts(-tz, rz, -ta / slope, ra / (slope * slope))
    m1, v1, f1 = block52_moments(t1, s1, p1, lw1 < lw2 - NEGLIGIBLE_LOG_WEIGHT)
    m2, v2, f2 = block52_moments(t2, s2, p2, lw2 < lw1 - NEGLIGIBLE_LOG_WEIGHT)
    mean, var, log_m0 = mixture(lw1, m1, v1, lw2, -m2, v2)
    rho_hat = 1.0 / var if var == var else math.nan
    tau_hat = mean * rho_hat
    if (log_m0 < LOG_MIN_MASS or not math.isfinite(rho_hat) or not math.isfinite(tau_hat)
            or rho_hat < ra + rz):
        t, r, f3 = moment_match_one(ta, ra, slope)
        return t, r, 1, f1 + f2 + f3
    return tau_hat - tz, rho_hat - rz, 0, f1 + f2


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
    return t, r, clamped, fallback, f1 + f2, low


#: inside :func:`factorgraph.kernels.threaded` (prediction and batched sweeps), kernels over at least this
#: many units run on all threads; elsewhere (the per-example schedules) on one
THREADS_MIN = 2048
#: the threaded kernels split the units into this many blocks, each run by the serial loop
BLOCKS = 64


@njit(cache=True)
def _moment_match_serial(a_t, a_r, slope, out_t, out_r):
    floors = 0
    for n in range(a_t.shape[0]):
        out_t[n], out_r[n], f = moment_match_one(np.float64(a_t[n]), np.float64(a_r[n]), slope)
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


@njit(cache=True, inline="always")
def _fwd_at(a_t, a_r, z_t, z_r, slope, out_t, out_r, n):
    f64 = np.float64  # float32 messages are computed in float64 (the float32 reference rounds to float32)
    out_t[n], out_r[n], fb, f = fwd_marginal_one(f64(a_t[n]), f64(a_r[n]), f64(z_t[n]), f64(z_r[n]), slope)
    return fb, f


@njit(cache=True)
def _fwd_serial(a_t, a_r, z_t, z_r, slope, out_t, out_r):
    fbs = fs = 0
    for n in range(a_t.shape[0]):
        fb, f = _fwd_at(a_t, a_r, z_t, z_r, slope, out_t, out_r, n)
        fbs += fb
        fs += f
    return fbs, fs


def leaky_fwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Training forward of all units given their backward messages ``z`` (on all threads inside
    :func:`factorgraph.kernels.threaded`, i.e. batched sweeps and prediction, from ``THREADS_MIN`` units)."""
    args = (a_t, a_r, z_t, z_r, slope, out_t, out_r)
    fb, f = _marginal_threads(False, *args)[:2] if use_threads(a_t.shape[0], THREADS_MIN) else _fwd_serial(*args)
    counts[L_FWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f


@njit(cache=True, inline="always")
def _bwd_at(a_t, a_r, z_t, z_r, slope, out_t, out_r, n):
    f64 = np.float64
    out_t[n], out_r[n], c, fb, f, low = bwd_marginal_one(f64(a_t[n]), f64(a_r[n]), f64(z_t[n]), f64(z_r[n]), slope)
    return c, fb, f, low


@njit(cache=True)
def _bwd_serial(a_t, a_r, z_t, z_r, slope, out_t, out_r):
    cs = fbs = fs = lows = 0
    for n in range(a_t.shape[0]):
        c, fb, f, low = _bwd_at(a_t, a_r, z_t, z_r, slope, out_t, out_r, n)
        cs += c
        fbs += fb
        fs += f
        lows += low
    return cs, fbs, fs, lows


@njit(cache=True, parallel=True)
def _marginal_threads(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """The serial loop of the forward (``backward=False``) or backward marginals over ``BLOCKS`` blocks of
    units on all threads; returns the summed guard counts (forward: the first two)."""
    n = a_t.shape[0]
    size = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros((BLOCKS, 4), np.int64)
    for b in prange(BLOCKS):
        lo, hi = min(n, b * size), min(n, (b + 1) * size)
        args = (a_t[lo:hi], a_r[lo:hi], z_t[lo:hi], z_r[lo:hi], slope, out_t[lo:hi], out_r[lo:hi])
        if backward:
            acc[b, 0], acc[b, 1], acc[b, 2], acc[b, 3] = _bwd_serial(*args)
        else:
            acc[b, 0], acc[b, 1] = _fwd_serial(*args)
    return acc.sum(axis=0)


def leaky_bwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Backward message to the input, then ``min_rho(MIN_PRECISION)`` as the layer applies it (threads as
    :func:`leaky_fwd_marginal`)."""
    args = (a_t, a_r, z_t, z_r, slope, out_t, out_r)
    c, fb, f, low = _marginal_threads(True, *args) if use_threads(a_t.shape[0], THREADS_MIN) else _bwd_serial(*args)
    counts[L_BWD_CLAMP] += c
    counts[L_BWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f
    counts[L_MIN_RHO] += low
