"""Numba CPU kernels of the dense layer, fused with the cavity and incremental-marginal updates.

Each kernel touches every weight's ``(tau, rho)`` once per call and allocates nothing per weight.
They compute exactly the NumPy reference of :mod:`factorgraph.equations.weighted_sum` (S1) and
:mod:`factorgraph.equations.inner_product` (S2) plus the slot bookkeeping of
:class:`factorgraph.factor.WeightSlots`; ``tests/test_kernels_cpu.py`` asserts the equality.

``counts`` is an int64 array of guard counters, indexed by the ``G_*`` constants below; a strict
division beyond round-off sets ``counts[G_IMPROPER]`` and the caller raises.
"""

import numpy as np
from numba import njit

from factorgraph import config
from factorgraph.kernels.scalar import s2_terms

G_ROUNDOFF, G_S1_REST, G_SMALL_CAV, G_S2_REST, G_MIN_RHO, G_ALL_TINY, G_IMPROPER = range(7)
GUARD_NAMES = ("strict_division_roundoff", "s1_rest_variance_clamp", "s1_small_cavity",
               "s2_rest_variance_clamp", "min_rho_clamp", "linear_all_tiny_precision", "improper_division")
RTOL = config.STRICT_DIVISION_RTOL
MIN_CAV = config.MIN_CAVITY_PRECISION
MIN_RHO = config.MIN_PRECISION
TINY = config.TINY_PRECISION


@njit(cache=True, inline="always")
def _cavity(q_t, q_r, m_t, m_r, counts):
    r = q_r - m_r
    if r < 0:
        if r < -RTOL * abs(q_r):
            counts[G_IMPROPER] += 1
        else:
            counts[G_ROUNDOFF] += 1
        r = 0.0
    return q_t - m_t, r


@njit(cache=True, inline="always")
def _moments(t, r):
    if r > 0:
        return t / r, 1.0 / r
    return 0.0, np.inf


@njit(cache=True)
def linear_const_fwd(x, wq_t, wq_r, wm_t, wm_r, cq_t, cq_r, cm_t, cm_r, out_mu, out_var, counts):
    """S1 forward with cavities: ``mu_j = sum_k x_k mu(cav W_kj) + mu(cav c_j)``, same for variances."""
    K, J = wq_t.shape
    for j in range(J):
        t, r = _cavity(cq_t[j], cq_r[j], cm_t[j], cm_r[j], counts)
        out_mu[j], out_var[j] = _moments(t, r)
    n_round = 0
    n_bad = 0
    for k in range(K):
        a = x[k]
        if a == 0.0:
            continue
        for j in range(J):
            cr = wq_r[k, j] - wm_r[k, j]
            if cr < 0:
                if cr < -RTOL * abs(wq_r[k, j]):
                    n_bad += 1
                else:
                    n_round += 1
                cr = 0.0
            if cr > 0:
                inv = 1.0 / cr
                out_mu[j] += a * (wq_t[k, j] - wm_t[k, j]) * inv
                out_var[j] += a * a * inv
            else:  # a uniform cavity: mean 0, variance inf (as the reference)
                out_var[j] = np.inf
    counts[G_ROUNDOFF] += n_round
    counts[G_IMPROPER] += n_bad


@njit(cache=True)
def linear_const_bwd(x, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, cq_t, cq_r, cm_t, cm_r, ca_t, ca_r, damp, f_mu, f_var,
                     r_t, r_r, counts):
    """S1 backward to weights and bias, fused with the slot write and ``a <- a + new - old``, where ``a``
    is the marginal itself (``wa``/``ca`` = ``wq``/``cq``) or, in a parallel chunk, its pending change;
    ``new`` is damped toward the old message by ``damp`` (1: no damping)."""
    K, J = wq_t.shape
    _s1_rows(np.ones(1), cq_t.reshape(1, J), cq_r.reshape(1, J), cm_t.reshape(1, J), cm_r.reshape(1, J),
             ca_t.reshape(1, J), ca_r.reshape(1, J), damp, f_mu, f_var, r_t, r_r, counts)
    _s1_rows(x, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, damp, f_mu, f_var, r_t, r_r, counts)


