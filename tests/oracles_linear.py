"""Naive, loop-based oracles for the linear-algebra factors S1 (weighted sum) and S2 (inner product).

Independent of the code under test: nothing here imports ``factorgraph``.  Every oracle reads the
natural parameters it is given as *exact* rationals (``fractions.Fraction`` of the stored float, which is
exact for float32 and float64) and evaluates the moment-parameter form of SPEC 4.1 / 4.2 in exact
arithmetic, with explicit loops and explicit sums over ``j != k``.  The results are therefore the exact
value of the formula for the given inputs; only the library under test rounds.

Conventions
-----------
* A Gaussian is passed as two arrays ``(tau, rho)``; ``rho > 0`` everywhere an oracle needs moments.
* Arrays returned with ``dtype=object`` hold ``Fraction`` entries; :func:`to_float` converts them.
* ``None`` for the bias means "no bias".
"""

from fractions import Fraction

import numpy as np


def fr(x):
    """Exact rational value of a float (float32 and float64 values are dyadic rationals)."""
    return Fraction(float(x))


def to_float(arr):
    """Convert an object array of Fractions (or a Fraction) to float64, correctly rounded."""
    if isinstance(arr, Fraction):
        return float(arr)
    out = np.empty(arr.shape, np.float64)
    for idx in np.ndindex(*arr.shape):
        out[idx] = float(arr[idx])
    return out


def exact_moments(tau, rho):
    """Elementwise exact ``(mean, var) = (tau / rho, 1 / rho)`` as object arrays; needs ``rho > 0``."""
    tau = np.asarray(tau)
    rho = np.asarray(rho)
    mu = np.empty(tau.shape, object)
    var = np.empty(tau.shape, object)
    for idx in np.ndindex(*tau.shape):
        t, r = fr(tau[idx]), fr(rho[idx])
        assert r > 0, "oracle needs proper messages"
        mu[idx] = t / r
        var[idx] = 1 / r
    return mu, var


def natural_from_moments(mu, var):
    """Exact natural parameters ``(mu / var, 1 / var)`` of one Gaussian given as Fractions."""
    return mu / var, 1 / var


# --------------------------------------------------------------------------------------------------
# S1: s_j = sum_k a_k b_kj + c_j with constants a
# --------------------------------------------------------------------------------------------------
def s1_forward(a, tau_b, rho_b, tau_c=None, rho_c=None):
    """Exact forward moments ``(mu_s, var_s)`` of ``s = a @ b + c``; ``a`` (..., K), ``b`` (K, J)."""
    a = np.asarray(a)
    K, J = np.shape(tau_b)
    mu_b, var_b = exact_moments(tau_b, rho_b)
    if tau_c is not None:
        mu_c, var_c = exact_moments(tau_c, rho_c)
    lead = a.shape[:-1]
    mu_s = np.empty(lead + (J,), object)
    var_s = np.empty(lead + (J,), object)
    for idx in np.ndindex(*lead):
        for j in range(J):
            m = Fraction(0)
            v = Fraction(0)
            for k in range(K):
                ak = fr(a[idx + (k,)])
                m += ak * mu_b[k, j]
                v += ak * ak * var_b[k, j]
            if tau_c is not None:
                m += mu_c[j]
                v += var_c[j]
            mu_s[idx + (j,)] = m
            var_s[idx + (j,)] = v
    return mu_s, var_s


