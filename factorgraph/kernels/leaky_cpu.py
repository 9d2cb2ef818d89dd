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
from factorgraph.gaussian import TAIL_T
from factorgraph.kernels import use_threads
from factorgraph.kernels.scalar import (
    LOG_SQRT_2PI, MIN_NORMAL, MIN_U, NEGLIGIBLE_LOG_WEIGHT, SQRT1_2, block52_log_weight, block52_moments,
    block52_parts, block52_prep, block52_prep_fast, erfc_log_weight_ok, floored_moments, mixture,
    mixture_exponent, mixture_with, shift_and_factor_from, tail_moments)
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
def moment_match_args(ta, ra):
    """``(t, sigma)`` of :func:`moment_match_t` and the arguments of the erfc and exp that
    :func:`moment_match_from` needs (``|t| / sqrt 2`` and ``-t^2 / 2 - log sqrt(2 pi)``), for kernels
    that call them several lanes at a time."""
    t, sigma = moment_match_t(ta, ra)
    return t, sigma, abs(t) * SQRT1_2, -0.5 * t * t - LOG_SQRT_2PI


@njit(cache=True, inline="always")
def moment_match_one(ta, ra, slope):
    """Moment-matched output (tau, rho, u-floors) for input (ta, ra).

    The reference mixes the truncations of ``N(mu, sigma^2)`` to ``a >= 0`` (mass ``Phi(t)``, ``t = mu /
    sigma``) and to ``a < 0`` (mass ``Phi(-t)``, scaled by ``-slope``) with log-weights; here the two masses
    come from one ``erfc`` of ``|t|`` (the small tail ``e`` and ``1 - e``), ``phi(t)`` from one ``exp``,
    and the weights are the masses themselves (they sum to 1): the same numbers with two transcendental
    calls instead of eight."""
    t, sigma, erfc_arg, exp_arg = moment_match_args(ta, ra)
    return moment_match_from(t, sigma, slope, 0.5 * math.erfc(erfc_arg), math.exp(exp_arg))


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
def fwd_needs_fallback(ra, rz, rho_hat, tau_hat, log_m0):
    """The training forward falls back to moment matching where the tilted mass is below
    ``MIN_TILTED_MASS``, the marginal ``(tau_hat, rho_hat)`` is not finite or not tighter than the two
    messages."""
    return ((log_m0 < LOG_MIN_MASS) | (not math.isfinite(rho_hat)) | (not math.isfinite(tau_hat))
            | (rho_hat < ra + rz))


@njit(cache=True, inline="always")
def fwd_from_mixture(ta, ra, tz, rz, slope, mean, var, log_m0):
    """Training forward (tau, rho, fallback?, u-floors of the fallback) from the tilted mixture's moments and
    log mass: the marginal minus the backward message, or moment matching (:func:`fwd_needs_fallback`)."""
    rho_hat = 1.0 / var if var == var else math.nan
    tau_hat = mean * rho_hat
    if fwd_needs_fallback(ra, rz, rho_hat, tau_hat, log_m0):
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
            ta, ra = (np.float64(a_t[lo + i]), np.float64(a_r[lo + i])) if i < m else (0.0, 1.0)
            w[0, i], w[1, i], w[2, i], w[3, i] = moment_match_args(ta, ra)
        erfc_map(w[2], w[2], m4)
        exp_map(w[3], w[3], m4)
        for i in range(m):
            out_t[lo + i], out_r[lo + i], f = moment_match_from(w[0, i], w[1, i], slope, 0.5 * w[2, i],
                                                                w[3, i])
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


# scratch rows of _marginal_serial: the inputs; per truncation block b at offset 8 b: t, sigma_m, h, quad,
# erfc's argument then the mass, exp's argument then phi, log's argument then the log, the log-weight; the
# two components' moments; the mixture exponent and its log1p; the flags (a tail block, a log-weight erfc
# cannot give, fallback); the outputs
_TA, _RA, _TZ, _RZ = 0, 1, 2, 3
_T, _S, _H, _Q, _MASS, _PHI, _LOG, _LW = 4, 5, 6, 7, 8, 9, 10, 11
_M1, _V1, _M2, _V2, _X, _LP, _TAIL, _NOK, _FB, _OT, _OR = range(20, 31)
_ROWS = 31


