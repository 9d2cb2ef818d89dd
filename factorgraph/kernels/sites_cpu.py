"""Numba CPU kernels of the weight-site updates of :class:`factorgraph.factor.WeightSlots`.

Each is one pass over a weight tensor where the NumPy form of the same update takes many (a chunk of
:class:`schedules.Parallel` replaces a site and takes a cavity per weight tensor, so these passes are a
fixed cost per chunk):

* :func:`replace_site`: damping, the trust region (``max_step``), the marginal update and the store (per
  weight :func:`step_one`, which :mod:`factorgraph.kernels.sites_cuda` runs on the GPU);
  :func:`replace_from_prior` the same for a site of a lazily reset batch, with the after-sweep check;
* :func:`cavity_moments`: strict division ``q / m_site`` with the cavity's mean and variance;
* :func:`marginal_check`: the after-sweep health check of a marginal against its batch prior;
* :func:`marginal_sums`: the exact marginal's recompute, the slots' sum and the prior in one pass (with
  the after-sweep check in the same pass);
* :func:`reset_slots`: a new batch's prior, marginal and cleared slots in one pass;
* :func:`fold_message`: the Trainer's damped batch message and total after a batch.

``tests/test_batched_schedules.py`` checks them against the NumPy forms.
"""

import math

import numpy as np
from numba import njit, prange

from factorgraph.kernels import use_threads
from factorgraph.kernels.moments_cpu import moments_one

#: from this many weights on, :func:`marginal_sums`, :func:`reset_slots`, :func:`marginal_check` and
#: :func:`fold_message` run on all threads inside
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


@njit(cache=True, error_model="numpy")
def _prior_replace_loop(Q_t, Q_r, S_t, S_r, m_t, m_r, new_t, new_r, damping, kappa, limit, damp, bound):
    """The loop of :func:`replace_from_prior` for fixed ``damp``/``bound`` (branch-free, so that it
    vectorises)."""
    dt = Q_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(math.inf)
    hits = 0
    ok = True
    far = 0
    for j in range(Q_t.shape[0]):
        pt = Q_t[j] - S_t[j]
        pr = Q_r[j] - S_r[j]
        nt, nr, hit = step_one(pt, pr, zero, zero, new_t[j], new_r[j], damping, kappa, damp, bound)
        m_t[j] = nt
        m_r[j] = nr
        qt = nt + pt
        qr = nr + pr
        ok &= _proper(qt, qr, zero)
        far += _mean_shift(qt, qr, pt, pr, zero, one, inf) > limit
        hits += hit
    return hits, ok, far


@njit(cache=True)
def replace_from_prior(Q_t, Q_r, S_t, S_r, m_t, m_r, new_t, new_r, damping, kappa, limit):
    """:func:`replace_site` for a site that was cleared by a batch reset not yet written (the Trainer's
    lazy reset, :meth:`factorgraph.factor.WeightSlots.reset`): the batch prior is ``p = Q - S`` (the
    total without the batch's stored message, as :func:`reset_slots` forms it), the old site message 0
    and the marginal before the replacement ``p``.  Writes only the new site message ``m`` (damped,
    bounded as there) and returns ``(hits, ok, far)``: how many weights the bound limited, and the check of
    the new marginal ``m + p`` against ``p`` that :func:`marginal_sums` makes after a sweep (finite and
    proper; means beyond ``limit`` prior sds; ``limit`` in the arrays' dtype).  The same numbers as the
    reset, :func:`replace_site` and :func:`marginal_sums` it stands for (all flat arrays)."""
    args = (Q_t, Q_r, S_t, S_r, m_t, m_r, new_t, new_r, damping, kappa, limit)
    loop = _prior_replace_loop  # literal flags: one loop without branches per case, so that it vectorises
    if damping != 1.0:
        return loop(*args, True, True) if kappa > 0 else loop(*args, True, False)
    return loop(*args, False, True) if kappa > 0 else loop(*args, False, False)


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
def _mean_shift(qt, qr, pt, pr, zero, one, inf):
    """``|mean q - mean p| sqrt(rho_p)`` (means by :func:`moments_one`: 0 where ``rho = 0``), computed in the
    constants' dtype."""
    mq = moments_one(qt, qr, zero, one, inf)[0]
    mp = moments_one(pt, pr, zero, one, inf)[0]
    return abs(mq - mp) * math.sqrt(pr)


@njit(cache=True, inline="always")
def _proper(qt, qr, zero):
    """One weight of the after-sweep check: whether the marginal ``(qt, qr)`` is finite and proper (the
    other half is :func:`_mean_shift` beyond the limit)."""
    return math.isfinite(qt) & (qr > zero) & math.isfinite(qr)