def s1_backward_to_b(a, tau_b, rho_b, tau_r, rho_r, tau_c=None, rho_c=None):
    """Exact S1 messages to every ``b_kj`` for every use, shape (..., K, J), in the moment form.

    ``mu_k = (mu_r - sum_{i != k} a_i mu_i - mu_c) / a_k`` and
    ``var_k = (var_r + sum_{i != k} a_i^2 var_i + var_c) / a_k^2``, converted to ``(tau, rho)``;
    a zero coefficient receives ``G(0, 0)``.  Also returns ``denom = var_r + rest variance`` (floats),
    which the tests use to state the conditioning of each element.

    Returns ``(tau, rho, denom)``: two object arrays of Fractions and a float array.
    """
    a = np.asarray(a)
    K, J = np.shape(tau_b)
    mu_b, var_b = exact_moments(tau_b, rho_b)
    if tau_c is not None:
        mu_c, var_c = exact_moments(tau_c, rho_c)
    mu_r, var_r = exact_moments(tau_r, rho_r)
    lead = a.shape[:-1]
    tau = np.empty(lead + (K, J), object)
    rho = np.empty(lead + (K, J), object)
    denom = np.empty(lead + (K, J), np.float64)
    for idx in np.ndindex(*lead):
        for j in range(J):
            for k in range(K):
                rest_mu = Fraction(0)
                rest_var = Fraction(0)
                for i in range(K):
                    if i == k:
                        continue
                    ai = fr(a[idx + (i,)])
                    rest_mu += ai * mu_b[i, j]
                    rest_var += ai * ai * var_b[i, j]
                if tau_c is not None:
                    rest_mu += mu_c[j]
                    rest_var += var_c[j]
                mr, vr = mu_r[idx + (j,)], var_r[idx + (j,)]
                denom[idx + (k, j)] = float(vr + rest_var)
                ak = fr(a[idx + (k,)])
                if ak == 0:
                    tau[idx + (k, j)] = Fraction(0)
                    rho[idx + (k, j)] = Fraction(0)
                    continue
                mu_k = (mr - rest_mu) / ak
                var_k = (vr + rest_var) / (ak * ak)
                tau[idx + (k, j)], rho[idx + (k, j)] = natural_from_moments(mu_k, var_k)
    return tau, rho, denom


def s1_backward_to_bias(a, tau_b, rho_b, tau_c, rho_c, tau_r, rho_r):
    """Exact S1 messages to the bias for every use, shape (..., J): coefficient 1, moment form.

    ``mu = mu_r - sum_k a_k mu_k``, ``var = var_r + sum_k a_k^2 var_k``.  Returns ``(tau, rho, denom)``.
    """
    a = np.asarray(a)
    K, J = np.shape(tau_b)
    mu_b, var_b = exact_moments(tau_b, rho_b)
    mu_r, var_r = exact_moments(tau_r, rho_r)
    lead = a.shape[:-1]
    tau = np.empty(lead + (J,), object)
    rho = np.empty(lead + (J,), object)
    denom = np.empty(lead + (J,), np.float64)
    for idx in np.ndindex(*lead):
        for j in range(J):
            rest_mu = Fraction(0)
            rest_var = Fraction(0)
            for k in range(K):
                ak = fr(a[idx + (k,)])
                rest_mu += ak * mu_b[k, j]
                rest_var += ak * ak * var_b[k, j]
            mu = mu_r[idx + (j,)] - rest_mu
            var = var_r[idx + (j,)] + rest_var
            denom[idx + (j,)] = float(var)
            tau[idx + (j,)], rho[idx + (j,)] = natural_from_moments(mu, var)
    return tau, rho, denom


# --------------------------------------------------------------------------------------------------
# S2: z_j = sum_k a_k b_kj + c_j with a and b both Gaussian variables
# --------------------------------------------------------------------------------------------------
def _v_naive(mu_a, var_a, mu_b, var_b):
    """``V = m2_a m2_b - mu_a^2 mu_b^2``, the naive way (exact here, so no cancellation error)."""
    m2a = var_a + mu_a * mu_a
    m2b = var_b + mu_b * mu_b
    return m2a * m2b - mu_a * mu_a * mu_b * mu_b


