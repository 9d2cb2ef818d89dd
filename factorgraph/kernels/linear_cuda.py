"""Numba CUDA kernels of the dense layer (CuPy or any CUDA-array-interface arrays).

The same messages as :mod:`factorgraph.kernels.linear_cpu`, laid out for the GPU: forward kernels run
one thread per output ``j`` looping over inputs (coalesced reads of a weight row), the weight updates run
one thread per weight, the message to each input one thread per input.  In the variable-input backward
the input messages are computed before the weight update, so both use the pre-update marginals.
Guard counters are device arrays updated with atomics (only when a guard fires).
"""

import math

import numpy as np
# first: carries a NumPy shim for numba.cuda
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda  # noqa: E402, I001

from factorgraph.kernels import scalar

from factorgraph.kernels.linear_cpu import (
    G_ALL_TINY,
    G_IMPROPER,
    G_MIN_RHO,
    G_ROUNDOFF,
    G_S1_REST,
    G_S2_REST,
    G_SMALL_CAV,
    MIN_CAV,
    MIN_RHO,
    RTOL,
    TINY,
)

_D = device_functions([scalar], ["s1_term", "s2_terms", "damp_toward"])
_s1_term, _s2_terms, _damp = _D["s1_term"], _D["s2_terms"], _D["damp_toward"]


@cuda.jit(device=True, inline=True)
def _cavity(q_t, q_r, m_t, m_r, counts):
    r = q_r - m_r
    if r < 0:
        if r < -RTOL * abs(q_r):
            cuda.atomic.add(counts, G_IMPROPER, 1)
        else:
            cuda.atomic.add(counts, G_ROUNDOFF, 1)
        r = 0.0
    return q_t - m_t, r


@cuda.jit(device=True, inline=True)
def _cavity_moments(q_t, q_r, m_t, m_r, counts):
    """Mean and variance of the cavity ``q / m`` (0 and inf when it is uniform)."""
    t, r = _cavity(q_t, q_r, m_t, m_r, counts)
    if r > 0:
        return t / r, 1.0 / r
    return 0.0, math.inf


@cuda.jit
def _const_fwd(x, wq_t, wq_r, wm_t, wm_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var, counts):
    j = cuda.grid(1)
    K, J = wq_t.shape
    if j >= J:
        return
    mu, var = _cavity_moments(cq_t[j], cq_r[j], cm_t[j], cm_r[j], counts)
    for k in range(K):
        a = x[k]
        if a == 0.0:
            continue
        ct, cr = _cavity(wq_t[k, j], wq_r[k, j], wm_t[k, j], wm_r[k, j], counts)
        if cr > 0:
            mu += a * ct / cr
            var += a * a / cr
        else:
            var = math.inf
    out_mu[j] = mu
    out_var[j] = var


@cuda.jit
def _s1_rows(x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r, counts):
    """S1 message to b[k, j] from its cavity; in-place slot and marginal (one thread per weight)."""
    k, j = cuda.grid(2)
    K, J = q_t.shape
    if k >= K or j >= J:
        return
    a = x[k]
    old_t = m_t[k, j]
    old_r = m_r[k, j]
    ct, cr = _cavity(q_t[k, j], q_r[k, j], old_t, old_r, counts)
    if cr < MIN_CAV:
        cuda.atomic.add(counts, G_SMALL_CAV, 1)
    mu_b = ct / cr if cr > 0 else 0.0
    var_b = 1.0 / cr if cr > 0 else math.inf
    nt, nr, clamped = _s1_term(a, mu_b, var_b, f_mu[j], f_var[j], r_t[j], r_r[j])
    if clamped:
        cuda.atomic.add(counts, G_S1_REST, 1)
    nt = _damp(old_t, nt, damp)
    nr = _damp(old_r, nr, damp)
    a_t[k, j] += nt - old_t
    a_r[k, j] += nr - old_r
    m_t[k, j] = nt
    m_r[k, j] = nr


@cuda.jit
def _var_input(in_t, in_r, mx_t, mx_r, x_mu, x_var, counts):
    k = cuda.grid(1)
    if k < in_t.shape[0]:
        t = in_t[k] + mx_t[k]
        r = in_r[k] + mx_r[k]
        if r < MIN_RHO:
            cuda.atomic.add(counts, G_MIN_RHO, 1)
            t = t / r * MIN_RHO if r > 0 else 0.0
            r = MIN_RHO
        x_mu[k] = t / r
        x_var[k] = 1.0 / r


@cuda.jit
def _var_fwd(x_mu, x_var, wq_t, wq_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var, counts):
    j = cuda.grid(1)
    K, J = wq_t.shape
    if j >= J:
        return
    mu, var = _cavity_moments(cq_t[j], cq_r[j], cm_t[j], cm_r[j], counts)
    for k in range(K):
        mu_a = x_mu[k]
        var_a = x_var[k]
        mu_b = wq_t[k, j] / wq_r[k, j]
        var_b = 1.0 / wq_r[k, j]
        mu += mu_a * mu_b
        var += var_a * (var_b + mu_b * mu_b) + mu_a * mu_a * var_b
    out_mu[j] = mu
    out_var[j] = var