@njit(cache=True, error_model="numpy")
def _check_part(q_t, q_r, p_t, p_r, limit):
    """``(ok, far)`` of :func:`marginal_check` over the given elements (a loop that vectorises)."""
    ok = True
    far = 0
    dt = q_t.dtype.type
    zero, one, inf, lim = dt(0), dt(1), dt(math.inf), dt(limit)
    for i in range(q_t.shape[0]):
        qt, qr = q_t[i], q_r[i]
        ok &= _proper(qt, qr, zero)
        far += _mean_shift(qt, qr, p_t[i], p_r[i], zero, one, inf) > lim
    return ok, far


@njit(cache=True, error_model="numpy")
def _top_shift(q_t, q_r, p_t, p_r):
    dt = q_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(math.inf)
    top = -inf
    for i in range(q_t.shape[0]):
        top = max(top, _mean_shift(q_t[i], q_r[i], p_t[i], p_r[i], zero, one, inf))
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


#: elements per block of :func:`marginal_sums` (the block's sums stay in the L1 cache across the slots)
SUM_BLOCK = 512


@njit(cache=True, inline="always")
def _sum_block(m, u, p, s, q, b, e):
    """Elements ``b:e`` of one natural parameter: ``s = m[0] + ... + m[u - 1]`` slot by slot (a contiguous
    loop each), ``q = s + p``; for ``u = 1``, ``q = m[0] + p`` without writing ``s`` (it would be a copy of
    ``m[0]``)."""
    qb, pb = q[b:e], p[b:e]
    if u == 1:
        m0 = m[0, b:e]
        for j in range(e - b):
            qb[j] = m0[j] + pb[j]
        return
    sb = s[b:e]
    if u > 0:
        m0 = m[0, b:e]
        for j in range(e - b):
            sb[j] = m0[j]
    else:
        sb[:] = s.dtype.type(0)
    for i in range(1, u):
        mi = m[i, b:e]
        for j in range(e - b):
            sb[j] += mi[j]
    for j in range(e - b):
        qb[j] = sb[j] + pb[j]


@njit(cache=True, error_model="numpy")
def _sums_part(m_t, m_r, u, p_t, p_r, s_t, s_r, q_t, q_r, lo, hi, limit, check):
    """Elements ``lo:hi`` of :func:`marginal_sums`, in blocks of ``SUM_BLOCK``; ``(ok, far)`` of the
    marginal's check (:func:`_check_part`) on each block while it is in the cache, when ``check``."""
    ok = True
    far = 0
    for b in range(lo, hi, SUM_BLOCK):
        e = min(hi, b + SUM_BLOCK)
        _sum_block(m_t, u, p_t, s_t, q_t, b, e)
        _sum_block(m_r, u, p_r, s_r, q_r, b, e)
        if check:
            o, f = _check_part(q_t[b:e], q_r[b:e], p_t[b:e], p_r[b:e], limit)
            ok &= o
            far += f
    return ok, far


@njit(cache=True, parallel=True)
def _sums_threads(m_t, m_r, u, p_t, p_r, s_t, s_r, q_t, q_r, limit, check, parts):
    n = s_t.shape[0]
    size = (n + parts - 1) // parts
    oks = np.zeros(parts, np.bool_)
    fars = np.zeros(parts, np.int64)
    for p in prange(parts):
        oks[p], fars[p] = _sums_part(m_t, m_r, u, p_t, p_r, s_t, s_r, q_t, q_r, min(n, p * size),
                                     min(n, (p + 1) * size), limit, check)
    return oks.all(), fars.sum()


def marginal_sums(m_t, m_r, u, p_t, p_r, s_t, s_r, q_t, q_r, limit=None):
    """The exact marginal in one pass over the slots: ``s = m[0] + ... + m[u - 1]`` (slot by slot, in NumPy's
    order for ``m[:u].sum(axis=0)``, so the same numbers; not written for ``u = 1``, where it is ``m[0]``)
    and ``q = s + p``, for each natural parameter (``m_t, m_r`` of shape (slots, n), the others flat (n,)).
    With ``limit`` it also checks ``q`` against ``p`` as :func:`marginal_check` does, block by block in the
    same pass, and returns its ``(ok, far, top)``.  On all threads inside :func:`factorgraph.kernels.threaded`
    (the same numbers)."""
    check = limit is not None
    lim = -1.0 if limit is None else float(limit)
    args = (m_t, m_r, u, p_t, p_r, s_t, s_r, q_t, q_r)
    if use_threads(s_t.shape[0], THREADS_MIN):
        ok, far = _sums_threads(*args, lim, check, 16)
    else:
        ok, far = _sums_part(*args, 0, s_t.shape[0], lim, check)
    if check:
        return bool(ok), int(far), _top_shift(q_t, q_r, p_t, p_r) if far else -math.inf
    return None