def s2_forward(tau_a, rho_a, tau_b, rho_b, tau_c=None, rho_c=None):
    """Exact forward moments of ``z = a @ b + c``; ``a`` (..., K), ``b`` (K, J), ``c`` (J,)."""
    K, J = np.shape(tau_b)
    mu_a, var_a = exact_moments(tau_a, rho_a)
    mu_b, var_b = exact_moments(tau_b, rho_b)
    if tau_c is not None:
        mu_c, var_c = exact_moments(tau_c, rho_c)
    lead = mu_a.shape[:-1]
    mu_z = np.empty(lead + (J,), object)
    var_z = np.empty(lead + (J,), object)
    for idx in np.ndindex(*lead):
        for j in range(J):
            m = Fraction(0)
            v = Fraction(0)
            for k in range(K):
                m += mu_a[idx + (k,)] * mu_b[k, j]
                v += _v_naive(mu_a[idx + (k,)], var_a[idx + (k,)], mu_b[k, j], var_b[k, j])
            if tau_c is not None:
                m += mu_c[j]
                v += var_c[j]
            mu_z[idx + (j,)] = m
            var_z[idx + (j,)] = v
    return mu_z, var_z


def s2_backward(tau_a, rho_a, tau_b, rho_b, tau_r, rho_r, tau_c=None, rho_c=None):
    """Exact S2 messages to ``a`` and to ``b`` per use (unreduced), SPEC 4.2 in moment form.

    For the term ``a_k b_kj`` of output ``j`` let ``rest_mu = sum_{i != k} mu_ai mu_bij + mu_c`` and
    ``rest_var = sum_{i != k} V_ij + var_c``, and ``denom = var_r + rest_var``.  Then the message to
    ``b_kj`` has ``var = denom / m2_ak`` and ``mean = mu_ak (mu_r - rest_mu) / m2_ak``; the message to
    ``a_k`` from output ``j`` swaps the roles (``m2_bkj``, ``mu_bkj``), and ``a_k`` receives the product
    over ``j``.

    Returns ``(tau_a, rho_a), (tau_b, rho_b), denom``: the messages to ``a`` (..., K) (already multiplied
    over outputs j), to ``b`` (..., K, J) (one per use, not reduced), and ``denom`` (..., K, J) floats.
    """
    K, J = np.shape(tau_b)
    mu_a, var_a = exact_moments(tau_a, rho_a)
    mu_b, var_b = exact_moments(tau_b, rho_b)
    if tau_c is not None:
        mu_c, var_c = exact_moments(tau_c, rho_c)
    mu_r, var_r = exact_moments(tau_r, rho_r)
    lead = mu_a.shape[:-1]
    ta = np.empty(lead + (K,), object)
    ra = np.empty(lead + (K,), object)
    tb = np.empty(lead + (K, J), object)
    rb = np.empty(lead + (K, J), object)
    denom = np.empty(lead + (K, J), np.float64)
    for idx in np.ndindex(*lead):
        for k in range(K):
            ta[idx + (k,)] = Fraction(0)
            ra[idx + (k,)] = Fraction(0)
        for j in range(J):
            for k in range(K):
                rest_mu = Fraction(0)
                rest_var = Fraction(0)
                for i in range(K):
                    if i == k:
                        continue
                    rest_mu += mu_a[idx + (i,)] * mu_b[i, j]
                    rest_var += _v_naive(mu_a[idx + (i,)], var_a[idx + (i,)], mu_b[i, j], var_b[i, j])
                if tau_c is not None:
                    rest_mu += mu_c[j]
                    rest_var += var_c[j]
                d = var_r[idx + (j,)] + rest_var
                denom[idx + (k, j)] = float(d)
                resid = mu_r[idx + (j,)] - rest_mu
                mak, vak = mu_a[idx + (k,)], var_a[idx + (k,)]
                mbk, vbk = mu_b[k, j], var_b[k, j]
                m2a = vak + mak * mak
                m2b = vbk + mbk * mbk
                # message to b_kj in moments, then natural parameters
                t, r = natural_from_moments(mak * resid / m2a, d / m2a)
                tb[idx + (k, j)], rb[idx + (k, j)] = t, r
                # message to a_k from output j
                t, r = natural_from_moments(mbk * resid / m2b, d / m2b)
                ta[idx + (k,)] += t
                ra[idx + (k,)] += r
    return (ta, ra), (tb, rb), denom
