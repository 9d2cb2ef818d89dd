"""Numba CPU kernels of the weight-site updates of :class:`factorgraph.factor.WeightSlots`.

Each is one pass over a weight tensor where the NumPy form of the same update takes many (a chunk of
:class:`schedules.Parallel` replaces a site and takes a cavity per weight tensor, so these passes are a
fixed cost per chunk):

* :func:`replace_site`: damping, the trust region (``max_step``), the marginal update and the store (per
  weight :func:`step_one`, which :mod:`factorgraph.kernels.sites_cuda` runs on the GPU);
* :func:`cavity_moments`: strict division ``q / m_site`` with the cavity's mean and variance;
* :func:`marginal_check`: the after-sweep health check of a marginal against its batch prior;
* :func:`slot_sums`: the exact marginal's recompute, the slots' sum and the prior in one pass.
* :func:`fold_message`: the Trainer's damped batch message and total after a batch.

``tests/test_batched_schedules.py`` checks them against the NumPy forms.
"""

import math

import numpy as np
from numba import njit, prange

from factorgraph.kernels import use_threads
from factorgraph.kernels.moments_cpu import moments_one

#: from this many weights on, :func:`slot_sums` runs on all threads inside
#: :func:`factorgraph.kernels.threaded`
THREADS_MIN = 16384


@njit(cache=True, error_model="numpy")
def step_one(q_t, q_r, ot, orr, nt, nr, damping, kappa, damp, bound):
    """One weight of :func:`replace_site`: the (damped, bounded) new site message ``(nt, nr)`` for the
    old one ``(ot, orr)`` and the marginal ``(q_t, q_r)``, and whether the bound limited it.  Without
    branches on the data (where ``q_r <= 0`` the bound's terms are NaN and not selected)."""
    if damp:
        nt = ot + damping * (nt - ot)
        nr = orr + damping * (nr - orr)
    hit = False
    if bound:
        dt = nt - ot
        dr = nr - orr
        a = abs(dt - (q_t / q_r) * dr)
        sd_inv = math.sqrt(q_r)
        hit = (q_r > 0) & (a * sd_inv > kappa * (q_r + dr))
        f = kappa * sd_inv / (a - kappa * dr / sd_inv)
        nt = ot + f * dt if hit else nt
        nr = orr + f * dr if hit else nr
    return nt, nr, hit


@njit(cache=True, inline="always")
def replace_one(q_t, q_r, s_t, s_r, i, nt, nr, damping, kappa, damp, bound):
    """Element ``i`` (an index or an index tuple) of :func:`replace_site`: the site message ``s[i]``
    becomes the (damped, bounded) ``(nt, nr)`` and ``q[i]`` takes the change; returns whether the bound
    limited it."""
    ot = s_t[i]
    orr = s_r[i]
    nt, nr, hit = step_one(q_t[i], q_r[i], ot, orr, nt, nr, damping, kappa, damp, bound)
    q_t[i] += nt - ot
    q_r[i] += nr - orr
    s_t[i] = nt
    s_r[i] = nr
    return hit


@njit(cache=True, error_model="numpy")
def _replace_loop(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, damp, bound):
    """The loop of :func:`replace_site` for fixed ``damp``/``bound`` (branch-free, so that it vectorises)."""
    count = 0
    for j in range(q_t.shape[0]):
        count += replace_one(q_t, q_r, s_t, s_r, j, new_t[j], new_r[j], damping, kappa, damp, bound)
    return count


@njit(cache=True)
def replace_site(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa):
    """Replace the site message ``s`` by ``new`` (flat arrays, ``q`` and ``s`` in place): damp to
    ``s + damping (new - s)`` (when ``damping != 1``), bound the step by ``kappa`` marginal sds (when
    ``kappa > 0``, as :meth:`factorgraph.factor.WeightSlots._limit_step`), add ``new - s`` to the marginal
    ``q`` and store ``new`` in ``s``.
    Returns how many weights the bound limited."""
    args = (q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa)
    if damping != 1.0:
        return _replace_loop(*args, True, True) if kappa > 0 else _replace_loop(*args, True, False)
    return _replace_loop(*args, False, True) if kappa > 0 else _replace_loop(*args, False, False)


