"""Numba CPU kernels of a chunk of examples through a dense layer (:class:`schedules.Parallel`).

The NumPy form of a chunk (:func:`~factorgraph.equations.s1_forward`,
:func:`~factorgraph.equations.s1_backward_to_b_gemm`, :func:`~factorgraph.equations.s2_forward`,
:func:`~factorgraph.equations.s2_backward_gemm`, then :meth:`factorgraph.factor.WeightSlots.replace`) makes
many passes over the (K, J) weight arrays: the cavity or marginal moments, each matrix product's output,
each elementwise term, the site replacement.  These kernels go over the weights once, in blocks of
input rows (``ROWS``, fewer for chunks of 64 examples or more: :func:`_block_rows`): per block the
weights' moments are computed into a small scratch, the block's matrix products are BLAS calls
(:func:`factorgraph.kernels.blas_cpu.gemm` on the inputs' column blocks as they stand, one BLAS thread
each) on that scratch, and the block's new site messages are formed and replace the old ones
(:func:`factorgraph.kernels.sites_cpu.replace_site`) while the block is in cache.  Inside
:func:`factorgraph.kernels.threaded` the blocks are split over all Numba threads (the forward's partial
sums over the rows are added at the end).

Convolutions use few weights many times (every patch row of every example): their kernels
(:func:`uses_forward`, :func:`s1_uses_backward`, :func:`s2_uses_backward`) go over blocks of ``USES``
patch rows instead, forming ``g, h`` and the bias message per block, the messages to the patches block by
block, and the weight messages as per-thread partial sums, without the (U, K) and (U, J) temporaries of
the equations.

Same equations, same dtype: the messages equal the NumPy path's up to the order of the sums in the
matrix products (``tests/test_chunk_kernels.py``).
"""

import numba
import numpy as np
from numba import njit, prange

from factorgraph.kernels import use_threads
from factorgraph.kernels.blas_cpu import gemm
from factorgraph.kernels.moments_cpu import moments_one
from factorgraph.kernels.patches_cpu import fold as fold_cpu, fold_patch, fold_store
from factorgraph.kernels.scalar import s1_term
from factorgraph.kernels.sites_cpu import cavity_one, replace_from_prior, replace_site

#: input rows per block: a (ROWS, J) scratch per array stays in the L2 cache
ROWS = 64
#: the chunk's examples times a block's rows that the BLAS products ran fastest with (:func:`_block_rows`)
BLOCK_USES = 2048
#: from this many weights on, the kernels use all threads inside :func:`factorgraph.kernels.threaded`
THREADS_MIN = 16384

# counts returned by the forward kernels: strict-division round-off, beyond tolerance, zero precision
ROUNDOFF, BAD, ZERO = 0, 1, 2


@njit(cache=True, error_model="numpy")
def _cavity_block(q_t, q_r, s_t, s_r, lo, hi, rtol, mu, var, counts):
    """Moments of the cavity ``q / s`` of rows ``lo:hi`` (strict division, :func:`sites_cpu.cavity_one`)
    into ``mu, var`` (mean 0 and variance inf where the precision is 0)."""
    dt = q_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(np.inf)
    roundoff = bad = nzero = 0
    for k in range(lo, hi):
        for j in range(q_t.shape[1]):
            t, d, rounded, beyond = cavity_one(q_t[k, j], q_r[k, j], s_t[k, j], s_r[k, j], rtol, zero)
            bad += beyond
            roundoff += rounded
            nzero += ~(d > zero)
            mu[k - lo, j], var[k - lo, j] = moments_one(t, d, zero, one, inf)
    counts[ROUNDOFF] += roundoff
    counts[BAD] += bad
    counts[ZERO] += nzero


@njit(cache=True, error_model="numpy")
def _marginal_block(q_t, q_r, lo, hi, mu, var):
    """Mean and variance of the marginal rows ``lo:hi`` (0 and inf where the precision is not > 0)."""
    dt = q_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(np.inf)
    for k in range(lo, hi):
        for j in range(q_t.shape[1]):
            mu[k - lo, j], var[k - lo, j] = moments_one(q_t[k, j], q_r[k, j], zero, one, inf)


@njit(cache=True, error_model="numpy")
def _prior_block(q_t, q_r, s_t, s_r, lo, hi, mu, var):
    """Mean and variance of rows ``lo:hi`` of the batch prior ``q - s`` (a lazily reset batch, see
    :func:`_site_block`), as :func:`_marginal_block` of the marginal the reset would have written."""
    dt = q_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(np.inf)
    for k in range(lo, hi):
        for j in range(q_t.shape[1]):
            t, r = q_t[k, j] - s_t[k, j], q_r[k, j] - s_r[k, j]
            mu[k - lo, j], var[k - lo, j] = moments_one(t, r, zero, one, inf)


@njit(cache=True, inline="always")
def _weight_block(q_t, q_r, s_t, s_r, lazy, lo, hi, mu, var):
    """:func:`_marginal_block` of ``q``, or with ``lazy`` :func:`_prior_block` of ``q - s``."""
    if lazy:
        _prior_block(q_t, q_r, s_t, s_r, lo, hi, mu, var)
    else:
        _marginal_block(q_t, q_r, lo, hi, mu, var)


