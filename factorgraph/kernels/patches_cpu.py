"""Numba CPU kernels of S1/S2 backward for matrix x matrix products (im2col convolutions).

``Z = A B + c`` with A (P, D) patches, B (D, F) kernel.  The kernels compute exactly
:func:`factorgraph.equations.s1_backward_to_b` (constant A, reduced over positions) and
:func:`factorgraph.equations.s2_backward` (variable A; messages to A summed over filters, messages to B
summed over positions) from precomputed moments, without materialising (P, D, F) temporaries.
``counts[0]`` counts rest-variance clamps.  ``gather`` (im2col) and ``fold`` (the deterministic
product over a pixel's copies, summed in entry order) move messages between images and patch matrices,
with a leading example axis.
"""

import numpy as np
from numba import njit, prange

from factorgraph.kernels import use_threads
from factorgraph.kernels.scalar import s1_term, s2_terms

#: inside :func:`factorgraph.kernels.threaded`, ``gather`` and ``fold`` over at least this many patch entries
#: split the examples over all threads
THREADS_MIN = 65536


@njit(cache=True)
def s1_patches_bwd(A, b_mu, b_var, f_mu, f_var, r_t, r_r, out_t, out_r, counts):
    """Sum over positions p of the S1 messages to B[d, f] (coefficient A[p, d], cavity moments of B)."""
    P, D = A.shape
    F = b_mu.shape[1]
    n_rest = 0
    for d in range(D):
        for f in range(F):
            out_t[d, f] = 0.0
            out_r[d, f] = 0.0
    for p in range(P):
        for d in range(D):
            a = A[p, d]
            if a == 0.0:
                continue
            for f in range(F):
                t, r, clamped = s1_term(a, b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f], r_t[p, f], r_r[p, f])
                n_rest += clamped
                out_t[d, f] += t
                out_r[d, f] += r
    counts[0] += n_rest


@njit(cache=True)
def s2_patches_bwd(a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_a_t, to_a_r, to_b_t, to_b_r, counts):
    """S2 backward of ``Z = A B``: messages to A[p, d] (product over f) and to B[d, f] (product over p)."""
    P, D = a_mu.shape
    F = b_mu.shape[1]
    n_rest = 0
    for d in range(D):
        for f in range(F):
            to_b_t[d, f] = 0.0
            to_b_r[d, f] = 0.0
    for p in range(P):
        for d in range(D):
            mu_a = a_mu[p, d]
            var_a = a_var[p, d]
            acc_t = 0.0
            acc_r = 0.0
            for f in range(F):
                ta, ra, tb, rb, clamped = s2_terms(mu_a, var_a, b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f],
                                                   r_t[p, f], r_r[p, f])
                n_rest += clamped
                acc_t += ta
                acc_r += ra
                to_b_t[d, f] += tb
                to_b_r[d, f] += rb
            to_a_t[p, d] = acc_t
            to_a_r[p, d] = acc_r
    counts[0] += n_rest


@njit(cache=True)
def _gather_rows(values, src, pad, out, e):
    P, D = src.shape
    for p in range(P):
        for d in range(D):
            s = src[p, d]
            out[e, p, d] = values[e, s] if s >= 0 else pad


@njit(cache=True)
def _gather_serial(values, src, pad, out):
    for e in range(out.shape[0]):
        _gather_rows(values, src, pad, out, e)


@njit(cache=True, parallel=True)
def _gather_threads(values, src, pad, out):
    for e in prange(out.shape[0]):
        _gather_rows(values, src, pad, out, e)


def gather(values, src, pad, out):
    """im2col: ``out[e, p, d] = values[e, src[p, d]]``, ``pad`` where ``src[p, d] < 0``; values (L, n).
    Examples on all threads inside :func:`factorgraph.kernels.threaded` (from ``THREADS_MIN`` entries)."""
    threads = use_threads(out.size, THREADS_MIN) and out.shape[0] > 1
    (_gather_threads if threads else _gather_serial)(values, src, pad, out)


@njit(cache=True, inline="always")
def fold_patch(ta, ra, r, p, src, acc_t, acc_r):
    """Patch ``p``'s entry messages (row ``r`` of ``ta, ra``) added to their pixels' float64 sums, entries
    in increasing order (padding entries, ``src < 0``, skipped); the fold's one accumulation step, which the
    fused convolution kernel (:mod:`factorgraph.kernels.chunk_cpu`) shares."""
    for d in range(src.shape[1]):
        i = src[p, d]
        if i >= 0:
            acc_t[i] += ta[r, d]
            acc_r[i] += ra[r, d]


@njit(cache=True, inline="always")
def fold_store(acc_t, acc_r, e, out_t, out_r):
    """Example ``e``'s pixel sums stored in its row of ``out`` (in the output's dtype)."""
    for i in range(out_t.shape[1]):
        out_t[e, i] = acc_t[i]
        out_r[e, i] = acc_r[i]


@njit(cache=True)
def _fold_rows(msg_t, msg_r, src, acc_t, acc_r, out_t, out_r, e):
    """Example ``e``: each patch entry's message added to its pixel's float64 sum, entries in increasing
    order (so every pixel's copies are summed in entry order, the order of the CUDA kernel's CSR walk),
    then stored in the output's dtype."""
    P, D = src.shape
    acc_t[:] = 0.0
    acc_r[:] = 0.0
    ta, ra = msg_t[e].reshape((P, D)), msg_r[e].reshape((P, D))
    for p in range(P):
        fold_patch(ta, ra, p, p, src, acc_t, acc_r)
    fold_store(acc_t, acc_r, e, out_t, out_r)


@njit(cache=True)
def _fold_serial(msg_t, msg_r, src, out_t, out_r):
    acc_t, acc_r = np.empty(out_t.shape[1]), np.empty(out_t.shape[1])
    for e in range(out_t.shape[0]):
        _fold_rows(msg_t, msg_r, src, acc_t, acc_r, out_t, out_r, e)


@njit(cache=True, parallel=True)
def _fold_threads(msg_t, msg_r, src, out_t, out_r):
    for e in prange(out_t.shape[0]):
        _fold_rows(msg_t, msg_r, src, np.empty(out_t.shape[1]), np.empty(out_t.shape[1]), out_t, out_r, e)


def fold(msg_t, msg_r, plan, out_t, out_r):
    """Sum the patch-entry messages (L, P * D) into the input messages (L, n), each pixel's copies in
    increasing entry order (deterministic, threads or not: examples on all threads inside
    :func:`factorgraph.kernels.threaded`, from ``THREADS_MIN`` entries).  ``plan``: ``(src, offsets,
    entries)`` (:func:`factorgraph.equations.im2col.fold_plan`); this kernel walks ``src`` (a scatter into
    per-pixel float64 sums, in entry order), the CUDA kernel the CSR lists."""
    threads = use_threads(msg_t.size, THREADS_MIN) and out_t.shape[0] > 1
    (_fold_threads if threads else _fold_serial)(msg_t, msg_r, plan[0], out_t, out_r)