@njit(cache=True, inline="always")
def cavity_one(q_t, q_r, s_t, s_r, rtol, zero):
    """One element of the strict division ``q / s``: ``(tau, rho, round-off?, beyond tolerance?)``, a
    precision deficit down to ``rtol |q_r|`` being round-off (the precision set to 0)."""
    d = q_r - s_r
    neg = d < zero
    beyond = d < -rtol * abs(q_r)
    return q_t - s_t, max(d, zero), neg & ~beyond, beyond


@njit(cache=True, error_model="numpy")
def _cavity_loop(q_t, q_r, s_t, s_r, rtol, zero, one, inf, out_t, out_r, out_mu, out_var):
    """The loop of :func:`cavity_moments`, its constants in the arrays' dtype (a float64 literal would
    make a float32 loop compute in float64, at twice the cost)."""
    roundoff = 0
    bad = 0
    for j in range(q_t.shape[0]):
        t, d, rounded, beyond = cavity_one(q_t[j], q_r[j], s_t[j], s_r[j], rtol, zero)
        bad += beyond
        roundoff += rounded
        out_t[j] = t
        out_r[j] = d
        out_mu[j], out_var[j] = moments_one(t, d, zero, one, inf)
    return roundoff, bad


def cavity_moments(q_t, q_r, s_t, s_r, rtol, out_t, out_r, out_mu, out_var):
    """Strict division ``q / s`` (flat arrays) into ``out_t, out_r`` with the mean (0 where the precision
    is 0) and variance (inf there) of the result.  A precision deficit down to ``rtol |q_r|`` is round-off
    (set to 0); returns ``(round-off count, count beyond it)``; the caller raises when the second is
    non-zero.  Branch-free, so that it vectorises; computed in the arrays' dtype."""
    dt = q_t.dtype.type
    return _cavity_loop(q_t, q_r, s_t, s_r, dt(rtol), dt(0), dt(1), dt(np.inf), out_t, out_r, out_mu, out_var)


@njit(cache=True, inline="always")
def _mean_shift(qt, qr, pt, pr):
    """``|mean q - mean p| sqrt(rho_p)`` (means by :func:`moments_one`: 0 where ``rho = 0``)."""
    mq = moments_one(qt, qr, 0.0, 1.0, math.inf)[0]
    mp = moments_one(pt, pr, 0.0, 1.0, math.inf)[0]
    return abs(mq - mp) * math.sqrt(pr)


@njit(cache=True, error_model="numpy")
def _check_part(q_t, q_r, p_t, p_r, limit):
    """``(ok, far)`` of :func:`marginal_check` over the given elements (a loop that vectorises)."""
    ok = True
    far = 0
    for i in range(q_t.shape[0]):
        qt, qr = q_t[i], q_r[i]
        ok &= math.isfinite(qt) & (qr > 0) & math.isfinite(qr)
        far += _mean_shift(qt, qr, p_t[i], p_r[i]) > limit
    return ok, far


@njit(cache=True, error_model="numpy")
def _top_shift(q_t, q_r, p_t, p_r):
    top = -math.inf
    for i in range(q_t.shape[0]):
        top = max(top, _mean_shift(q_t[i], q_r[i], p_t[i], p_r[i]))
    return top


@njit(cache=True, parallel=True)
def _check_threads(q_t, q_r, p_t, p_r, limit, parts):
    """:func:`_check_part` on ``parts`` slices on all threads."""
    n = q_t.shape[0]
    size = (n + parts - 1) // parts
    oks = np.zeros(parts, np.bool_)
    fars = np.zeros(parts, np.int64)
    for p in prange(parts):
        lo, hi = min(n, p * size), min(n, (p + 1) * size)
        oks[p], fars[p] = _check_part(q_t[lo:hi], q_r[lo:hi], p_t[lo:hi], p_r[lo:hi], limit)
    return oks.all(), fars.sum()