@njit(cache=True, inline="always")
def _site_block(q_t, q_r, s_t, s_r, m_t, m_r, b, tau, rho, damping, kappa, limit):
    """Rows ``b : b + len(tau)`` of the site take the block's new messages ``(tau, rho)``, the rows as one
    flat run (rows of C-contiguous arrays are contiguous, and the loops with the damping and bound flags
    fixed vectorise; the same loop over the block's index pairs ran 3x slower, and one call per row of a
    narrow layer took 18.2 against 1.35 us for 256 rows of 10 weights):
    :func:`factorgraph.kernels.sites_cpu.replace_site`, or where ``m_t`` has rows (a lazily reset batch:
    ``q, s`` are the Trainer's total and the batch's stored message, ``m`` the site's slot)
    :func:`~factorgraph.kernels.sites_cpu.replace_from_prior`.  Returns ``(hits, ok, far)``: how many the
    step bound limited, and the after-sweep check where lazy (else ``True, 0``)."""
    e = b + tau.shape[0]
    qt, qr, st, sr = q_t[b:e].reshape(-1), q_r[b:e].reshape(-1), s_t[b:e].reshape(-1), s_r[b:e].reshape(-1)
    if m_t.shape[0] == 0:
        return replace_site(qt, qr, st, sr, tau.reshape(-1), rho.reshape(-1), damping, kappa), True, 0
    mt, mr = m_t[b:e].reshape(-1), m_r[b:e].reshape(-1)
    return replace_from_prior(qt, qr, st, sr, mt, mr, tau.reshape(-1), rho.reshape(-1), damping, kappa, limit)