@njit(cache=True, inline="always")
def _block_args(b, backward, ta, ra, tz, rz, slope, inv_s2):
    """The two Gaussians ``(tau1, rho1, tau2, rho2)`` of truncation block ``b`` of a unit: the arguments of
    :func:`block52_parts` in :func:`fwd_marginal_one` / :func:`bwd_marginal_one` (``inv_s2 = 1 /
    slope^2``)."""
    if b == 0:
        return ta, ra, tz, rz
    if backward:
        return -ta, ra, -slope * tz, slope * slope * rz
    return -tz, rz, -ta / slope, ra * inv_s2


@njit(cache=True, inline="always")
def _tail_block(w, b, m, floors):
    """Truncation block ``b``'s tail units of a tile (``t < -TAIL_T``; :func:`block52_moments`): their
    moments from :func:`~factorgraph.kernels.scalar.tail_moments`, or where the component is negligible
    (log-weight ``NEGLIGIBLE_LOG_WEIGHT`` below the other's) from the leading asymptotic terms ``(-1/t,
    1/t^2)``.  Over all the tile's lanes with selects (a loop that vectorises; other lanes keep their
    moments).  Returns the u-floor count plus ``floors``."""
    o = 8 * b
    for i in range(w.shape[1]):
        t = w[_T + o, i]
        tail = t < -TAIL_T
        negligible = w[_LW + o, i] < w[_LW + 8 - o, i] - NEGLIGIBLE_LOG_WEIGHT
        k, v = tail_moments(-t if tail else TAIL_T)
        k = -1.0 / t if negligible else k
        v = 1.0 / (t * t) if negligible else v
        mb, vb, f = floored_moments(w[_S + o, i], k, v)
        w[_M1 + 2 * b, i] = (mb if b == 0 else -mb) if tail else w[_M1 + 2 * b, i]
        w[_V1 + 2 * b, i] = vb if tail else w[_V1 + 2 * b, i]
        floors += f & tail & (i < m)
    return floors


