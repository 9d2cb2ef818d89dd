"""Oracle tests for ReLUMoment, Block52 and the truncated-normal moments (SPEC 1.2, 3.1, 3.2).

Oracles: adaptive quadrature of the defining integrals (``oracles_1d``) and ``scipy.stats.truncnorm``.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RTOL
from factorgraph.equations import block52, block52_log, relu_moments, truncated_moments

import oracles_1d as O

N_CASES = 220
TINY = 1e-290  # below this a value is "underflowed"; compare in log space instead


def _close(got, want, rtol, atol=0.0):
    return abs(got - want) <= atol + rtol * abs(want)


def _relu_cases(rng, n):
    """Half: standardised mean x = mu / sigma in [-12, 12]; half: wide absolute ranges."""
    half = n // 2
    var1 = 10.0 ** rng.uniform(-6, 4, half)
    mu1 = rng.uniform(-12, 12, half) * np.sqrt(var1)
    var2 = 10.0 ** rng.uniform(-4, 3, n - half)
    mu2 = rng.uniform(-20, 20, n - half)
    return np.concatenate([mu1, mu2]), np.concatenate([var1, var2])


# named edge cases: (mu, var)
RELU_EDGE = [
    (0.0, 1e-10),
    (1e-5, 1e-10),  # mean 1 sigma above 0, tiny variance
    (-1e-5, 1e-10),
    (50 * 1e-5, 1e-10),  # 50 sigma above 0
    (-50 * 1e-5, 1e-10),  # 50 sigma below 0: everything underflows to 0
    (-30.0, 1.0),
    (-8.0, 1.0),
    (50.0, 1.0),
    (-50.0, 1.0),
    (1e3, 1e-6),
    (-1e3, 1e-6),
    (0.0, 1e6),
    (-3.0, 1e4),
]


# ----- ReLUMoment -------------------------------------------------------------------------------------
def _tail_tol(x, k, eps):
    """Extra relative tolerance of the closed forms deep in the lower tail (x = mean / sd << 0).

    There R1 ~ sigma phi(x) / x^2 is a difference of terms x^2 larger and R2 ~ 2 sigma^2 phi(x) / |x|^3
    one of terms x^4 / 2 larger; the round-off of the exponent -x^2 / 2 (~x^2 eps) is amplified by
    that ratio.  At x = -20 this is ~1e-8; the values there are below 1e-80 sigma^k.
    """
    if x >= 0:
        return 0.0
    return 4 * eps * x**4 if k == 1 else 2 * eps * x**6


def _check_relu(mu, var, r1, r2, rtol, eps=np.finfo(np.float64).eps):
    tiny = TINY if eps < 1e-10 else 1e-30  # float32: values below ~1e-30 are round-off noise
    for i in range(len(mu)):
        m, v = float(mu[i]), float(var[i])
        x = m / math.sqrt(v)
        for k, got in ((1, float(r1[i])), (2, float(r2[i]))):
            want = O.relu_moment(m, v, k)
            tol = rtol + _tail_tol(x, k, eps)
            if want < tiny:
                assert abs(got) < 10 * tiny, (m, v, k, got, want)
            else:
                assert _close(got, want, tol), (m, v, k, got, want, abs(got - want) / want)


def test_relu_moments_random_vs_quadrature(dtype, record_cases):
    rng = np.random.default_rng(101)
    mu, var = _relu_cases(rng, N_CASES)
    mu, var = mu.astype(dtype), var.astype(dtype)
    r1, r2 = relu_moments(mu, var)
    assert r1.shape == r2.shape == mu.shape
    # f32: the oracle sees the same (rounded) inputs, so only the arithmetic differs
    _check_relu(mu, var, r1, r2, RTOL[dtype], np.finfo(dtype).eps)
    record_cases("relu_moments", N_CASES)


@pytest.mark.parametrize("mu,var", RELU_EDGE)
def test_relu_moments_edge_cases(mu, var):
    r1, r2 = relu_moments(np.array([mu]), np.array([var]))
    assert np.all(np.isfinite(r1)) and np.all(np.isfinite(r2))
    assert r1[0] >= 0 and r2[0] >= 0
    _check_relu([mu], [var], r1, r2, 1e-8)


def test_relu_moments_limits():
    """Far above zero max(a, 0) = a: R1 = mu, R2 = var + mu^2; far below: 0."""
    r1, r2 = relu_moments(np.array([1e3, -1e3]), np.array([1e-6, 1e-6]))
    assert r1[0] == pytest.approx(1e3, rel=1e-15)
    assert r2[0] == pytest.approx(1e6 + 1e-6, rel=1e-15)
    assert r1[1] == 0.0 and r2[1] == 0.0


# ----- Block52 ----------------------------------------------------------------------------------------
def _block_cases(rng, n):
    mu1 = rng.uniform(-8, 8, n)
    mu2 = rng.uniform(-8, 8, n)
    var1 = 10.0 ** rng.uniform(-4, 2, n)
    var2 = 10.0 ** rng.uniform(-4, 2, n)
    return mu1, var1, mu2, var2


def _product_t(mu1, var1, mu2, var2):
    """Standardised mean mu_m / sigma_m of the product density (where the truncation cuts it)."""
    c, sd = O.product_bump(mu1, var1, mu2, var2)
    return c / sd


def _check_block(args, got, rtol):
    mu1, var1, mu2, var2 = (float(x) for x in args)
    for k in range(3):
        want = O.block52(mu1, var1, mu2, var2, k)
        g = float(got[k])
        if want < TINY:
            assert 0.0 <= g < 1e-280, (args, k, g, want)
        else:
            assert _close(g, want, rtol), (args, k, g, want, abs(g - want) / want)


def test_block52_random_vs_quadrature(record_cases):
    rng = np.random.default_rng(202)
    mu1, var1, mu2, var2 = _block_cases(rng, N_CASES)
    b0, b1, b2 = block52(mu1, var1, mu2, var2)
    n_nonzero = 0
    for i in range(N_CASES):
        args = (mu1[i], var1[i], mu2[i], var2[i])
        _check_block(args, (b0[i], b1[i], b2[i]), RTOL[np.float64])
        n_nonzero += b0[i] > TINY
    assert n_nonzero > N_CASES // 3  # the draw exercises non-trivial masses
    record_cases("block52", N_CASES)


BLOCK_EDGE = [
    # (mu1, var1, mu2, var2)
    (0.0, 1e-10, 0.0, 1.0),
    (1e-5, 1e-10, 0.0, 1.0),
    (-50e-5, 1e-10, 0.0, 1.0),  # product 50 sigma below 0: zero
    (50e-5, 1e-10, 0.0, 1.0),
    (-3.0, 1.0, -2.0, 1.0),  # negative means
    (-6.0, 0.5, -5.0, 2.0),
    (50.0, 1.0, 50.0, 1.0),
    (-50.0, 1.0, 3.0, 100.0),
    (1e3, 1e-6, 1e3, 1e-6),
    (0.5, 1e-10, 0.5 + 1e-5, 1e-10),
    (2.0, 1e8, -1.0, 1e-2),
]


@pytest.mark.parametrize("args", BLOCK_EDGE)
def test_block52_edge_cases(args):
    got = block52(*(np.array([x]) for x in args))
    for g in got:
        assert np.all(np.isfinite(g)) and np.all(g >= 0)
    _check_block(args, [g[0] for g in got], 1e-8)


def test_block52_infinite_variance_gives_zero():
    """pdf with infinite variance is 0, so a uniform message contributes no mass (SPEC 1.5, 3.2)."""
    inf = np.inf
    mu1 = np.array([0.3, -2.0, 1.0, 0.0])
    var1 = np.array([inf, 1.0, inf, inf])
    mu2 = np.array([1.0, 0.0, -4.0, 0.0])
    var2 = np.array([2.0, inf, inf, 1e-10])
    b0, b1, b2 = block52(mu1, var1, mu2, var2)
    for b in (b0, b1, b2):
        np.testing.assert_array_equal(b, 0.0)
    for i in range(4):
        for k in range(3):
            assert O.block52(mu1[i], var1[i], mu2[i], var2[i], k) == 0.0
    log_b0, mean, var = block52_log(mu1 / var1, 1 / var1, mu2 / var2, 1 / var2)
    assert np.all(log_b0 == -np.inf)


def test_block52_symmetric():
    rng = np.random.default_rng(303)
    mu1, var1, mu2, var2 = _block_cases(rng, 500)
    a = block52(mu1, var1, mu2, var2)
    b = block52(mu2, var2, mu1, var1)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-300)


def test_block52_log_consistent_with_quadrature(record_cases):
    """block52_log gives (log B0, mean, var) of the truncated product; check against quadrature and
    against block52, including cases where B0 itself underflows."""
    rng = np.random.default_rng(404)
    mu1, var1, mu2, var2 = _block_cases(rng, N_CASES)
    # add far-apart pairs whose B0 underflows (log B0 ~ -1e3 .. -1e5)
    mu1 = np.concatenate([mu1, [0.0, -5.0, 4.0]])
    var1 = np.concatenate([var1, [1e-4, 1e-3, 0.01]])
    mu2 = np.concatenate([mu2, [10.0, 5.0, -4.0]])
    var2 = np.concatenate([var2, [1e-4, 1e-3, 0.01]])
    n = len(mu1)
    log_b0, mean, var = block52_log(mu1 / var1, 1 / var1, mu2 / var2, 1 / var2)
    b0, b1, b2 = block52(mu1, var1, mu2, var2)
    n_checked = n_tail = 0
    for i in range(n):
        want_lb, want_mean, want_var = O.block52_log_moments(mu1[i], var1[i], mu2[i], var2[i])
        if want_lb == -math.inf:
            assert log_b0[i] == -np.inf or log_b0[i] < -700
            continue
        assert abs(log_b0[i] - want_lb) <= 1e-9 * max(1.0, abs(want_lb)), (i, log_b0[i], want_lb)
        sd = math.sqrt(want_var)
        assert abs(mean[i] - want_mean) <= 1e-8 * (abs(want_mean) + sd), (i, mean[i], want_mean)
        assert _close(var[i], want_var, 1e-8), (i, var[i], want_var)
        n_checked += 1
        n_tail += _product_t(mu1[i], var1[i], mu2[i], var2[i]) < -20
        # consistency with the raw form where it does not underflow
        if b0[i] > TINY:
            assert b0[i] == pytest.approx(math.exp(log_b0[i]), rel=1e-12)
            assert b1[i] / b0[i] == pytest.approx(mean[i], rel=1e-9, abs=1e-300)
            assert b2[i] / b0[i] - (b1[i] / b0[i]) ** 2 == pytest.approx(
                var[i], rel=1e-6, abs=1e-9 * mean[i] ** 2
            )
    assert n_checked >= N_CASES
    assert n_tail >= 10  # the draw reaches products cut far out in their lower tail
    record_cases("block52", n_checked)


# ----- truncated normal -------------------------------------------------------------------------------
def _check_trunc(mu, sigma, got_mean, got_var, got_logp, rtol_mean, rtol_var):
    want_mean, want_var, want_logp = O.truncnorm_moments(mu, sigma)
    assert abs(got_mean - want_mean) <= rtol_mean * (abs(want_mean) + sigma), (mu, sigma, got_mean, want_mean)
    assert _close(got_var, want_var, rtol_var), (mu, sigma, got_var, want_var, got_var / want_var - 1)
    assert abs(got_logp - want_logp) <= 1e-12 * max(1.0, abs(want_logp)), (mu, sigma, got_logp, want_logp)


def test_truncated_moments_random_vs_truncnorm(record_cases):
    rng = np.random.default_rng(505)
    sigma = 10.0 ** rng.uniform(-5, 2, N_CASES)
    # truncnorm evaluates the same closed form and shares its cancellation below t = -25 (there the
    # quadrature oracle is used, see test_truncated_moments_far_lower_tail)
    mu = rng.uniform(-25, 25, N_CASES) * sigma
    mean, var, logp = truncated_moments(mu, sigma)
    for i in range(N_CASES):
        _check_trunc(mu[i], sigma[i], mean[i], var[i], logp[i], 1e-10, 1e-7)
    record_cases("truncated_moments", N_CASES)


@pytest.mark.parametrize(
    "mu,sigma",
    [(0.0, 1e-5), (1e-5, 1e-5), (-1e-5, 1e-5), (-20e-5, 1e-5), (50e-5, 1e-5), (50.0, 1.0),
     (-8.0, 2.0), (1e3, 1e-3), (-3.0, 1e3), (-20.0, 1.0)],
)
def test_truncated_moments_edge_cases(mu, sigma):
    mean, var, logp = truncated_moments(np.array([mu]), np.array([sigma]))
    assert np.isfinite(mean[0]) and np.isfinite(var[0]) and np.isfinite(logp[0])
    assert mean[0] >= 0 and var[0] > 0
    _check_trunc(mu, sigma, mean[0], var[0], logp[0], 1e-10, 1e-8)


@pytest.mark.parametrize("t", [-20.0, -20.5, -30.0, -50.0, -100.0, -300.0, -577.0, -1000.0, -1e4])
@pytest.mark.parametrize("sigma", [1.0, 1e-4, 3.7])
def test_truncated_moments_far_lower_tail(t, sigma):
    """Moments of N(t sigma, sigma^2) on a >= 0 against quadrature.  truncnorm evaluates the closed form
    1 - v (v + t), which cancels to ~eps t^4 relative error here (2e-5 at t = -100, floored to
    1e-300 sigma^2 below t ~ -500), so it cannot serve as the oracle in the tail."""
    mean, var, logp = truncated_moments(np.array([t * sigma]), np.array([sigma]))
    want_mean, want_var, want_logp = O.truncated_quad(t * sigma, sigma)
    assert mean[0] == pytest.approx(want_mean, rel=1e-8)
    assert var[0] == pytest.approx(want_var, rel=1e-8)
    assert logp[0] == pytest.approx(want_logp, rel=1e-9)


def test_truncated_moments_tail_is_continuous():
    """No jump where an implementation switches between the direct form and a tail expansion."""
    t = -np.linspace(5, 60, 2000)
    mean, var, _ = truncated_moments(t, np.ones_like(t))
    # mean ~ 1/|t|, var ~ 1/t^2: both smooth and decreasing in |t|
    assert np.all(np.diff(mean) < 0) and np.all(np.diff(var) < 0)
    assert np.all(np.abs(np.diff(np.log(var), 2)) < 1e-4)


# ----- dtype ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", [np.float64, np.float32])
def test_rectified_preserve_dtype(dt):
    mu = np.array([0.5, -1.0], dt)
    var = np.array([1.0, 2.0], dt)
    out = list(relu_moments(mu, var)) + list(block52(mu, var, var, mu + 2))
    out += list(truncated_moments(mu, np.sqrt(var)))
    assert [o.dtype for o in out] == [np.dtype(dt)] * len(out)


# ----- properties -------------------------------------------------------------------------------------
finite_mu = st.floats(-1e4, 1e4, allow_nan=False)
pos_var = st.floats(1e-12, 1e8, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(finite_mu, pos_var)
def test_relu_moments_finite_and_ordered(mu, var):
    r1, r2 = relu_moments(np.array([mu]), np.array([var]))
    assert np.isfinite(r1[0]) and np.isfinite(r2[0])
    assert r1[0] >= 0 and r2[0] >= 0
    # Jensen: E[max(a,0)^2] >= E[max(a,0)]^2
    assert r2[0] >= r1[0] ** 2 * (1 - 1e-9)


@settings(max_examples=150, deadline=None)
@given(finite_mu, pos_var, finite_mu, pos_var)
def test_block52_finite_nonnegative(mu1, var1, mu2, var2):
    with np.errstate(under="ignore"):
        b = block52(np.array([mu1]), np.array([var1]), np.array([mu2]), np.array([var2]))
        log_b0, mean, var = block52_log(
            np.array([mu1 / var1]), np.array([1 / var1]), np.array([mu2 / var2]), np.array([1 / var2])
        )
    for x in b:
        assert np.isfinite(x[0]) and x[0] >= 0
    assert not np.isnan(log_b0[0]) and log_b0[0] < np.inf
    assert np.isfinite(mean[0]) and mean[0] >= 0 and np.isfinite(var[0]) and var[0] >= 0


def test_block52_far_tail_not_nan():
    """block52(-1783, 1e-12, 0, 1): the product sits 1.8e9 sd below 0, B0 = 0 and B1 = B2 = 0 (the
    closed-form truncated mean used to overflow here and give B2 = 0 * inf = NaN)."""
    b = block52(np.array([-1783.0]), np.array([1e-12]), np.array([0.0]), np.array([1.0]))
    assert [float(x[0]) for x in b] == [0.0, 0.0, 0.0]


def test_block52_log_far_tail_mean_nonnegative():
    """The product N(-3, 1e-12) N(0, 1) restricted to a >= 0, 3e6 sd out: mean ~ sigma^2 / 3 ~ 3.3e-13,
    variance ~ (sigma^2 / 3)^2 (the closed form gave a negative mean here)."""
    rho1, rho2 = np.array([1e12]), np.array([1.0])
    _, mean, var = block52_log(-3.0 * rho1, rho1, 0.0 * rho2, rho2)
    var_m = 1 / (1e12 + 1.0)
    mu_m = -3.0 * 1e12 * var_m
    assert mean[0] == pytest.approx(var_m / abs(mu_m), rel=1e-6)
    assert var[0] == pytest.approx((var_m / abs(mu_m)) ** 2, rel=1e-6)


@pytest.mark.parametrize("mu,var,rtol", [(-10.0, 1.0, 1e-12), (-20.0, 1.0, 1e-12), (-30.0, 1.0, 1e-12),
                                         (-100.0, 19.0, 1e-12), (-120.0, 19.0, 1e-12), (-1e3, 900.0, 1e-12),
                                         (-165.0, 19.0, 1e-8)])
def test_relu_moments_in_the_lower_tail_against_80_digits(mu, var, rtol):
    """Far below zero the raw-moment formula ``sigma phi + mu Phi`` cancels (3e-8 relative error in R2 at
    x = -30, and R2 = -2e-309 at mu = -165, var = 19, where the results are subnormal); the truncated form
    stays within ``rtol`` of 80-digit values (1e-8 for the subnormal case, whose spacing is 5e-324)."""
    import mpmath as mp

    with mp.workdps(80):
        m, v = mp.mpf(mu), mp.mpf(var)
        s = mp.sqrt(v)
        pdf, cdf = mp.npdf(m / s), mp.ncdf(m / s)
        want = (s * pdf + m * cdf, s * m * pdf + (v + m * m) * cdf)
        r1, r2 = relu_moments(np.array([mu]), np.array([var]))
        for got, w in zip((r1[0], r2[0]), want):
            assert got > 0
            assert abs(mp.mpf(float(got)) - w) <= rtol * w