@njit(cache=True, inline="always", error_model="numpy")
def _s1_update(a, a2, q_t, q_r, old_t, old_r, r_t, r_r, f_mu, f_var, damp):
    """One weight's damped S1 message from its cavity ``q / old``, with a single division:
    with ``c = rho_cav``, ``s = c f_var - a^2`` (``= c * rest``) and ``d = c + r_rho s`` (``d = c`` when
    ``rest`` is clamped to 0), ``tau = a (c (r_tau - r_rho f_mu) + r_rho a tau_cav) / d`` and
    ``rho = a^2 r_rho c / d`` -- :func:`~factorgraph.kernels.scalar.s1_term` with ``1 / c`` folded in.
    A cavity with ``c <= 0`` has mean 0 and infinite variance (clamped rest, ``d = 1``).  Branch-free
    (selects), so the row loop vectorises.  Returns (tau, rho, small cavity?, improper?, round-off?,
    clamped?)."""
    ct = q_t - old_t
    cr = q_r - old_r
    small = cr < MIN_CAV
    bad = cr < -RTOL * abs(q_r)
    rnd = cr < 0.0 and not bad
    pos = cr > 0.0
    c = cr if pos else 1.0
    ct = ct if pos else 0.0
    s = c * f_var - a2
    clamp = (not pos) or s < 0.0
    d = c if clamp else c + r_r * s
    inv = 1.0 / d
    nt = a * (c * (r_t - r_r * f_mu) + r_r * a * ct) * inv
    nr = a2 * r_r * c * inv
    return old_t + damp * (nt - old_t), old_r + damp * (nr - old_r), small, bad, rnd, clamp


@njit(cache=True, inline="always")
def _store(q_t, q_r, m_t, m_r, a_t, a_r, k, j, old_t, old_r, nt, nr):
    """Slot ``m[k, j]`` := new message; ``new - old`` added to ``a[k, j]`` (``a`` None: to ``q[k, j]``)."""
    if a_t is None:
        q_t[k, j] += nt - old_t
        q_r[k, j] += nr - old_r
    else:
        a_t[k, j] += nt - old_t
        a_r[k, j] += nr - old_r
    m_t[k, j] = nt
    m_r[k, j] = nr


@njit(cache=True, error_model="numpy")
def _s1_rows_into(x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r):
    """S1 rows: slot ``m`` gets the new messages and ``a`` gets ``new - old``; ``a_t = a_r = None`` means
    the marginal ``q`` itself (the sequential schedule).  Numba compiles the ``None`` case apart, and there
    no second array may alias ``q``, so LLVM vectorises the row loop.  Returns the guard counts
    (round-off, improper, rest, small)."""
    K, J = q_t.shape
    n_round = n_bad = n_rest = n_small = 0
    for k in range(K):
        a = x[k]
        a2 = a * a
        row_rest = 0
        for j in range(J):
            old_t = m_t[k, j]
            old_r = m_r[k, j]
            nt, nr, small, bad, rnd, clamp = _s1_update(a, a2, q_t[k, j], q_r[k, j], old_t, old_r, r_t[j], r_r[j],
                                                        f_mu[j], f_var[j], damp)
            n_small += small
            n_bad += bad
            n_round += rnd
            row_rest += clamp
            _store(q_t, q_r, m_t, m_r, a_t, a_r, k, j, old_t, old_r, nt, nr)
        if a != 0.0:  # s1_term sends G(0, 0) to the terms of a zero input and clamps nothing
            n_rest += row_rest
    return n_round, n_bad, n_rest, n_small


@njit(cache=True)
def _s1_rows(x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r, counts):
    """S1 messages to every b[k, j] of s_j = sum_k x_k b_kj from its cavity (:func:`_s1_update`); writes
    the slot and adds ``new - old`` to ``a``: the marginal itself (``a is q``) or its pending change."""
    if a_t.ctypes.data == q_t.ctypes.data and a_r.ctypes.data == q_r.ctypes.data:
        n_round, n_bad, n_rest, n_small = _s1_rows_into(x, q_t, q_r, m_t, m_r, None, None, damp, f_mu, f_var, r_t,
                                                        r_r)
    else:
        n_round, n_bad, n_rest, n_small = _s1_rows_into(x, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t,
                                                        r_r)
    counts[G_ROUNDOFF] += n_round
    counts[G_IMPROPER] += n_bad
    counts[G_S1_REST] += n_rest
    counts[G_SMALL_CAV] += n_small


@njit(cache=True)
def linear_var_fwd(in_t, in_r, mx_t, mx_r, wq_t, wq_r, cq_t, cq_r, cm_t, cm_r, x_mu, x_var, out_mu, out_var,
                   counts):
    """Input marginal ``min_rho(m_in * m_to_x)`` into ``x_mu, x_var``, then the S2 forward."""
    K, J = wq_t.shape
    for k in range(K):
        t = in_t[k] + mx_t[k]
        r = in_r[k] + mx_r[k]
        if r < MIN_RHO:
            counts[G_MIN_RHO] += 1
            t = t / r * MIN_RHO if r > 0 else 0.0
            r = MIN_RHO
        x_mu[k] = t / r
        x_var[k] = 1.0 / r
    for j in range(J):
        t, r = _cavity(cq_t[j], cq_r[j], cm_t[j], cm_r[j], counts)
        out_mu[j], out_var[j] = _moments(t, r)
    _s2_forward_rows(x_mu, x_var, wq_t, wq_r, out_mu, out_var)