@njit(cache=True, inline="always")
def _block_rows(n, J, U, weights_only):
    """Rows per block: all ``n`` rows of a small weight tensor (fewer, larger BLAS calls), else about
    ``BLOCK_USES // U`` rows for a chunk of ``U`` examples: within ``[8, ROWS]`` for a kernel whose products
    all sum over the examples (``weights_only``: the S1 backward's weight messages), else within ``[16,
    ROWS]`` up to ``U = 128`` and ``ROWS`` beyond.  OpenBLAS ran the weight messages' products fastest per
    example at ``U x rows = 2048`` and up to 2x slower at 4096 (784 x 256 weights, one thread, float32 and
    float64, 2-core AVX-512 machine: U = 128, 7.5 us per example with 16 rows against 11.9 with 32; U =
    256, 7.8 with 8 rows against 15.5 with 16); the forward's products and the S2 backward's (which also
    form the (U, rows) messages to the inputs) ran best with 16 rows at U = 128 and with 64 or more from
    U = 256 on."""
    if n * J < THREADS_MIN:
        return max(n, 1)
    if weights_only:
        return max(8, min(ROWS, BLOCK_USES // U))
    if U > 128:
        return ROWS
    return max(16, min(ROWS, BLOCK_USES // U))


def _parts(K, threads):
    """Rows per part: ``threads`` parts as equal as whole rows allow (each part runs blocks of ``ROWS``
    from its start).  Parts of whole blocks left the threads unequal work (784 rows on two threads: 448
    and 336, 10-12 % slower chunks of the first dense layer)."""
    return max(1, (K + threads - 1) // threads)


# --- elementwise steps as explicit loops: Numba's array expressions (``out += a * b``) allocate their
# temporaries and ran about 3x slower on a block (64 x 256: 7.0 against 2.2 us); the same operations in
# the same order, so the same numbers -----------------------------------------------------------------

@njit(cache=True)
def _add(out, x):
    """``out += x``."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] += x[i, j]


@njit(cache=True)
def _add_product(out, a, b):
    """``out += a * b``."""
    for i in range(b.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] += a[i, j] * b[i, j]


@njit(cache=True)
def _square_plus(out, a, v):
    """``out = v + a * a`` (``v`` empty: ``out = a * a``)."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = v[i, j] + a[i, j] * a[i, j] if v.shape[0] else a[i, j] * a[i, j]


@njit(cache=True)
def _add_row(out, c):
    """``out += c`` for a row ``c`` (broadcast over the rows of ``out``)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += c[j]


# --- S1: constant inputs (the first weighted layer), weights' cavities ------------------------------

@njit(cache=True, error_model="numpy")
def _s1_fwd_rows(x, x2, q_t, q_r, s_t, s_r, rtol, lo, hi, out_mu, out_var, counts):
    rows = _block_rows(hi - lo, q_t.shape[1], x.shape[0], False)
    mu = np.empty((rows, q_t.shape[1]), q_t.dtype)
    var = np.empty((rows, q_t.shape[1]), q_t.dtype)
    for b in range(lo, hi, rows):
        e = min(hi, b + rows)
        _cavity_block(q_t, q_r, s_t, s_r, b, e, rtol, mu, var, counts)
        gemm(x[:, b:e], mu[:e - b], out_mu, 1.0)
        gemm(x2[:, b:e], var[:e - b], out_var, 1.0)


@njit(cache=True, parallel=True)
def _s1_fwd_threads(x, x2, q_t, q_r, s_t, s_r, rtol, size, out_mu, out_var, counts):
    K = q_t.shape[0]
    P = (K + size - 1) // size
    mus = np.zeros((P,) + out_mu.shape, out_mu.dtype)
    vars_ = np.zeros((P,) + out_mu.shape, out_mu.dtype)
    cnt = np.zeros((P, 3), np.int64)
    for p in prange(P):
        _s1_fwd_rows(x, x2, q_t, q_r, s_t, s_r, rtol, p * size, min(K, (p + 1) * size), mus[p], vars_[p],
                     cnt[p])
    out_mu[...] = mus.sum(axis=0)
    out_var[...] = vars_.sum(axis=0)
    counts += cnt.sum(axis=0)


def s1_inputs(x):
    """``(x, x * x)``, C-contiguous: the forms of a chunk's constant inputs ``x`` (U, K) that
    :func:`s1_chunk_forward` and :func:`s1_chunk_backward` read (made once per chunk)."""
    x = np.ascontiguousarray(x)
    return x, x * x


def s1_chunk_forward(inputs, q_t, q_r, s_t, s_r, rtol, out_mu, out_var):
    """``out_mu = x @ mu_cav``, ``out_var = (x * x) @ var_cav`` for the chunk's inputs ``x`` (U, K), given
    as ``inputs = s1_inputs(x)``, and the cavity ``q / s`` of the (K, J) weights, without forming the
    cavity.  Returns the counts (round-off, beyond tolerance, zero precision) of the strict division: the
    caller raises on the second and takes the NumPy form on the third (a uniform cavity needs the
    zero-coefficient rule)."""
    x, x2 = inputs
    counts = np.zeros(3, np.int64)
    dt = q_t.dtype.type
    if use_threads(q_t.size, THREADS_MIN):
        size = _parts(q_t.shape[0], numba.get_num_threads())
        _s1_fwd_threads(x, x2, q_t, q_r, s_t, s_r, dt(rtol), size, out_mu, out_var, counts)
    else:
        out_mu[...] = 0
        out_var[...] = 0
        _s1_fwd_rows(x, x2, q_t, q_r, s_t, s_r, dt(rtol), 0, q_t.shape[0], out_mu, out_var, counts)
    return counts


@njit(cache=True, error_model="numpy")
def _s1_bwd_rows(a, a2, a3, a4, g, h, gh, hh, q_t, q_r, s_t, s_r, m_t, m_r, rtol, damping, kappa, limit,
                 expansion, lo, hi):
    J = q_t.shape[1]
    rows = _block_rows(hi - lo, J, g.shape[0], True)
    mu = np.empty((rows, J), q_t.dtype)
    var = np.empty((rows, J), q_t.dtype)
    tau = np.empty((rows, J), q_t.dtype)
    rho = np.empty((rows, J), q_t.dtype)
    prod = np.empty((rows, J), q_t.dtype)
    counts = np.zeros(3, np.int64)
    hits = 0
    ok = True
    far = 0
    for b in range(lo, hi, rows):
        e = min(hi, b + rows)
        n = e - b
        _cavity_block(q_t, q_r, s_t, s_r, b, e, rtol, mu, var, counts)
        gemm(a2[:, b:e].T, h, rho[:n], 0.0)
        gemm(a[:, b:e].T, g, tau[:n], 0.0)
        if expansion == 1:
            _add_product(rho[:n], var[:n], gemm(a4[:, b:e].T, hh, prod[:n], 0.0))
            _add_product(tau[:n], var[:n], gemm(a3[:, b:e].T, gh, prod[:n], 0.0))
        _add_product(tau[:n], mu[:n], rho[:n])
        hit, o, f = _site_block(q_t, q_r, s_t, s_r, m_t, m_r, b, tau[:n], rho[:n], damping, kappa, limit)
        hits += hit
        ok &= o
        far += f
    return hits, ok, far


@njit(cache=True, parallel=True)
def _s1_bwd_threads(a, a2, a3, a4, g, h, gh, hh, q_t, q_r, s_t, s_r, m_t, m_r, rtol, damping, kappa, limit,
                    expansion, size):
    K = q_t.shape[0]
    P = (K + size - 1) // size
    hits = np.zeros(P, np.int64)
    oks = np.zeros(P, np.bool_)
    fars = np.zeros(P, np.int64)
    for p in prange(P):
        hits[p], oks[p], fars[p] = _s1_bwd_rows(a, a2, a3, a4, g, h, gh, hh, q_t, q_r, s_t, s_r, m_t, m_r,
                                                rtol, damping, kappa, limit, expansion, p * size,
                                                min(K, (p + 1) * size))
    return hits.sum(), oks.all(), fars.sum()


def _lazy_slot(q_t, lazy):
    """The site slot's arrays ``(m_t, m_r)`` of a lazily reset batch (``lazy``), else empty ones."""
    return lazy if lazy is not None else (q_t[:0], q_t[:0])


def s1_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, rtol, damping, kappa, expansion, lazy=None,
                      limit=-1.0):
    """The chunk's joint S1 message to the (K, J) weights (C-contiguous arrays, as all of these kernels take)
    (:func:`~factorgraph.equations.s1_backward_to_b_gemm` to order ``expansion`` with the cavity
    ``q / s``, the inputs as ``s1_inputs(a)``, ``g, h`` (U, J) as there) replacing site ``s`` in place
    (damping, step bound ``kappa`` when > 0, marginal ``q`` updated:
    :func:`factorgraph.kernels.sites_cpu.replace_site`).  Returns how many weights the bound limited.

    ``lazy = (m_t, m_r)``: a lazily reset batch (:meth:`factorgraph.factor.WeightSlots.reset`): ``q`` is the
    Trainer's total and ``s`` the batch's stored message (the cavity ``q / s`` is the batch prior, as the
    reset's), the new message goes to the site's slot ``m`` and nothing else is written
    (:func:`~factorgraph.kernels.sites_cpu.replace_from_prior`); returns ``(hits, ok, far)`` with the
    after-sweep check of the new marginal (``limit`` prior sds)."""
    a, a2 = inputs
    if expansion == 1:
        a3, a4, gh, hh = a2 * a, a2 * a2, g * h, h * h
    else:
        a3 = a4 = a[:, :0]
        gh = hh = g[:0]
    dt = q_t.dtype.type
    args = (a, a2, a3, a4, g, h, gh, hh, q_t, q_r, s_t, s_r, *_lazy_slot(q_t, lazy), dt(rtol), dt(damping),
            dt(kappa), dt(limit), expansion)
    if use_threads(q_t.size, THREADS_MIN):
        out = _s1_bwd_threads(*args, _parts(q_t.shape[0], numba.get_num_threads()))
    else:
        out = _s1_bwd_rows(*args, 0, q_t.shape[0])
    hits, ok, far = int(out[0]), bool(out[1]), int(out[2])
    return hits if lazy is None else (hits, ok, far)


# --- S2: variable inputs (hidden layers), weights' marginals --------------------------------------

@njit(cache=True, error_model="numpy")
def _s2_fwd_rows(mua, vara, mua2, q_t, q_r, s_t, s_r, lazy, lo, hi, out_mu, out_var):
    rows = _block_rows(hi - lo, q_t.shape[1], mua.shape[0], False)
    mu = np.empty((rows, q_t.shape[1]), q_t.dtype)
    var = np.empty((rows, q_t.shape[1]), q_t.dtype)
    m2 = np.empty((rows, q_t.shape[1]), q_t.dtype)
    for b in range(lo, hi, rows):
        e = min(hi, b + rows)
        n = e - b
        _weight_block(q_t, q_r, s_t, s_r, lazy, b, e, mu, var)
        gemm(mua[:, b:e], mu[:n], out_mu, 1.0)
        gemm(mua2[:, b:e], var[:n], out_var, 1.0)
        _square_plus(m2[:n], mu[:n], var[:n])
        gemm(vara[:, b:e], m2[:n], out_var, 1.0)


@njit(cache=True, parallel=True)
def _s2_fwd_threads(mua, vara, mua2, q_t, q_r, s_t, s_r, lazy, size, out_mu, out_var):
    K = q_t.shape[0]
    P = (K + size - 1) // size
    mus = np.zeros((P,) + out_mu.shape, out_mu.dtype)
    vars_ = np.zeros((P,) + out_mu.shape, out_mu.dtype)
    for p in prange(P):
        _s2_fwd_rows(mua, vara, mua2, q_t, q_r, s_t, s_r, lazy, p * size, min(K, (p + 1) * size), mus[p],
                     vars_[p])
    out_mu[...] = mus.sum(axis=0)
    out_var[...] = vars_.sum(axis=0)


def s2_inputs(mu_a, var_a):
    """``(mu_a, var_a, mu_a * mu_a)``, C-contiguous: the forms of a chunk's input moments ``mu_a, var_a``
    (U, K) that :func:`s2_chunk_forward` and :func:`s2_chunk_backward` read (made once per chunk)."""
    mu_a = np.ascontiguousarray(mu_a)
    return mu_a, np.ascontiguousarray(var_a), mu_a * mu_a


def s2_chunk_forward(inputs, q_t, q_r, out_mu, out_var, s_t=None, s_r=None):
    """``out_mu = mu_a @ mu_b``, ``out_var = var_a @ m2_b + mu_a^2 @ var_b`` (:func:`s2_forward` without
    the bias) for the chunk's input moments (U, K), given as ``inputs = s2_inputs(mu_a, var_a)``, and the
    (K, J) weight marginal ``q``, without forming its moments; with ``s`` (a lazily reset batch, see
    :func:`s1_chunk_backward`) the marginal is the batch prior ``q - s``."""
    mua, vara, mua2 = inputs
    lazy = s_t is not None
    w = (q_t, q_r, s_t, s_r, True) if lazy else (q_t, q_r, q_t[:0], q_t[:0], False)
    if use_threads(q_t.size, THREADS_MIN):
        size = _parts(q_t.shape[0], numba.get_num_threads())
        _s2_fwd_threads(mua, vara, mua2, *w, size, out_mu, out_var)
    else:
        out_mu[...] = 0
        out_var[...] = 0
        _s2_fwd_rows(mua, vara, mua2, *w, 0, q_t.shape[0], out_mu, out_var)


@njit(cache=True, error_model="numpy")
def _s2_bwd_rows(mua, m2a, mua2, g, h, q_t, q_r, s_t, s_r, m_t, m_r, damping, kappa, limit, lo, hi, ta, ra):
    J = q_t.shape[1]
    rows = _block_rows(hi - lo, J, g.shape[0], False)
    mu = np.empty((rows, J), q_t.dtype)
    var = np.empty((rows, J), q_t.dtype)
    mub2 = np.empty((rows, J), q_t.dtype)
    m2b = np.empty((rows, J), q_t.dtype)
    tau = np.empty((rows, J), q_t.dtype)
    rho = np.empty((rows, J), q_t.dtype)
    prod = np.empty((rows, J), q_t.dtype)
    prod_a = np.empty((g.shape[0], rows), q_t.dtype)
    no = mu[:0]
    lazy = m_t.shape[0] > 0
    hits = 0
    ok = True
    far = 0
    for b in range(lo, hi, rows):
        e = min(hi, b + rows)
        n = e - b
        _weight_block(q_t, q_r, s_t, s_r, lazy, b, e, mu, var)
        mub = mu[:n]
        _square_plus(mub2[:n], mub, no)
        _square_plus(m2b[:n], mub, var[:n])
        # to the inputs (their columns b:e): h m2_b^T; g mu_b^T + mu_a * (h (mu_b^2)^T)
        gemm(h, m2b[:n].T, ra[:, b:e], 0.0)
        gemm(g, mub.T, ta[:, b:e], 0.0)
        _add_product(ta[:, b:e], mua[:, b:e], gemm(h, mub2[:n].T, prod_a[:, :n], 0.0))
        # to the weights
        gemm(m2a[:, b:e].T, h, rho[:n], 0.0)
        gemm(mua[:, b:e].T, g, tau[:n], 0.0)
        _add_product(tau[:n], mub, gemm(mua2[:, b:e].T, h, prod[:n], 0.0))
        hit, o, f = _site_block(q_t, q_r, s_t, s_r, m_t, m_r, b, tau[:n], rho[:n], damping, kappa, limit)
        hits += hit
        ok &= o
        far += f
    return hits, ok, far


@njit(cache=True, parallel=True)
def _s2_bwd_threads(mua, m2a, mua2, g, h, q_t, q_r, s_t, s_r, m_t, m_r, damping, kappa, limit, size, ta, ra):
    K = q_t.shape[0]
    P = (K + size - 1) // size
    hits = np.zeros(P, np.int64)
    oks = np.zeros(P, np.bool_)
    fars = np.zeros(P, np.int64)
    for p in prange(P):
        hits[p], oks[p], fars[p] = _s2_bwd_rows(mua, m2a, mua2, g, h, q_t, q_r, s_t, s_r, m_t, m_r, damping,
                                                kappa, limit, p * size, min(K, (p + 1) * size), ta, ra)
    return hits.sum(), oks.all(), fars.sum()


def s2_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, damping, kappa, lazy=None, limit=-1.0):
    """The chunk's S2 messages to order 0 (:func:`~factorgraph.equations.s2_backward_gemm` with
    ``expansion=0``, the weights' marginal ``q``, the inputs as ``s2_inputs(mu_a, var_a)``): returns
    ``(tau_a, rho_a, hits)``, the messages to the inputs (U, K) and how many weights the step bound
    limited; the joint weight message replaces site ``s`` in place as in :func:`s1_chunk_backward`.  The
    marginal ``q`` a block reads is its value before the replacement (each weight's new marginal is written
    after its block's products).  ``lazy``, ``limit``: as :func:`s1_chunk_backward` (the marginal read is
    the batch prior ``q - s``); then ``hits`` is ``(hits, ok, far)``."""
    mua, vara, mua2 = inputs
    m2a = vara + mua2
    U, K = mua.shape
    ta = np.empty((U, K), q_t.dtype)
    ra = np.empty((U, K), q_t.dtype)
    dt = q_t.dtype.type
    args = (mua, m2a, mua2, g, h, q_t, q_r, s_t, s_r, *_lazy_slot(q_t, lazy), dt(damping), dt(kappa),
            dt(limit))
    if use_threads(q_t.size, THREADS_MIN):
        out = _s2_bwd_threads(*args, _parts(K, numba.get_num_threads()), ta, ra)
    else:
        out = _s2_bwd_rows(*args, 0, K, ta, ra)
    hits, ok, far = int(out[0]), bool(out[1]), int(out[2])
    return ta, ra, (hits if lazy is None else (hits, ok, far))


# --- the chunk's messages around a dense layer's weights (U rows: few, one pass each) ----------------

@njit(cache=True, inline="always")
def _min_rho(t, r, m, zero):
    """SPEC 1.4 ``min_rho``: the precision raised to ``m`` keeping the mean (0 for ``r = 0``); and whether
    it was raised."""
    low = r < m
    if low:
        t = (t / r if r > zero else zero) * m
        r = m
    return t, r, low


@njit(cache=True, error_model="numpy")
def input_marginal(in_t, in_r, mx_t, mx_r, idx, m, out_t, out_r, out_mu, out_var):
    """Input marginals of a hidden dense layer's chunk, ``min_rho(m_in * m_to_x[idx], m)`` (the mean kept
    where the precision is raised, SPEC 1.4), with their means and variances; returns how many were
    raised (``min_rho_clamp``)."""
    dt = in_t.dtype.type
    zero, one, inf = dt(0), dt(1), dt(np.inf)
    clamps = 0
    for u in range(in_t.shape[0]):
        i = idx[u]
        for k in range(in_t.shape[1]):
            t, r, low = _min_rho(in_t[u, k] + mx_t[i, k], in_r[u, k] + mx_r[i, k], m, zero)
            clamps += low
            out_t[u, k] = t
            out_r[u, k] = r
            out_mu[u, k], out_var[u, k] = moments_one(t, r, zero, one, inf)
    return clamps


@njit(cache=True, error_model="numpy")
def store_input_messages(ta, ra, f_r, r_r, tiny, m, out_t, out_r, mx_t, mx_r, idx):
    """The messages to a hidden dense layer's inputs ``ta, ra`` (U, K) into ``out`` (U, K) and
    ``m_to_x[idx]``: an example whose forward and backward precisions are all ``<= tiny`` sends
    ``G(0, m)`` (SPEC 4.3 edge rule), then ``min_rho(m)``.  Returns the counts
    (``linear_all_tiny_precision``, ``min_rho_clamp``)."""
    dt = out_t.dtype.type
    zero = dt(0)
    flats = clamps = 0
    for u in range(out_t.shape[0]):
        flat = True
        for j in range(f_r.shape[1]):
            flat = flat and f_r[u, j] <= tiny and r_r[u, j] <= tiny
        flats += flat
        i = idx[u]
        for k in range(out_t.shape[1]):
            t, r, low = _min_rho(zero if flat else ta[u, k], m if flat else ra[u, k], m, zero)
            clamps += low
            out_t[u, k] = t
            out_r[u, k] = r
            mx_t[i, k] = t
            mx_r[i, k] = r
    return flats, clamps


@njit(cache=True, error_model="numpy")
def add_bias(mu, var, c_mu, c_var, tau, rho):
    """A dense chunk's outputs (U, J) with the bias's moments added, ``mu += c_mu`` and ``var += c_var``,
    and their natural parameters ``tau = mu / var``, ``rho = 1 / var``, in one pass in the arrays' dtype
    (NumPy's four passes gave the same numbers)."""
    one = var.dtype.type(1)
    for u in range(mu.shape[0]):
        for j in range(mu.shape[1]):
            m, v = mu[u, j] + c_mu[j], var[u, j] + c_var[j]
            mu[u, j], var[u, j] = m, v
            tau[u, j], rho[u, j] = m / v, one / v


@njit(cache=True, error_model="numpy")
def _gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var, g, h, bias):
    return _gh_block(f_mu, f_var, r_t, r_r, 0, f_mu.shape[0], c_mu, c_var, g, h, bias)


def gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var):
    """``g, h`` (U, J) of the GEMM forms and the bias's S1 message summed over the uses
    (:func:`~factorgraph.equations.s1_backward_to_bias`) in one pass: returns
    ``(g, h, tau_c, rho_c, clamps)``, ``clamps`` the bias's rest-variance clamps."""
    g, h = np.empty(f_mu.shape, f_mu.dtype), np.empty(f_mu.shape, f_mu.dtype)
    bias = np.zeros((2, f_mu.shape[1]), f_mu.dtype)
    clamps = _gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var, g, h, bias)
    return g, h, bias[0], bias[1], clamps