@njit(cache=True, inline="always")
def _reset_one(m, u, prior, p, r, q, lo, hi, divide):
    """Elements ``lo:hi`` of one natural parameter of :func:`reset_slots` (loops over slices: LLVM
    vectorises these, not the same loops over whole arrays indexed at ``lo + j``)."""
    mp, pp, rr, qq = m[prior, lo:hi], p[lo:hi], r[lo:hi], q[lo:hi]
    for j in range(hi - lo):
        v = pp[j] - rr[j] if divide else pp[j]
        mp[j] = v
        qq[j] = v
    zero = q.dtype.type(0)
    for i in range(u):
        mi = m[i, lo:hi]
        for j in range(hi - lo):
            mi[j] = zero


@njit(cache=True, error_model="numpy")
def _reset_part(m_t, m_r, u, prior, p_t, p_r, r_t, r_r, q_t, q_r, lo, hi, divide):
    """Elements ``lo:hi`` of :func:`reset_slots`."""
    _reset_one(m_t, u, prior, p_t, r_t, q_t, lo, hi, divide)
    _reset_one(m_r, u, prior, p_r, r_r, q_r, lo, hi, divide)


@njit(cache=True, parallel=True)
def _reset_threads(m_t, m_r, u, prior, p_t, p_r, r_t, r_r, q_t, q_r, divide, parts):
    n = q_t.shape[0]
    size = (n + parts - 1) // parts
    for p in prange(parts):
        lo, hi = min(n, p * size), min(n, (p + 1) * size)
        _reset_part(m_t, m_r, u, prior, p_t, p_r, r_t, r_r, q_t, q_r, lo, hi, divide)


def reset_slots(m_t, m_r, u, prior, p_t, p_r, q_t, q_r, r_t=None, r_r=None):
    """A new batch in one pass: slot ``prior`` of the slot messages ``m_t, m_r`` (slots, n) and the marginal
    ``q`` (flat) become the batch prior ``p`` (flat; ``p - r``, natural parameters subtracted as NumPy
    does, where ``r`` is given: the Trainer's total without the batch's own message), and slots ``0 .. u-1``
    become ``G(0, 0)``.  On all threads inside :func:`factorgraph.kernels.threaded`."""
    divide = r_t is not None
    if not divide:
        r_t, r_r = p_t, p_r
    args = (m_t, m_r, u, prior, p_t, p_r, r_t, r_r, q_t, q_r)
    if use_threads(q_t.shape[0], THREADS_MIN):
        _reset_threads(*args, divide, 16)
    else:
        _reset_part(*args, 0, q_t.shape[0], divide)


@njit(cache=True, inline="always")
def _fold_one(total, store, new, a, b, lo, hi):
    t, s, n = total[lo:hi], store[lo:hi], new[lo:hi]  # loops over slices vectorise (see _reset_one)
    for i in range(hi - lo):
        old = s[i]
        damped = a * old + b * n[i]
        t[i] = t[i] + damped - old
        s[i] = damped


@njit(cache=True, error_model="numpy")
def _fold_part(total_t, total_r, store_t, store_r, new_t, new_r, a, b, lo, hi):
    _fold_one(total_t, store_t, new_t, a, b, lo, hi)
    _fold_one(total_r, store_r, new_r, a, b, lo, hi)


@njit(cache=True, parallel=True)
def _fold_threads(total_t, total_r, store_t, store_r, new_t, new_r, a, b, parts):
    n = total_t.shape[0]
    size = (n + parts - 1) // parts
    for p in prange(parts):
        _fold_part(total_t, total_r, store_t, store_r, new_t, new_r, a, b, min(n, p * size),
                   min(n, (p + 1) * size))


def fold_message(total_t, total_r, store_t, store_r, new_t, new_r, beta):
    """The Trainer's update after a batch, in place, for both natural parameters (flat arrays of one dtype):
    the block's stored message ``store`` damped toward its new likelihood ``new``, ``d = (1 - beta) store +
    beta new`` (:meth:`factorgraph.gaussian.Gaussian.damp`), the total ``total + d - store``, then ``store =
    d``: one pass where the NumPy form takes six and four temporaries, with its numbers (``1 - beta`` and
    ``beta`` rounded to the arrays' dtype first, as NumPy does with a Python float); on all threads inside
    :func:`factorgraph.kernels.threaded`."""
    dt = total_t.dtype.type
    args = (total_t, total_r, store_t, store_r, new_t, new_r, dt(1 - beta), dt(beta))
    if use_threads(total_t.shape[0], THREADS_MIN):
        _fold_threads(*args, 16)
    else:
        _fold_part(*args, 0, total_t.shape[0])