@njit(cache=True, error_model="numpy")
def _s2_forward_rows(x_mu, x_var, q_t, q_r, out_mu, out_var):
    """``out += x @ moments(q)`` for means and S2 variances; branch-free, so the row loop vectorises."""
    K, J = q_t.shape
    for k in range(K):
        mu_a = x_mu[k]
        var_a = x_var[k]
        for j in range(J):
            pos = q_r[k, j] > 0.0
            inv = 1.0 / q_r[k, j]
            mu_b = q_t[k, j] * inv if pos else 0.0
            var_b = inv if pos else np.inf
            out_mu[j] += mu_a * mu_b
            out_var[j] += var_a * (var_b + mu_b * mu_b) + mu_a * mu_a * var_b


@njit(cache=True, inline="always", error_model="numpy")
def _s2_update(mu_a, var_a, q_t, q_r, old_t, old_r, f_mu, f_var, r_t, r_r, damp):
    """One weight's S2 terms (:func:`~factorgraph.kernels.scalar.s2_terms` from its marginal ``q``,
    branch-free): (tau_a, rho_a, damped tau_b, damped rho_b, clamped?)."""
    pos = q_r > 0.0
    inv = 1.0 / q_r
    mu_b = q_t * inv if pos else 0.0
    var_b = inv if pos else np.inf
    ta, ra, nt, nr, clamped = s2_terms(mu_a, var_a, mu_b, var_b, f_mu, f_var, r_t, r_r)
    return ta, ra, old_t + damp * (nt - old_t), old_r + damp * (nr - old_r), clamped


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _s2_rows_into(x_mu, x_var, q_t, q_r, m_t, m_r, a_t, a_r, damp, f_mu, f_var, r_t, r_r, to_x_t, to_x_r):
    """S2 rows: slot ``m`` gets the new weight messages, ``a`` gets ``new - old`` (``None``: the marginal
    ``q`` itself, compiled apart so the row loop vectorises, as in :func:`_s1_rows_into`; ``reassoc``: the
    sums over j may be reordered), ``to_x`` the products over j of the messages to the inputs.  Returns
    the clamps."""
    K, J = q_t.shape
    n_clamp = 0
    for k in range(K):
        mu_a = x_mu[k]
        var_a = x_var[k]
        acc_t = 0.0
        acc_r = 0.0
        for j in range(J):
            old_t = m_t[k, j]
            old_r = m_r[k, j]
            ta, ra, nt, nr, clamped = _s2_update(mu_a, var_a, q_t[k, j], q_r[k, j], old_t, old_r, f_mu[j], f_var[j],
                                                 r_t[j], r_r[j], damp)
            n_clamp += clamped
            acc_t += ta
            acc_r += ra
            _store(q_t, q_r, m_t, m_r, a_t, a_r, k, j, old_t, old_r, nt, nr)
        to_x_t[k] = acc_t
        to_x_r[k] = acc_r
    return n_clamp


@njit(cache=True)
def linear_var_bwd(x_mu, x_var, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, cq_t, cq_r, cm_t, cm_r, ca_t, ca_r, damp, f_mu,
                   f_var, r_t, r_r, to_x_t, to_x_r, counts):
    """S2 backward to inputs and weights (from the pre-update marginals), S1 to the bias, fused with
    the marginal and slot updates; the input message gets the all-tiny edge rule and ``min_rho``."""
    K, J = wq_t.shape
    _s1_rows(np.ones(1), cq_t.reshape(1, J), cq_r.reshape(1, J), cm_t.reshape(1, J), cm_r.reshape(1, J),
             ca_t.reshape(1, J), ca_r.reshape(1, J), damp, f_mu, f_var, r_t, r_r, counts)
    all_tiny = True
    for j in range(J):
        if f_var[j] < 1.0 / TINY or r_r[j] > TINY:
            all_tiny = False
    if wa_t.ctypes.data == wq_t.ctypes.data and wa_r.ctypes.data == wq_r.ctypes.data:
        counts[G_S2_REST] += _s2_rows_into(x_mu, x_var, wq_t, wq_r, wm_t, wm_r, None, None, damp, f_mu, f_var,
                                           r_t, r_r, to_x_t, to_x_r)
    else:
        counts[G_S2_REST] += _s2_rows_into(x_mu, x_var, wq_t, wq_r, wm_t, wm_r, wa_t, wa_r, damp, f_mu, f_var,
                                           r_t, r_r, to_x_t, to_x_r)
    for k in range(K):
        acc_t = to_x_t[k]
        acc_r = to_x_r[k]
        if all_tiny:
            acc_t = 0.0
            acc_r = MIN_RHO
        elif acc_r < MIN_RHO:
            counts[G_MIN_RHO] += 1
            acc_t = acc_t / acc_r * MIN_RHO if acc_r > 0 else 0.0
            acc_r = MIN_RHO
        to_x_t[k] = acc_t
        to_x_r[k] = acc_r
    if all_tiny:
        counts[G_ALL_TINY] += 1