# --- many uses of few weights (im2col convolutions): blocks of rows of uses ------------------------

#: uses (patch rows) per block of the convolution kernels
USES = 256


@njit(cache=True, error_model="numpy")
def _gh_block(f_mu, f_var, r_t, r_r, b, e, c_mu, c_var, g, h, bias):
    """``g, h`` of the GEMM forms (:func:`~factorgraph.equations.s1_backward_to_b_gemm`) for the uses
    ``b:e`` into rows ``0:e-b`` of ``g, h``, and the S1 messages to the bias (coefficient 1, cavity
    ``c_mu, c_var``) summed into ``bias[0], bias[1]`` (tau, rho); returns the rest-variance clamps."""
    dt = f_mu.dtype.type
    one = dt(1)
    clamps = 0
    for u in range(b, e):
        for j in range(f_mu.shape[1]):
            rr = r_r[u, j]
            d = one + rr * f_var[u, j]
            h[u - b, j] = rr / d
            g[u - b, j] = (r_t[u, j] - rr * f_mu[u, j]) / d
            bt, br, clamped = s1_term(one, c_mu[j], c_var[j], f_mu[u, j], f_var[u, j], r_t[u, j], rr)
            bias[0, j] += bt
            bias[1, j] += br
            clamps += clamped
    return clamps