@njit(cache=True, error_model="numpy")
def _marginal_serial(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """Training forward (``backward=False``) or backward messages of all units: ``fwd_marginal_one`` /
    ``bwd_marginal_one`` over tiles of ``TILE`` units, restaged so the compiler vectorises the arithmetic and
    the transcendental calls go four lanes at a time (:mod:`factorgraph.kernels.vecmath`): per tile the two
    truncation blocks' ``block52_prep`` (its two-division form, and where a unit's precisions leave that
    form's range, the exact form for the tile's units: ``block52_prep``'s numbers either way); erfc and exp;
    ``log(sqrt(h) Phi)``; the log-weights and the direct-formula moments; then, only for the units that need
    them, the tail-accurate log-cdf and, in tiles with tail units (``t < -TAIL_T``), their moments over all
    lanes (:func:`_tail_block`); exp (and log1p) of the mixture exponents; the finish, and moment matching for
    the forward's fallbacks. The same operations as the per-unit functions, so the same numbers. Returns the
    guard counts (forward: fallbacks, u-floors; backward: clamps, fallbacks, u-floors, min_rho); error_model
    "numpy": divisions by zero give inf / NaN as in the per-unit functions' unused branches, never an
    exception."""
    if backward:  # a constant flag in each inlined copy: no branch on it inside the loops, which vectorise
        return _marginal_tiles(True, a_t, a_r, z_t, z_r, slope, out_t, out_r)
    return _marginal_tiles(False, a_t, a_r, z_t, z_r, slope, out_t, out_r)


@njit(cache=True, error_model="numpy", inline="always")
def _marginal_tiles(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """The loops of :func:`_marginal_serial`, inlined there once per direction (the same flag as a
    run-time argument kept its loops scalar: 31 against 20 ns per unit)."""
    n = a_t.shape[0]
    w = np.empty((_ROWS, TILE))
    acc = np.zeros(4, np.int64)
    fb_at = np.empty(TILE, np.int64)  # the fallbacks' units, queued
    inv_s2 = 1.0 / (slope * slope)
    log_slope = math.log(slope) if backward else 0.0
    for lo in range(0, n, TILE):
        m = min(TILE, n - lo)
        for i in range(m):
            w[_TA, i], w[_RA, i] = a_t[lo + i], a_r[lo + i]
            w[_TZ, i], w[_RZ, i] = z_t[lo + i], z_r[lo + i]
        for i in range(m, TILE):  # padding lanes: finite values, results unused and not counted
            w[_TA, i], w[_RA, i], w[_TZ, i], w[_RZ, i] = 0.0, 1.0, 0.0, 1.0
        odd = 0
        for i in range(TILE):
            ta, ra, tz, rz = w[_TA, i], w[_RA, i], w[_TZ, i], w[_RZ, i]
            fast = True
            for b in range(2):
                t1, r1, t2, r2 = _block_args(b, backward, ta, ra, tz, rz, slope, inv_s2)
                t, s, h, q, ok = block52_prep_fast(t1, r1, t2, r2)
                fast &= ok
                o = 8 * b
                w[_T + o, i], w[_S + o, i], w[_H + o, i], w[_Q + o, i] = t, s, h, q
                w[_MASS + o, i], w[_PHI + o, i] = -t * SQRT1_2, -0.5 * t * t - LOG_SQRT_2PI
            odd += not fast
        if odd:  # precisions out of the two-division form's range: the exact form (block52_prep's numbers)
            for i in range(m):  # the exact form of all four, which equals the fast form where that is ok
                ta, ra, tz, rz = w[_TA, i], w[_RA, i], w[_TZ, i], w[_RZ, i]
                for b in range(2):
                    t1, r1, t2, r2 = _block_args(b, backward, ta, ra, tz, rz, slope, inv_s2)
                    t, s, h, q = block52_prep(t1, r1, t2, r2)
                    o = 8 * b
                    w[_T + o, i], w[_S + o, i], w[_H + o, i], w[_Q + o, i] = t, s, h, q
                    w[_MASS + o, i], w[_PHI + o, i] = -t * SQRT1_2, -0.5 * t * t - LOG_SQRT_2PI
        for o in (0, 8):
            erfc_map(w[_MASS + o], w[_MASS + o], TILE)
            exp_map(w[_PHI + o], w[_PHI + o], TILE)
        for i in range(TILE):
            nok = 0.0
            for o in (0, 8):
                mass = 0.5 * w[_MASS + o, i]
                w[_MASS + o, i] = mass
                shm = math.sqrt(w[_H + o, i]) * mass
                w[_LOG + o, i] = shm if shm >= MIN_NORMAL else 1.0
                nok = nok if erfc_log_weight_ok(w[_T + o, i], shm) else 1.0
            w[_NOK, i] = nok
        for o in (0, 8):
            log_map(w[_LOG + o], w[_LOG + o], TILE)
        tails = notok = floors = 0
        for i in range(TILE):  # the common case: erfc gives the mass, the direct formula the moments
            w[_TAIL, i] = 0.0
            for b in range(2):
                o = 8 * b
                t, mass = w[_T + o, i], w[_MASS + o, i]
                w[_LW + o, i] = w[_Q + o, i] + w[_LOG + o, i] - (log_slope if b == 1 else 0.0)
                v = w[_PHI + o, i] / mass
                shift = t + v
                u = 1.0 - v * shift
                tail = t < -TAIL_T
                if tail:
                    w[_TAIL, i] = 1.0
                floored = u < MIN_U
                floors += floored & (not tail) & (i < m)
                u = MIN_U if floored else u
                s = w[_S + o, i]
                w[_M1 + 2 * b, i] = s * shift if b == 0 else -s * shift
                w[_V1 + 2 * b, i] = s * s * u
            tails += (w[_TAIL, i] != 0.0) & (i < m)
            notok += (w[_NOK, i] != 0.0) & (i < m)
        if notok:  # the tail-accurate log-cdf where erfc's mass cannot give the log-weight
            for i in range(m):
                if w[_NOK, i] != 0.0:
                    for o in (0, 8):
                        shm = math.sqrt(w[_H + o, i]) * w[_MASS + o, i]
                        w[_LW + o, i] = block52_log_weight(w[_T + o, i], w[_H + o, i], w[_Q + o, i], shm,
                                                           w[_LOG + o, i]) - (log_slope if o == 8 else 0.0)
        if tails:  # tail moments: tail_moments, or asymptotic where the component is negligible
            floors = _tail_block(w, 0, m, floors)
            floors = _tail_block(w, 1, m, floors)
        acc[2 if backward else 1] += floors
        for i in range(TILE):
            w[_X, i] = mixture_exponent(w[_LW, i], w[_LW + 8, i])
        exp_map(w[_X], w[_X], TILE)
        if not backward:
            log1p_map(w[_X], w[_LP], TILE)
        fallback = clamps = fbs = lows = 0
        for i in range(TILE):
            ta, ra, tz, rz = w[_TA, i], w[_RA, i], w[_TZ, i], w[_RZ, i]
            mean, var, log_m0 = mixture_with(w[_LW, i], w[_M1, i], w[_V1, i], w[_LW + 8, i], w[_M2, i],
                                             w[_V2, i], w[_X, i], 0.0 if backward else w[_LP, i])
            valid = i < m
            if backward:
                t, r, c, fb, low = bwd_from_mixture(ta, ra, tz, rz, mean, var)
                clamps += c & valid
                fbs += fb & valid
                lows += low & valid
            else:
                rho_hat = 1.0 / var
                tau_hat = mean * rho_hat
                fb = fwd_needs_fallback(ra, rz, rho_hat, tau_hat, log_m0)
                fallback += fb & valid
                w[_FB, i] = 1.0 if fb else 0.0
                t, r = tau_hat - tz, rho_hat - rz
            w[_OT, i], w[_OR, i] = t, r
        if backward:
            acc[0] += clamps
            acc[1] += fbs
            acc[3] += lows
        if 2 * fallback >= m:  # most units fall back: moment matching over all lanes, kept where they do
            for i in range(TILE):
                w[_T, i], w[_S, i], w[_MASS, i], w[_PHI, i] = moment_match_args(w[_TA, i], w[_RA, i])
            erfc_map(w[_MASS], w[_MASS], TILE)
            exp_map(w[_PHI], w[_PHI], TILE)
            floors = 0
            for i in range(TILE):
                t, r, f = moment_match_from(w[_T, i], w[_S, i], slope, 0.5 * w[_MASS, i], w[_PHI, i])
                fb = w[_FB, i] != 0.0
                w[_OT, i] = t if fb else w[_OT, i]
                w[_OR, i] = r if fb else w[_OR, i]
                floors += f & fb & (i < m)
            acc[0] += fallback
            acc[1] += floors
        elif fallback:  # a few: queued, erfc and exp lanes over the queue
            nf = 0
            for i in range(m):
                if w[_FB, i] != 0.0:
                    w[_T, nf], w[_S, nf], w[_MASS, nf], w[_PHI, nf] = moment_match_args(w[_TA, i], w[_RA, i])
                    fb_at[nf] = i
                    nf += 1
            nf4 = (nf + 3) // 4 * 4
            for k in range(nf, nf4):
                w[_MASS, k] = w[_PHI, k] = 0.0
            erfc_map(w[_MASS], w[_MASS], nf4)
            exp_map(w[_PHI], w[_PHI], nf4)
            for k in range(nf):
                i = fb_at[k]
                w[_OT, i], w[_OR, i], f = moment_match_from(w[_T, k], w[_S, k], slope, 0.5 * w[_MASS, k],
                                                            w[_PHI, k])
                acc[1] += f
            acc[0] += nf
        for i in range(m):
            out_t[lo + i] = w[_OT, i]
            out_r[lo + i] = w[_OR, i]
    return acc


@njit(cache=True, parallel=True)
def _marginal_threads(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    """:func:`_marginal_serial` over ``BLOCKS`` blocks of units on all threads (summed guard counts)."""
    n = a_t.shape[0]
    size = (n + BLOCKS - 1) // BLOCKS
    acc = np.zeros((BLOCKS, 4), np.int64)
    for b in prange(BLOCKS):
        lo, hi = min(n, b * size), min(n, (b + 1) * size)
        acc[b] = _marginal_serial(backward, a_t[lo:hi], a_r[lo:hi], z_t[lo:hi], z_r[lo:hi], slope,
                                  out_t[lo:hi], out_r[lo:hi])
    return acc.sum(axis=0)


def _marginal(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    fn = _marginal_threads if use_threads(a_t.shape[0], THREADS_MIN) else _marginal_serial
    return fn(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r)


@njit(cache=True, inline="always")
def _slots_item(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, n, i, lo, hi, slope,
                out_t, out_r):
    """Units ``lo:hi`` of chunk row ``i`` for :func:`_marginal_slots`: the row's fresh messages stored in
    slot ``rows[i]`` of ``store``, then :func:`_marginal_serial` with ``other``'s slot row."""
    f, s = i * n, rows[i] * n
    store_t[s + lo:s + hi] = fresh_t[f + lo:f + hi]
    store_r[s + lo:s + hi] = fresh_r[f + lo:f + hi]
    ft, fr = fresh_t[f + lo:f + hi], fresh_r[f + lo:f + hi]
    ot, orr = other_t[s + lo:s + hi], other_r[s + lo:s + hi]
    # ``backward`` passed on as the variable: a literal True / False would compile two more copies of the
    # large serial kernel (50 s)
    if backward:
        return _marginal_serial(backward, ot, orr, ft, fr, slope, out_t[f + lo:f + hi], out_r[f + lo:f + hi])
    return _marginal_serial(backward, ft, fr, ot, orr, slope, out_t[f + lo:f + hi], out_r[f + lo:f + hi])


@njit(cache=True, error_model="numpy")
def _slots_serial(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, slope, out_t, out_r):
    """:func:`_marginal_slots` on one thread, a chunk row at a time."""
    n = fresh_t.shape[0] // rows.shape[0]
    acc = np.zeros(4, np.int64)
    for i in range(rows.shape[0]):
        acc += _slots_item(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, n, i, 0, n,
                           slope, out_t, out_r)
    return acc


@njit(cache=True, parallel=True)
def _slots_threads(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, slope, out_t, out_r):
    """:func:`_marginal_slots` on all threads: each chunk row cut into parts, at least ``BLOCKS`` in all."""
    c = rows.shape[0]
    n = fresh_t.shape[0] // c
    parts = (BLOCKS + c - 1) // c
    size = (n + parts - 1) // parts
    acc = np.zeros((c * parts, 4), np.int64)
    for w in prange(c * parts):
        i, p = w // parts, w % parts
        acc[w] = _slots_item(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, n, i,
                             min(n, p * size), min(n, (p + 1) * size), slope, out_t, out_r)
    return acc.sum(axis=0)


@njit(cache=True)
def distinct_rows(rows, n):
    """True where the integers ``rows`` are distinct and in ``[0, n)``: slots the chunk kernels can take
    (each cache row written by one thread).  Compiled: ``np.unique`` took 1.7 % of an MLP chunk sweep."""
    seen = np.zeros(n, np.bool_)
    for r in rows:
        if r < 0 or r >= n or seen[r]:
            return False
        seen[r] = True
    return True


def _marginal_slots(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, slope, out_t,
                    out_r):
    """:func:`_marginal` for a chunk of examples whose messages sit in per-slot caches: the chunk's fresh
    messages (``(c, n)`` flattened, row ``i`` for slot ``rows[i]``) are stored in the slots' rows of
    ``store`` and paired with the slots' rows of ``other`` (flat ``(slots, n)`` caches) inside the kernel,
    without gathering or scattering the rows first (the forward's fresh messages are ``a``, the backward's
    ``z``)."""
    fn = _slots_threads if use_threads(fresh_t.shape[0], THREADS_MIN) else _slots_serial
    return fn(backward, fresh_t, fresh_r, store_t, store_r, other_t, other_r, rows, slope, out_t, out_r)


def leaky_fwd_marginal_slots(a_t, a_r, cache_a_t, cache_a_r, cache_z_t, cache_z_r, rows, slope, out_t, out_r,
                             counts):
    """:func:`leaky_fwd_marginal` of a chunk: its inputs ``a`` (row ``i`` for slot ``rows[i]``, flattened) are
    also stored in those slots' rows of the flat cache ``cache_a``; the backward messages ``z`` are read from
    the slots' rows of ``cache_z``."""
    fb, f = _marginal_slots(False, a_t, a_r, cache_a_t, cache_a_r, cache_z_t, cache_z_r, rows, slope, out_t,
                            out_r)[:2]
    counts[L_FWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f


def leaky_bwd_marginal_slots(z_t, z_r, cache_z_t, cache_z_r, cache_a_t, cache_a_r, rows, slope, out_t, out_r,
                             counts):
    """:func:`leaky_bwd_marginal` of a chunk: its backward messages ``z`` are also stored in the slots'
    rows of ``cache_z``; the inputs ``a`` are read from the slots' rows of ``cache_a`` (as
    :func:`leaky_fwd_marginal_slots`)."""
    _count_bwd(counts, _marginal_slots(True, z_t, z_r, cache_z_t, cache_z_r, cache_a_t, cache_a_r, rows,
                                       slope, out_t, out_r))


def leaky_fwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Training forward of all units given their backward messages ``z`` (on all threads inside
    :func:`factorgraph.kernels.threaded`, i.e. batched sweeps and prediction, from ``THREADS_MIN`` units)."""
    fb, f = _marginal(False, a_t, a_r, z_t, z_r, slope, out_t, out_r)[:2]
    counts[L_FWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f


def leaky_bwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    """Backward message to the input, then ``min_rho(MIN_PRECISION)`` as the layer applies it (threads as
    :func:`leaky_fwd_marginal`)."""
    _count_bwd(counts, _marginal(True, a_t, a_r, z_t, z_r, slope, out_t, out_r))


def _count_bwd(counts, acc):
    """Add the backward kernels' guard counts ``acc`` (clamps, fallbacks, u-floors, min-rho) to ``counts``."""
    c, fb, f, low = acc
    counts[L_BWD_CLAMP] += c
    counts[L_BWD_FALLBACK] += fb
    counts[L_U_FLOOR] += f
    counts[L_MIN_RHO] += low