@cuda.jit
def _var_to_x(x_mu, x_var, wq_t, wq_r, f_mu, f_var, r_t, r_r, to_x_t, to_x_r, counts):
    k = cuda.grid(1)
    K, J = wq_t.shape
    if k >= K:
        return
    all_tiny = True
    for j in range(J):
        if f_var[j] < 1.0 / TINY or r_r[j] > TINY:
            all_tiny = False
    mu_a = x_mu[k]
    var_a = x_var[k]
    acc_t = 0.0
    acc_r = 0.0
    for j in range(J):
        mu_b = wq_t[k, j] / wq_r[k, j]
        var_b = 1.0 / wq_r[k, j]
        ta, ra, _, _, _ = _s2_terms(mu_a, var_a, mu_b, var_b, f_mu[j], f_var[j], r_t[j], r_r[j])
        acc_t += ta  # a clamp is counted once, by the weight kernel
        acc_r += ra
    if all_tiny:
        acc_t = 0.0
        acc_r = MIN_RHO
        if k == 0:
            cuda.atomic.add(counts, G_ALL_TINY, 1)
    elif acc_r < MIN_RHO:
        cuda.atomic.add(counts, G_MIN_RHO, 1)
        acc_t = acc_t / acc_r * MIN_RHO if acc_r > 0 else 0.0
        acc_r = MIN_RHO
    to_x_t[k] = acc_t
    to_x_r[k] = acc_r


@cuda.jit
def _s2_weights(x_mu, x_var, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, damp, f_mu, f_var, r_t, r_r, counts):
    k, j = cuda.grid(2)
    K, J = wq_t.shape
    if k >= K or j >= J:
        return
    mu_a = x_mu[k]
    var_a = x_var[k]
    mu_b = wq_t[k, j] / wq_r[k, j]
    var_b = 1.0 / wq_r[k, j]
    _, _, nt, nr, clamped = _s2_terms(mu_a, var_a, mu_b, var_b, f_mu[j], f_var[j], r_t[j], r_r[j])
    if clamped:
        cuda.atomic.add(counts, G_S2_REST, 1)
    old_t = wm_t[k, j]
    old_r = wm_r[k, j]
    nt = _damp(old_t, nt, damp)
    nr = _damp(old_r, nr, damp)
    wa_t[k, j] += nt - old_t
    wa_r[k, j] += nr - old_r
    wm_t[k, j] = nt
    wm_r[k, j] = nr


def _grid2(K, J, tk=8, tj=32):
    return ((K + tk - 1) // tk, (J + tj - 1) // tj), (tk, tj)


def linear_const_fwd(x, wq_t, wq_r, wm_t, wm_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var, counts):
    launch(_const_fwd, grid(wq_t.shape[1]), x, wq_t, wq_r, wm_t, wm_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var,
           counts)


def s1_rows(x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r, counts):
    blocks, threads = _grid2(*q_t.shape)
    launch(_s1_rows, (blocks, threads), x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r, counts)


_ONES = {}


def _ones(dtype):
    """A cached device array ``[1.0]`` (the bias coefficient)."""
    key = str(dtype)
    if key not in _ONES:
        _ONES[key] = cuda.to_device(np.ones(1, dtype))
    return _ONES[key]


def linear_const_bwd(x, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, cq_t, cq_r, cm_t, cm_r, ca_t, ca_r, damp, f_mu, f_var,
                     r_t, r_r, counts):
    J = cq_t.shape[0]
    s1_rows(_ones(cq_t.dtype), cq_t.reshape(1, J), cq_r.reshape(1, J), cm_t.reshape(1, J), cm_r.reshape(1, J),
            ca_t.reshape(1, J), ca_r.reshape(1, J), damp, f_mu, f_var, r_t, r_r, counts)
    s1_rows(x, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, damp, f_mu, f_var, r_t, r_r, counts)


def linear_var_fwd(in_t, in_r, mx_t, mx_r, wq_t, wq_r, cq_t, cq_r, cm_t, cm_r, x_mu, x_var, out_mu, out_var,
                   counts):
    launch(_var_input, grid(in_t.shape[0]), in_t, in_r, mx_t, mx_r, x_mu, x_var, counts)
    launch(_var_fwd, grid(wq_t.shape[1]), x_mu, x_var, wq_t, wq_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var, counts)


def linear_var_bwd(x_mu, x_var, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, cq_t, cq_r, cm_t, cm_r, ca_t, ca_r, damp, f_mu,
                   f_var, r_t, r_r, to_x_t, to_x_r, counts):
    J = cq_t.shape[0]
    s1_rows(_ones(cq_t.dtype), cq_t.reshape(1, J), cq_r.reshape(1, J), cm_t.reshape(1, J), cm_r.reshape(1, J),
            ca_t.reshape(1, J), ca_r.reshape(1, J), damp, f_mu, f_var, r_t, r_r, counts)
    launch(_var_to_x, grid(wq_t.shape[0]), x_mu, x_var, wq_t, wq_r, f_mu, f_var, r_t, r_r, to_x_t, to_x_r,
           counts)
    blocks, threads = _grid2(*wq_t.shape)
    launch(_s2_weights, (blocks, threads), x_mu, x_var, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, damp, f_mu, f_var, r_t,
           r_r, counts)


KERNELS = {"linear_const_fwd": _const_fwd, "linear_s1_rows": _s1_rows, "linear_var_input": _var_input,
           "linear_var_fwd": _var_fwd, "linear_var_to_x": _var_to_x, "linear_s2_weights": _s2_weights}