@njit(cache=True, error_model="numpy")
def _fold_into(ta, ra, b, lo, hi, size, src, acc_t, acc_r, out_t, out_r, edge_t, edge_r):
    """Rows ``b : b + len(ta)`` (of the part ``lo:hi`` of the rows, parts of ``size``) of the messages to
    the patches (``ta, ra``, a block; rows example-major with ``P = len(src)`` patches each) added to their
    pixels' float64 sums in increasing entry order, as :func:`factorgraph.kernels.patches_cpu.fold` adds
    them (the same sums in the same order): an example's sums start at its first patch and go to its row of
    ``out`` after its last.  An example cut by a part boundary ``j * size`` has its rows kept in
    ``edge[j - 1]`` instead, for :func:`_fold_edges`."""
    P = src.shape[0]
    first, last = (lo + P - 1) // P * P, hi // P * P  # the part's whole examples: rows first:last
    for r in range(ta.shape[0]):
        u = b + r
        e, p = u // P, u % P
        if u < first or u >= last:  # an example cut by the boundary at lo (j = lo // size) or at hi
            j = lo // size if u < first else hi // size
            edge_t[j - 1, p] = ta[r]
            edge_r[j - 1, p] = ra[r]
            continue
        if p == 0:
            acc_t[:] = 0.0
            acc_r[:] = 0.0
        fold_patch(ta, ra, r, p, src, acc_t, acc_r)
        if p == P - 1:
            fold_store(acc_t, acc_r, e, out_t, out_r)