def marginal_check(q_t, q_r, p_t, p_r, limit):
    """One pass over a weight marginal ``q`` and its batch prior ``p`` (flat arrays): whether every element
    of ``q`` is finite and proper (``rho > 0``) and how many means lie more than ``limit`` prior standard
    deviations from the prior mean (``|mean q - mean p| sqrt(rho_p)``, means 0 where ``rho = 0``); where
    some do, a second pass for the largest shift (else ``-inf``: a running maximum would keep the first
    pass from vectorising).  On all threads inside :func:`factorgraph.kernels.threaded` (the counts are
    the same)."""
    if use_threads(q_t.shape[0], THREADS_MIN):
        ok, far = _check_threads(q_t, q_r, p_t, p_r, limit, 16)
    else:
        ok, far = _check_part(q_t, q_r, p_t, p_r, limit)
    return bool(ok), int(far), _top_shift(q_t, q_r, p_t, p_r) if far else -math.inf


#: elements per block of :func:`slot_sums` (the block's sums stay in the L1 cache across the slots)
SUM_BLOCK = 512


@njit(cache=True, error_model="numpy")
def _slot_sums_part(m, u, prior, s, q, lo, hi):
    """Elements ``lo:hi`` of :func:`slot_sums`, in blocks of ``SUM_BLOCK``: each block's sum over the
    slots (slot by slot, a contiguous loop each), then its marginal."""
    zero = s.dtype.type(0)
    for b in range(lo, hi, SUM_BLOCK):
        e = min(hi, b + SUM_BLOCK)
        sb, m0 = s[b:e], m[0, b:e]
        if u > 0:
            for j in range(e - b):
                sb[j] = m0[j]
        else:
            sb[:] = zero
        for i in range(1, u):
            mi = m[i, b:e]
            for j in range(e - b):
                sb[j] += mi[j]
        qb, mp = q[b:e], m[prior, b:e]
        for j in range(e - b):
            qb[j] = sb[j] + mp[j]


@njit(cache=True, parallel=True)
def _slot_sums_threads(m, u, prior, s, q, parts):
    n = s.shape[0]
    size = (n + parts - 1) // parts
    for p in prange(parts):
        _slot_sums_part(m, u, prior, s, q, min(n, p * size), min(n, (p + 1) * size))


def slot_sums(m, u, prior, s, q):
    """``s = m[0] + ... + m[u - 1]`` (slot by slot, in NumPy's order for ``m[:u].sum(axis=0)``, so the same
    numbers) and ``q = s + m[prior]`` for the flat slot messages ``m`` (slots, n): the exact marginal's
    natural parameters of :meth:`factorgraph.factor.WeightSlots.recompute` in one pass over the slots, on
    all threads inside :func:`factorgraph.kernels.threaded` (NumPy's reduction runs on one)."""
    if use_threads(s.shape[0], THREADS_MIN):
        _slot_sums_threads(m, u, prior, s, q, 16)
    else:
        _slot_sums_part(m, u, prior, s, q, 0, s.shape[0])


@njit(cache=True, error_model="numpy")
def _fold_loop(total, store, new, a, b):
    for i in range(total.shape[0]):
        old = store[i]
        damped = a * old + b * new[i]
        total[i] = total[i] + damped - old
        store[i] = damped


def fold_message(total, store, new, beta):
    """The Trainer's update after a batch, in place, for one natural parameter (flat arrays of one dtype):
    the block's stored message ``store`` damped toward its new likelihood ``new``, ``d = (1 - beta) store +
    beta new`` (:meth:`factorgraph.gaussian.Gaussian.damp`), the total ``total + d - store``, then ``store =
    d``: one pass where the NumPy form takes six and four temporaries, with its numbers (``1 - beta`` and
    ``beta`` rounded to the arrays' dtype first, as NumPy does with a Python float)."""
    dt = total.dtype.type
    _fold_loop(total, store, new, dt(1 - beta), dt(beta))
