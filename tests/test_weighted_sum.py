"""Oracle tests for scalar rule S1, the weighted sum with constant coefficients (SPEC 4.1).

The oracles (``tests/oracles_linear.py``) evaluate the moment-parameter form of SPEC 4.1/13 in exact
rational arithmetic with explicit loops and explicit sums over ``j != k``:

    mu_k  = (mu_r - sum_{j != k} a_j mu_j - mu_c) / a_k
    var_k = (var_r + sum_{j != k} a_j^2 var_j + var_c) / a_k^2

and the comparison is made in natural parameters.  The tolerance of each element is ``RTOL[dtype]``
times the error scale that rounding of the *inputs the library is given* can cause in a correct
implementation:

* The library receives the stored forward message ``m_s`` and must form the variance of the other
  summands as ``var_s - a_k^2 var_k``; rounding of ``var_s`` is amplified by
  ``kappa = var_s / (var_r + rest_var)``.  So ``|d rho| <= RTOL * rho * (1 + kappa)``.
* For ``tau`` the residual ``mu_r - (mu_s - a_k mu_k)`` can cancel, so
  ``|d tau| <= RTOL * (|tau| (1 + kappa) + |a_k| (|mu_r| + |mu_s| + |a_k mu_k|) / (var_r + rest_var))``.

The random-case generators keep ``kappa`` small for most elements (checked by an assertion), so the
tolerance is the plain relative tolerance almost everywhere.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles_linear as orc
from conftest import RTOL
from factorgraph import Gaussian, guards
from factorgraph.equations import (
    s1_backward_to_b,
    s1_backward_to_bias,
    s1_forward,
    s1_term_message,
)

N_CASES = 210

HYP = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ------------------------------------------------------------------------------------------------
# helpers (test-side only: random inputs and the comparison)
# ------------------------------------------------------------------------------------------------
def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _lead_shape(rng, i):
    """Cycle through the three uses of S1: vector a (K,), matrix a (P, K), batched a (n, P, K)."""
    kind = i % 3
    if kind == 0:
        return ()
    if kind == 1:
        return (int(rng.integers(1, 4)),)
    return (int(rng.integers(1, 3)), int(rng.integers(1, 4)))


def _random_case(rng, dtype, lead, var_range=(0.1, 10.0), rho_r_range=(1e-2, 1e2), mean_scale=3.0,
                 bias=True, zero_coeff_prob=0.0):
    K = int(rng.integers(1, 6))
    J = int(rng.integers(1, 4))
    a = rng.normal(0.0, 1.0, lead + (K,)) * _loguniform(rng, 0.3, 3.0, lead + (K,))
    if zero_coeff_prob:
        a[rng.uniform(size=a.shape) < zero_coeff_prob] = 0.0
        a[..., 0] = np.where(np.all(a == 0, axis=-1), 1.0, a[..., 0])  # keep var_s > 0
    var_b = _loguniform(rng, *var_range, (K, J))
    mu_b = rng.normal(0.0, mean_scale, (K, J))
    case = {
        "a": a.astype(dtype),
        "tau_b": (mu_b / var_b).astype(dtype),
        "rho_b": (1.0 / var_b).astype(dtype),
        "tau_c": None,
        "rho_c": None,
    }
    if bias:
        var_c = _loguniform(rng, *var_range, (J,))
        mu_c = rng.normal(0.0, mean_scale, J)
        case["tau_c"] = (mu_c / var_c).astype(dtype)
        case["rho_c"] = (1.0 / var_c).astype(dtype)
    rho_r = _loguniform(rng, *rho_r_range, lead + (J,))
    mu_r = rng.normal(0.0, 2 * mean_scale, lead + (J,))
    case["tau_r"] = (mu_r * rho_r).astype(dtype)
    case["rho_r"] = rho_r.astype(dtype)
    return case


def _gauss(tau, rho):
    return Gaussian(np.asarray(tau), np.asarray(rho))


def _forward_message(mu, var, dtype):
    """The stored forward message (natural parameters in ``dtype``) from exact moments."""
    mu, var = orc.to_float(mu), orc.to_float(var)
    return Gaussian((mu / var).astype(dtype), (1.0 / var).astype(dtype))


def _assert_scaled(got, expected, scale, rtol, what, context=None):
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite output {got}"
    err = np.abs(got - expected)
    bad = err > rtol * scale
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(rtol * scale, 1e-300), 0)), bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} element(s) outside tolerance; worst at {i}: got {got[i]!r}, "
            f"expected {expected[i]!r}, allowed {rtol * scale[i]!r}; context {context}"
        )


def _check_messages(msg, tau_exp, rho_exp, tau_scale, rho_scale, dtype, what, context=None):
    assert msg.tau.dtype == dtype and msg.rho.dtype == dtype, f"{what}: dtype {msg.tau.dtype} != {dtype}"
    _assert_scaled(msg.rho, rho_exp, rho_scale, RTOL[dtype], what + " rho", context)
    _assert_scaled(msg.tau, tau_exp, tau_scale, RTOL[dtype], what + " tau", context)


def _mom(tau, rho):
    tau = np.asarray(tau, np.float64)
    rho = np.asarray(rho, np.float64)
    return tau / rho, 1.0 / rho


def _s1_b_expected(case):
    """Oracle messages to b (unreduced) and their error scales, see module docstring."""
    c = case
    tau, rho, denom = orc.s1_backward_to_b(c["a"], c["tau_b"], c["rho_b"], c["tau_r"], c["rho_r"],
                                           c["tau_c"], c["rho_c"])
    mu_s, var_s = orc.s1_forward(c["a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
    tau, rho = orc.to_float(tau), orc.to_float(rho)
    a = np.asarray(c["a"], np.float64)[..., :, None]
    mu_b, _ = _mom(c["tau_b"], c["rho_b"])
    mu_r, _ = _mom(c["tau_r"], c["rho_r"])
    mu_sf, var_sf = orc.to_float(mu_s), orc.to_float(var_s)
    kappa = var_sf[..., None, :] / denom
    rho_scale = rho * (1 + kappa)
    tau_scale = np.abs(tau) * (1 + kappa) + np.abs(a) * (
        np.abs(mu_r[..., None, :]) + np.abs(mu_sf[..., None, :]) + np.abs(a * mu_b)) / denom
    return tau, rho, tau_scale, rho_scale, kappa, (mu_s, var_s)


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
def test_s1_forward_matches_loops_for_vector_matrix_and_batched_coefficients(dtype, record_cases):
    rng = np.random.default_rng(11)
    for i in range(N_CASES):
        lead = _lead_shape(rng, i)
        c = _random_case(rng, dtype, lead, mean_scale=10.0, bias=bool(i % 2))
        m_c = _gauss(c["tau_c"], c["rho_c"]) if c["tau_c"] is not None else None
        out = s1_forward(c["a"], _gauss(c["tau_b"], c["rho_b"]), m_c)
        mu, var = orc.s1_forward(c["a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
        mu, var = orc.to_float(mu), orc.to_float(var)
        tau_exp, rho_exp = mu / var, 1.0 / var
        # mean may cancel: its error scale is sum |a_k mu_k| + |mu_c|
        mu_b, _ = _mom(c["tau_b"], c["rho_b"])
        mscale = np.abs(np.asarray(c["a"], np.float64)) @ np.abs(mu_b)
        if m_c is not None:
            mscale = mscale + np.abs(_mom(c["tau_c"], c["rho_c"])[0])
        assert out.shape == lead + (c["tau_b"].shape[1],)
        _check_messages(out, tau_exp, rho_exp, np.abs(tau_exp) + mscale / var, rho_exp, dtype,
                        "s1_forward", context=(i, lead))
    record_cases("s1_forward", N_CASES)


def test_s1_forward_without_bias_ignores_nothing_else():
    # one hand-checkable case: s = 2 b1 - 3 b2, b1 ~ N(1, 4), b2 ~ N(-2, 0.5)
    m_b = Gaussian(np.array([[1 / 4], [-2 / 0.5]]), np.array([[1 / 4], [1 / 0.5]]))
    out = s1_forward(np.array([2.0, -3.0]), m_b)
    mu, var = 2 * 1 - 3 * -2, 4 * 4 + 9 * 0.5
    np.testing.assert_allclose(out.rho, [1 / var], rtol=1e-15)
    np.testing.assert_allclose(out.tau, [mu / var], rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# backward to b
# ------------------------------------------------------------------------------------------------
def test_s1_backward_to_b_unreduced_matches_moment_form(dtype, record_cases):
    rng = np.random.default_rng(12)
    kappas = []
    for i in range(N_CASES):
        lead = _lead_shape(rng, i)
        c = _random_case(rng, dtype, lead, bias=bool(i % 4), zero_coeff_prob=0.05)
        tau, rho, tscale, rscale, kappa, (mu_s, var_s) = _s1_b_expected(c)
        kappas.append(kappa.ravel())
        m_s = _forward_message(mu_s, var_s, dtype)
        msg = s1_backward_to_b(c["a"], _gauss(c["tau_b"], c["rho_b"]), m_s,
                               _gauss(c["tau_r"], c["rho_r"]), reduce=False)
        _check_messages(msg, tau, rho, tscale, rscale, dtype, "s1_backward_to_b", context=(i, lead))
    # the tolerance is the plain relative one for the bulk of the elements
    assert np.median(np.concatenate(kappas)) < 3
    record_cases("s1_backward_to_b", N_CASES)


def test_s1_backward_to_b_reduce_multiplies_messages_over_uses(dtype, record_cases):
    rng = np.random.default_rng(13)
    n = 0
    for i in range(N_CASES):
        lead = _lead_shape(rng, i) or (1,)
        c = _random_case(rng, dtype, lead, bias=True)
        tau, rho, tscale, rscale, _, (mu_s, var_s) = _s1_b_expected(c)
        m_s = _forward_message(mu_s, var_s, dtype)
        args = (c["a"], _gauss(c["tau_b"], c["rho_b"]), m_s, _gauss(c["tau_r"], c["rho_r"]))
        red = s1_backward_to_b(*args, reduce=True)
        unred = s1_backward_to_b(*args, reduce=False)
        axes = tuple(range(len(lead)))
        K, J = c["tau_b"].shape
        assert red.shape == (K, J)
        # against the oracle: product over uses = sum of natural parameters (explicit loop)
        tau_sum, rho_sum = np.zeros((K, J)), np.zeros((K, J))
        ts_sum, rs_sum = np.zeros((K, J)), np.zeros((K, J))
        for idx in np.ndindex(*lead):
            tau_sum += tau[idx]
            rho_sum += rho[idx]
            ts_sum += tscale[idx]
            rs_sum += rscale[idx]
        _check_messages(red, tau_sum, rho_sum, ts_sum, rs_sum, dtype, "s1_backward_to_b reduce",
                        context=(i, lead))
        # and against the library's own unreduced messages
        np.testing.assert_allclose(red.tau, unred.tau.sum(axis=axes), rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * ts_sum.max())
        np.testing.assert_allclose(red.rho, unred.rho.sum(axis=axes), rtol=RTOL[dtype])
        n += 1
    record_cases("s1_backward_to_b", n)


def test_s1_backward_to_b_edge_regimes_match_moment_form(record_cases):
    """Tiny and huge precisions, large |mean|, negative tau (float64)."""
    dtype = np.float64
    rng = np.random.default_rng(14)
    regimes = [
        # cavities at the minimum precision 1e-8, sharp backward message
        dict(var_range=(1e7, 1e8), rho_r_range=(1e6, 1e8), mean_scale=1e3),
        # very sharp cavities, almost uninformative backward message
        dict(var_range=(1e-10, 1e-8), rho_r_range=(1e-12, 1e-10), mean_scale=1e-2),
        # large means
        dict(var_range=(0.5, 2.0), rho_r_range=(0.1, 10.0), mean_scale=1e6),
        # tiny backward precision, moderate cavities
        dict(var_range=(0.1, 10.0), rho_r_range=(1e-14, 1e-10), mean_scale=3.0),
        # huge backward precision
        dict(var_range=(0.1, 10.0), rho_r_range=(1e10, 1e14), mean_scale=3.0),
    ]
    n = 0
    for r, kw in enumerate(regimes):
        for i in range(12):
            c = _random_case(rng, dtype, _lead_shape(rng, i), **kw)
            # negative tau_r: make every backward mean strongly negative in half the cases
            if i % 2:
                c["tau_r"] = -np.abs(c["tau_r"]) - c["rho_r"] * kw["mean_scale"] * 10
            tau, rho, tscale, rscale, _, (mu_s, var_s) = _s1_b_expected(c)
            m_s = _forward_message(mu_s, var_s, dtype)
            msg = s1_backward_to_b(c["a"], _gauss(c["tau_b"], c["rho_b"]), m_s,
                                   _gauss(c["tau_r"], c["rho_r"]), reduce=False)
            _check_messages(msg, tau, rho, tscale, rscale, dtype, "s1_backward_to_b edge",
                            context=(r, i))
            n += 1
    record_cases("s1_backward_to_b", n)


def test_s1_backward_to_b_hand_computed_two_term_case():
    # s = 2 b1 + 1 b2 + c with b1 ~ N(1, 1), b2 ~ N(0, 2), c ~ N(3, 1); r ~ N(10, 0.5).
    # message to b1: mean (10 - 0 - 3) / 2 = 3.5, var (0.5 + 2 + 1) / 4 = 0.875
    m_b = Gaussian(np.array([[1.0], [0.0]]), np.array([[1.0], [0.5]]))
    m_s = Gaussian(np.array([5.0 / 7.0]), np.array([1.0 / 7.0]))  # mean 2 + 0 + 3, var 4 + 2 + 1
    r = Gaussian(np.array([20.0]), np.array([2.0]))
    msg = s1_backward_to_b(np.array([2.0, 1.0]), m_b, m_s, r, reduce=False)
    np.testing.assert_allclose(msg.rho[0, 0], 1 / 0.875, rtol=1e-14)
    np.testing.assert_allclose(msg.tau[0, 0], 3.5 / 0.875, rtol=1e-14)
    # message to b2: mean (10 - 2 - 3) / 1 = 5, var (0.5 + 4 + 1) = 5.5
    np.testing.assert_allclose(msg.rho[1, 0], 1 / 5.5, rtol=1e-14)
    np.testing.assert_allclose(msg.tau[1, 0], 5 / 5.5, rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# backward to the bias
# ------------------------------------------------------------------------------------------------
def test_s1_backward_to_bias_matches_moment_form(dtype, record_cases):
    rng = np.random.default_rng(15)
    for i in range(N_CASES):
        lead = _lead_shape(rng, i) or (1,)
        c = _random_case(rng, dtype, lead, bias=True)
        tau, rho, denom = orc.s1_backward_to_bias(c["a"], c["tau_b"], c["rho_b"], c["tau_c"],
                                                  c["rho_c"], c["tau_r"], c["rho_r"])
        tau, rho = orc.to_float(tau), orc.to_float(rho)
        mu_s, var_s = orc.s1_forward(c["a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
        m_s = _forward_message(mu_s, var_s, dtype)
        kappa = orc.to_float(var_s) / denom
        mu_c, _ = _mom(c["tau_c"], c["rho_c"])
        mu_r, _ = _mom(c["tau_r"], c["rho_r"])
        rscale = rho * (1 + kappa)
        resid_scale = np.abs(mu_r) + np.abs(orc.to_float(mu_s)) + np.abs(mu_c)
        tscale = np.abs(tau) * (1 + kappa) + resid_scale / denom
        m_c = _gauss(c["tau_c"], c["rho_c"])
        r = _gauss(c["tau_r"], c["rho_r"])
        unred = s1_backward_to_bias(m_c, m_s, r, reduce=False)
        _check_messages(unred, tau, rho, tscale, rscale, dtype, "s1_backward_to_bias", context=i)
        red = s1_backward_to_bias(m_c, m_s, r, reduce=True)
        axes = tuple(range(len(lead)))
        assert red.shape == c["tau_c"].shape
        _check_messages(red, tau.sum(axis=axes), rho.sum(axis=axes), tscale.sum(axis=axes),
                        rscale.sum(axis=axes), dtype, "s1_backward_to_bias reduce", context=i)
    record_cases("s1_backward_to_bias", N_CASES)


# ------------------------------------------------------------------------------------------------
# the elementwise term message
# ------------------------------------------------------------------------------------------------
def test_s1_term_message_matches_moment_form(dtype, record_cases):
    """Elementwise: the sum is ``a b + rest`` with ``rest ~ N(rest_mu, rest_var)`` drawn independently."""
    rng = np.random.default_rng(16)
    n = 4 * N_CASES
    a = (rng.normal(0, 1, n) * _loguniform(rng, 0.1, 10, n)).astype(dtype)
    mu_b = rng.normal(0, 5, n).astype(dtype)
    var_b = _loguniform(rng, 1e-2, 1e2, n).astype(dtype)
    rest_mu = rng.normal(0, 5, n)
    rest_var = _loguniform(rng, 1e-2, 1e2, n)
    mu_r = rng.normal(0, 10, n)
    rho_r = _loguniform(rng, 1e-3, 1e3, n).astype(dtype)
    tau_r = (mu_r * rho_r).astype(dtype)
    # what the library is given: the forward moments of the whole sum
    mu_s = (rest_mu + a.astype(np.float64) * mu_b).astype(dtype)
    var_s = (rest_var + a.astype(np.float64) ** 2 * var_b).astype(dtype)
    # the oracle uses exactly the rest the library's inputs imply, in exact arithmetic
    tau_e = np.empty(n)
    rho_e = np.empty(n)
    kappa = np.empty(n)
    tsc = np.empty(n)
    for i in range(n):
        ai = orc.fr(a[i])
        rmu = orc.fr(mu_s[i]) - ai * orc.fr(mu_b[i])
        rvar = orc.fr(var_s[i]) - ai * ai * orc.fr(var_b[i])
        assert rvar > 0
        var_r = 1 / orc.fr(rho_r[i])
        mr = orc.fr(tau_r[i]) * var_r
        mu_k = (mr - rmu) / ai
        var_k = (var_r + rvar) / (ai * ai)
        tau_e[i] = float(mu_k / var_k)
        rho_e[i] = float(1 / var_k)
        kappa[i] = float(orc.fr(var_s[i]) / (var_r + rvar))
        resid_scale = abs(mr) + abs(orc.fr(mu_s[i])) + abs(ai * orc.fr(mu_b[i]))
        tsc[i] = float(abs(ai) * resid_scale / (var_r + rvar))
    msg = s1_term_message(a, mu_b, var_b, mu_s, var_s, tau_r, rho_r)
    _check_messages(msg, tau_e, rho_e, np.abs(tau_e) * (1 + kappa) + tsc, rho_e * (1 + kappa), dtype,
                    "s1_term_message")
    record_cases("s1_term_message", n)


# ------------------------------------------------------------------------------------------------
# limits and degenerate coefficients
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_s1_backward_uniform_backward_message_gives_uniform_exactly(dtype, lead):
    rng = np.random.default_rng(17)
    c = _random_case(rng, dtype, lead, bias=True, zero_coeff_prob=0.3)
    m_b = _gauss(c["tau_b"], c["rho_b"])
    m_c = _gauss(c["tau_c"], c["rho_c"])
    J = c["tau_b"].shape[1]
    r = Gaussian.uniform(lead + (J,), dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            m_s = s1_forward(c["a"], m_b, m_c)
            for reduce in (False, True):
                to_b = s1_backward_to_b(c["a"], m_b, m_s, r, reduce=reduce)
                to_c = s1_backward_to_bias(m_c, m_s, r, reduce=reduce)
                for g in (to_b, to_c):
                    assert g.tau.dtype == dtype
                    assert np.all(g.tau == 0) and np.all(g.rho == 0)


def test_s1_backward_rho_r_to_zero_converges_to_uniform(record_cases):
    """As rho_r -> 0 with a fixed backward mean the message tends to G(0, 0), smoothly, with no warnings."""
    rng = np.random.default_rng(18)
    c = _random_case(rng, np.float64, (), bias=True)
    m_b = _gauss(c["tau_b"], c["rho_b"])
    mu_s, var_s = orc.s1_forward(c["a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
    m_s = _forward_message(mu_s, var_s, np.float64)
    mu_r = np.full(c["tau_r"].shape, -7.5)
    prev = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            for e in range(1, 301, 7):
                rho_r = np.full(mu_r.shape, 10.0 ** -e)
                c["tau_r"], c["rho_r"] = mu_r * rho_r, rho_r
                msg = s1_backward_to_b(c["a"], m_b, m_s, _gauss(c["tau_r"], rho_r), reduce=False)
                tau, rho, tsc, rsc, _, _ = _s1_b_expected(c)
                _check_messages(msg, tau, rho, tsc, rsc, np.float64, "s1 rho_r limit", context=e)
                if prev is not None:
                    assert np.all(msg.rho <= prev.rho) and np.all(np.abs(msg.tau) <= np.abs(prev.tau))
                prev = msg
            assert np.all(prev.rho < 1e-290) and np.all(np.abs(prev.tau) < 1e-285)
            msg = s1_backward_to_b(c["a"], m_b, m_s, Gaussian.uniform(mu_r.shape), reduce=False)
            assert np.all(msg.tau == 0) and np.all(msg.rho == 0)
    record_cases("s1_backward_to_b", 43)


def test_s1_backward_zero_coefficient_gives_uniform(dtype):
    a = np.array([[0.0, 1.5, -2.0], [0.7, 0.0, 0.0]], dtype)
    m_b = Gaussian.from_mean_var(np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]], dtype),
                                 np.array([[0.5, 2.0], [1.0, 1.0], [3.0, 0.25]], dtype))
    m_s = s1_forward(a, m_b)
    r = Gaussian(np.array([[3.0, -1.0], [0.5, 2.0]], dtype), np.array([[1.0, 2.0], [0.1, 5.0]], dtype))
    with np.errstate(all="raise"):
        msg = s1_backward_to_b(a, m_b, m_s, r, reduce=False)
    assert np.all(msg.rho[0, 0] == 0) and np.all(msg.tau[0, 0] == 0)
    assert np.all(msg.rho[1, 1:] == 0) and np.all(msg.tau[1, 1:] == 0)
    assert np.all(msg.rho[0, 1:] > 0) and np.all(msg.rho[1, 0] > 0)


def test_s1_backward_counts_small_cavity_guard():
    m_b = Gaussian(np.array([[0.0], [0.0]]), np.array([[1e-9], [1.0]]))
    a = np.array([1.0, 1.0])
    m_s = s1_forward(a, m_b)
    s1_backward_to_b(a, m_b, m_s, Gaussian(np.array([1.0]), np.array([1.0])))
    assert guards.get("s1_small_cavity") == 1


# ------------------------------------------------------------------------------------------------
# properties (hypothesis)
# ------------------------------------------------------------------------------------------------
_prec = st.floats(1e-8, 1e8)
_mean = st.floats(-1e4, 1e4)
_coef = st.floats(-1e3, 1e3)


@st.composite
def _s1_inputs(draw, rho_r=st.floats(0.0, 1e8)):
    K = draw(st.integers(1, 5))
    J = draw(st.integers(1, 3))
    P = draw(st.integers(1, 3))
    a = np.array(draw(st.lists(_coef, min_size=P * K, max_size=P * K))).reshape(P, K)
    rho_b = np.array(draw(st.lists(_prec, min_size=K * J, max_size=K * J))).reshape(K, J)
    mu_b = np.array(draw(st.lists(_mean, min_size=K * J, max_size=K * J))).reshape(K, J)
    rho_c = np.array(draw(st.lists(_prec, min_size=J, max_size=J)))
    mu_c = np.array(draw(st.lists(_mean, min_size=J, max_size=J)))
    rr = np.array(draw(st.lists(rho_r, min_size=P * J, max_size=P * J))).reshape(P, J)
    mr = np.array(draw(st.lists(_mean, min_size=P * J, max_size=P * J))).reshape(P, J)
    return a, Gaussian(mu_b * rho_b, rho_b), Gaussian(mu_c * rho_c, rho_c), Gaussian(mr * rr, rr)


@HYP
@given(_s1_inputs())
def test_s1_backward_uniform_in_uniform_out_property(dtype, record_cases, inp):
    a, m_b, m_c, _ = inp
    a, m_b, m_c = a.astype(dtype), m_b.astype(dtype), m_c.astype(dtype)
    m_s = s1_forward(a, m_b, m_c)
    r = Gaussian.uniform(m_s.shape, dtype)
    with np.errstate(divide="raise", invalid="raise", over="raise", under="ignore"):
        to_b = s1_backward_to_b(a, m_b, m_s, r, reduce=False)
        to_c = s1_backward_to_bias(m_c, m_s, r, reduce=False)
    assert np.all(to_b.tau == 0) and np.all(to_b.rho == 0)
    assert np.all(to_c.tau == 0) and np.all(to_c.rho == 0)
    record_cases("s1_backward_to_b", 1)


@HYP
@given(_s1_inputs())
def test_s1_outputs_are_finite_and_proper_over_wide_ranges(inp):
    a, m_b, m_c, r = inp
    with np.errstate(divide="raise", invalid="raise", over="raise", under="ignore"):
        m_s = s1_forward(a, m_b, m_c)
        to_b = s1_backward_to_b(a, m_b, m_s, r, reduce=True)
        to_c = s1_backward_to_bias(m_c, m_s, r, reduce=True)
    for g in (m_s, to_b, to_c):
        assert np.all(np.isfinite(g.tau)) and np.all(np.isfinite(g.rho))
        assert np.all(g.rho >= 0)
    # a message can never be sharper than a^2 rho_r summed over uses (D >= 1)
    bound = ((a * a)[:, :, None] * r.rho[:, None, :]).sum(axis=0)
    assert np.all(to_b.rho <= bound * (1 + 1e-12))