@njit(cache=True, error_model="numpy")
def _fold_edges(size, parts, src, edge_t, edge_r, out_t, out_r):
    """Fold the examples cut by the part boundaries ``j * size`` (their rows in ``edge[j - 1]``)."""
    P = src.shape[0]
    acc_t, acc_r = np.empty(out_t.shape[1]), np.empty(out_t.shape[1])
    for j in range(1, parts):
        if (j * size) % P:
            acc_t[:] = 0.0
            acc_r[:] = 0.0
            for p in range(P):
                fold_patch(edge_t[j - 1], edge_r[j - 1], p, p, src, acc_t, acc_r)
            fold_store(acc_t, acc_r, (j * size) // P, out_t, out_r)


@njit(cache=True, error_model="numpy")
def _uses_bwd_rows(mu_a, var_a, f_mu, f_var, r_t, r_r, c_mu, c_var, mu_bT, mu_b2T, m2_bT, lo, hi, to_a_t,
                   to_a_r, w_parts, bias, size, src, fold_t, fold_r, edge_t, edge_r):
    """Uses ``lo:hi`` of :func:`s1_uses_backward` (``var_a`` empty: ``mu_a`` are constants; sums
    ``a^T g``, ``(a^2)^T h`` into ``w_parts[0:2]``) or :func:`s2_uses_backward` (also ``m2_a^T h`` into
    ``w_parts[2]`` and the messages to the inputs, or with a patch index ``src`` those messages folded
    into ``fold`` by :func:`_fold_into`, part ``lo:hi`` of parts of ``size`` rows); returns the bias's
    clamps."""
    K, J = mu_a.shape[1], f_mu.shape[1]
    g = np.empty((USES, J), f_mu.dtype)
    h = np.empty((USES, J), f_mu.dtype)
    mua2 = np.empty((USES, K), f_mu.dtype)
    m2a = np.empty((USES, K), f_mu.dtype)
    prod_w = np.empty((K, J), f_mu.dtype)
    s2 = var_a.shape[0] > 0
    folding = src.shape[0] > 0
    rows_a = USES if s2 else 0
    ta = np.empty((rows_a, K), f_mu.dtype)
    ra = np.empty((rows_a, K), f_mu.dtype)
    prod_a = np.empty((rows_a, K), f_mu.dtype)
    no = mu_a[:0]
    acc_t, acc_r = np.empty(fold_t.shape[1]), np.empty(fold_t.shape[1])
    clamps = 0
    for b in range(lo, hi, USES):
        e = min(hi, b + USES)
        n = e - b
        clamps += _gh_block(f_mu, f_var, r_t, r_r, b, e, c_mu, c_var, g, h, bias)
        gb, hb = g[:n], h[:n]
        mua = mu_a[b:e]
        _square_plus(mua2[:n], mua, no)
        _add(w_parts[0], np.dot(mua.T, gb, prod_w))
        _add(w_parts[1], np.dot(mua2[:n].T, hb, prod_w))
        if s2:
            _square_plus(m2a[:n], mua, var_a[b:e])
            _add(w_parts[2], np.dot(m2a[:n].T, hb, prod_w))
            # to the patches: g mu_b^T + mu_a * (h (mu_b^2)^T), h m2_b^T
            tb, rb = (ta[:n], ra[:n]) if folding else (to_a_t[b:e], to_a_r[b:e])
            np.dot(hb, m2_bT, rb)
            np.dot(gb, mu_bT, tb)
            _add_product(tb, mua, np.dot(hb, mu_b2T, prod_a[:n]))
            if folding:
                _fold_into(tb, rb, b, lo, hi, size, src, acc_t, acc_r, fold_t, fold_r, edge_t, edge_r)
    return clamps


@njit(cache=True, parallel=True)
def _uses_bwd_threads(mu_a, var_a, f_mu, f_var, r_t, r_r, c_mu, c_var, mu_bT, mu_b2T, m2_bT, size, to_a_t,
                      to_a_r, w_parts, bias, src, fold_t, fold_r, edge_t, edge_r):
    U = mu_a.shape[0]
    P = (U + size - 1) // size
    parts = np.zeros((P,) + w_parts.shape, w_parts.dtype)
    biases = np.zeros((P,) + bias.shape, bias.dtype)
    clamps = np.zeros(P, np.int64)
    for p in prange(P):
        clamps[p] = _uses_bwd_rows(mu_a, var_a, f_mu, f_var, r_t, r_r, c_mu, c_var, mu_bT, mu_b2T, m2_bT,
                                   p * size, min(U, (p + 1) * size), to_a_t, to_a_r, parts[p], biases[p],
                                   size, src, fold_t, fold_r, edge_t, edge_r)
    w_parts[...] = parts.sum(axis=0)
    bias[...] = biases.sum(axis=0)
    return clamps.sum()


def _uses_size(U):
    return ((U + USES - 1) // USES + numba.get_num_threads() - 1) // numba.get_num_threads() * USES


def _uses_backward(mu_a, var_a, f_mu, f_var, r_t, r_r, b_mu, b_var, c_mu, c_var, fold=None):
    U, K = mu_a.shape
    J = f_mu.shape[1]
    dt = f_mu.dtype
    s2 = var_a is not None
    threaded = use_threads(U * K, THREADS_MIN) and U > USES
    size = _uses_size(U) if threaded else U
    if fold is not None:
        src, n = fold
        if U % src.shape[0]:
            raise ValueError(f"{U} patch rows are not whole examples of {src.shape[0]} patches")
        if size < src.shape[0]:  # parts shorter than an example: fold the stored messages afterwards
            out = _uses_backward(mu_a, var_a, f_mu, f_var, r_t, r_r, b_mu, b_var, c_mu, c_var)
            folded = [np.empty((U // src.shape[0], n), dt) for _ in range(2)]
            fold_cpu(out[0].reshape(len(folded[0]), -1), out[1].reshape(len(folded[0]), -1), (src,), *folded)
            return (*folded, *out[2:])
        fold_t, fold_r = (np.empty((U // src.shape[0], n), dt) for _ in range(2))
    else:
        src, fold_t, fold_r = np.zeros((0, 0), np.int64), mu_a[:0], mu_a[:0]
    if s2:
        mu_b2 = b_mu * b_mu
        trans = tuple(np.ascontiguousarray(v.T) for v in (b_mu, mu_b2, b_var + mu_b2))
        to_a_t, to_a_r = (np.empty((U, K), dt) for _ in range(2)) if fold is None else (mu_a[:0], mu_a[:0])
    else:
        var_a = mu_a[:0]
        trans = (b_mu[:0],) * 3
        to_a_t = to_a_r = mu_a[:0]
    w_parts = np.zeros((3 if s2 else 2, K, J), dt)
    bias = np.zeros((2, J), dt)
    args = (mu_a, var_a, f_mu, f_var, r_t, r_r, c_mu, c_var, *trans)
    parts = (U + size - 1) // size
    # the rows of the examples that the part boundaries cut (size >= P: at most one boundary per example)
    edges = np.empty((2, parts - 1) + src.shape, dt) if fold is not None else np.empty((2, 0, 0, 0), dt)
    if threaded:
        clamps = _uses_bwd_threads(*args, size, to_a_t, to_a_r, w_parts, bias, src, fold_t, fold_r, *edges)
    else:
        clamps = _uses_bwd_rows(*args, 0, U, to_a_t, to_a_r, w_parts, bias, size, src, fold_t, fold_r, *edges)
    if fold is not None:
        _fold_edges(size, parts, src, edges[0], edges[1], fold_t, fold_r)
        to_a_t, to_a_r = fold_t, fold_r
    tau_w = w_parts[0] + b_mu * w_parts[1]
    rho_w = w_parts[2] if s2 else w_parts[1]
    return to_a_t, to_a_r, tau_w, rho_w, bias[0], bias[1], clamps


def s1_uses_backward(a, f_mu, f_var, r_t, r_r, b_mu, c_mu, c_var):
    """:func:`~factorgraph.equations.s1_backward_to_b_gemm` to order 0 and
    :func:`~factorgraph.equations.s1_backward_to_bias` for ``U`` uses (rows of ``a`` (U, K), of the forward
    moments ``f_mu, f_var`` and the backward message ``r_t, r_r`` (U, J)) in one pass over blocks of
    ``USES`` rows, without (U, J) or (U, K) temporaries: returns ``(tau_w, rho_w, tau_c, rho_c, clamps)``,
    ``b_mu`` the weights' cavity means, ``c_mu, c_var`` the bias cavity's moments, ``clamps`` the bias's
    rest-variance clamps."""
    return _uses_backward(a, None, f_mu, f_var, r_t, r_r, b_mu, None, c_mu, c_var)[2:]


def s2_uses_backward(mu_a, var_a, f_mu, f_var, r_t, r_r, b_mu, b_var, c_mu, c_var, fold=None):
    """:func:`~factorgraph.equations.s2_backward_gemm` to order 0 and the bias message of
    :func:`s1_uses_backward` for ``U`` uses with input moments ``mu_a, var_a`` (U, K) and the weights'
    marginal moments ``b_mu, b_var`` (K, J): returns
    ``(tau_a, rho_a, tau_w, rho_w, tau_c, rho_c, clamps)``.  With ``fold = (src, n)`` (the convolution's
    patch index (P, K) and pixels per image; the uses are ``U / P`` examples' patch rows) ``tau_a, rho_a``
    are the messages to the images, (U / P, n): the messages to the patches folded block by block as
    :func:`factorgraph.kernels.patches_cpu.fold` folds them (the same numbers), never stored."""
    return _uses_backward(mu_a, var_a, f_mu, f_var, r_t, r_r, b_mu, b_var, c_mu, c_var, fold)


@njit(cache=True, error_model="numpy")
def _uses_fwd_rows(mu_a, var_a, mu_b, var_b, m2_b, c_mu, c_var, lo, hi, out_mu, out_var):
    """Forward moments of the uses ``lo:hi``: S2 (``var_a`` (U, K) given) or S1 (``var_a`` empty: ``mu_a``
    are constants), plus the bias message's moments."""
    mua2 = np.empty((USES, mu_a.shape[1]), mu_a.dtype)
    prod = np.empty((USES, mu_b.shape[1]), mu_a.dtype)
    no = mu_a[:0]
    for b in range(lo, hi, USES):
        e = min(hi, b + USES)
        n = e - b
        mua = mu_a[b:e]
        _add_row(np.dot(mua, mu_b, out_mu[b:e]), c_mu)
        _square_plus(mua2[:n], mua, no)
        if var_a.shape[0]:
            _add(np.dot(var_a[b:e], m2_b, out_var[b:e]), np.dot(mua2[:n], var_b, prod[:n]))
        else:
            np.dot(mua2[:n], var_b, out_var[b:e])
        _add_row(out_var[b:e], c_var)


@njit(cache=True, parallel=True)
def _uses_fwd_threads(mu_a, var_a, mu_b, var_b, m2_b, c_mu, c_var, size, out_mu, out_var):
    U = mu_a.shape[0]
    for p in prange((U + size - 1) // size):
        _uses_fwd_rows(mu_a, var_a, mu_b, var_b, m2_b, c_mu, c_var, p * size, min(U, (p + 1) * size), out_mu,
                       out_var)


def uses_forward(mu_a, var_a, mu_b, var_b, c_mu, c_var):
    """Forward moments ``(mu, var)`` (U, J) of ``U`` uses of the weights (K, J) with their bias:
    :func:`~factorgraph.equations.s2_forward_moments` for inputs with means and variances ``mu_a, var_a``
    (U, K), or with ``var_a=None`` :func:`~factorgraph.equations.s1_forward` for constant inputs
    ``mu_a`` (finite weight variances only: a uniform weight needs the zero-coefficient rule), in blocks
    of ``USES`` rows (on all threads inside :func:`factorgraph.kernels.threaded`)."""
    U, K = mu_a.shape
    dt = mu_a.dtype
    out_mu, out_var = np.empty((U, mu_b.shape[1]), dt), np.empty((U, mu_b.shape[1]), dt)
    m2_b = var_b + mu_b * mu_b if var_a is not None else var_b
    var_a = mu_a[:0] if var_a is None else var_a
    args = (mu_a, var_a, mu_b, var_b, m2_b, c_mu, c_var)
    if use_threads(U * K, THREADS_MIN) and U > USES:
        _uses_fwd_threads(*args, _uses_size(U), out_mu, out_var)
    else:
        _uses_fwd_rows(*args, 0, U, out_mu, out_var)
    return out_mu, out_var
