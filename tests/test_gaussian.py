"""Oracle tests for the Gaussian message primitives (SPEC 1).

Oracles used here, none shared with the library:

* moment formulas of the random-variable operations (SPEC 1.3), written out per element;
* ``scipy.stats.truncnorm`` for the moment-matched truncation to ``x >= 0`` on random cases;
* for the extreme truncation cases, adaptive quadrature (``scipy.integrate.quad``) of the truncated
  density in a rescaled variable, which has no cancellation even at ``mu / sigma = -1e4``
  (``scipy.stats.truncnorm`` itself is wrong there: at ``t = -1e3`` it returns a negative variance).
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import truncnorm

from conftest import RTOL
from factorgraph import Gaussian, ImproperMessageError, clamp_min_rho, config, divide, guards
from factorgraph import truncate_nonneg

HYP = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _random_moments(rng, n, dtype, mean_scale=5.0, var_range=(1e-3, 1e3)):
    mu = rng.normal(0.0, mean_scale, n).astype(dtype)
    var = _loguniform(rng, *var_range, n).astype(dtype)
    return mu, var


def _rel(got, expected):
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    return np.abs(got - expected) / np.abs(expected)


# ------------------------------------------------------------------------------------------------
# construction and validation
# ------------------------------------------------------------------------------------------------
def test_construction_stores_natural_parameters(dtype):
    tau = np.array([1.5, -2.0, 0.0], dtype)
    rho = np.array([3.0, 0.5, 0.0], dtype)
    g = Gaussian(tau, rho, check=True)
    assert g.tau.dtype == dtype and g.rho.dtype == dtype
    np.testing.assert_array_equal(g.tau, tau)
    np.testing.assert_array_equal(g.rho, rho)
    assert g.shape == (3,)


def test_construction_broadcasts_parameters():
    g = Gaussian(np.zeros((2, 3)), np.array([1.0, 2.0, 3.0]))
    assert g.tau.shape == g.rho.shape == (2, 3)
    np.testing.assert_array_equal(g.rho[1], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("tau, rho", [(0.0, -1e-30), (1.0, -1.0), (0.0, -np.inf)])
def test_check_rejects_negative_precision(dtype, tau, rho):
    with pytest.raises(ValueError):
        Gaussian(np.array([0.5, tau], dtype), np.array([1.0, rho], dtype), check=True)
    Gaussian(np.array([0.5, tau], dtype), np.array([1.0, rho], dtype), check=False)  # no check, no error


@pytest.mark.parametrize("tau, rho", [(np.nan, 1.0), (0.0, np.nan), (np.inf, 1.0), (0.0, np.inf),
                                      (-np.inf, 0.0)])
def test_check_rejects_nan_and_inf(dtype, tau, rho):
    with pytest.raises(ValueError):
        Gaussian(np.array([tau], dtype), np.array([rho], dtype), check=True)


def test_validate_accepts_proper_and_uniform_messages(dtype):
    Gaussian(np.array([0.0, 1.0, -1e30], dtype), np.array([0.0, 1e-30, 1e30], dtype)).validate()


@pytest.mark.parametrize("var", [0.0, -1.0, -1e-300])
def test_from_mean_var_rejects_nonpositive_variance(var):
    with pytest.raises(ValueError):
        Gaussian.from_mean_var(np.array([1.0, 1.0]), np.array([1.0, var]))


def test_from_mean_var_rejects_nan_mean():
    with pytest.raises(ValueError):
        Gaussian.from_mean_var(np.array([np.nan]), np.array([1.0]))


def test_from_mean_var_round_trip(dtype):
    rng = np.random.default_rng(1)
    mu, var = _random_moments(rng, 500, dtype, var_range=(1e-12, 1e12))
    g = Gaussian.from_mean_var(mu, var)
    assert g.tau.dtype == dtype and g.rho.dtype == dtype
    for i in range(len(mu)):  # natural parameters by the definition, one element at a time
        m, v = float(mu[i]), float(var[i])
        assert abs(float(g.rho[i]) - 1.0 / v) <= 2 * RTOL[dtype] * (1.0 / v)
        assert abs(float(g.tau[i]) - m / v) <= 2 * RTOL[dtype] * abs(m / v)
    assert g.mean.dtype == dtype and g.var.dtype == dtype
    np.testing.assert_allclose(g.mean, mu, rtol=RTOL[dtype])
    np.testing.assert_allclose(g.var, var, rtol=RTOL[dtype])


def test_from_mean_var_infinite_variance_is_uniform(dtype):
    g = Gaussian.from_mean_var(np.array([3.0, -1.0], dtype), np.array([np.inf, np.inf], dtype))
    assert np.all(g.rho == 0) and np.all(g.tau == 0)


def test_from_mean_m2_round_trip(dtype):
    rng = np.random.default_rng(2)
    mu, var = _random_moments(rng, 500, dtype, var_range=(1e-2, 1e2))
    m2 = (mu.astype(np.float64) ** 2 + var).astype(dtype)
    g = Gaussian.from_mean_m2(mu, m2)
    assert g.tau.dtype == dtype
    # var = m2 - mu^2 cancels when var << mu^2: the error scale of var is m2
    m2_64 = m2.astype(np.float64)
    exact_var = m2_64 - mu.astype(np.float64) ** 2
    assert np.all(np.abs(g.var - exact_var) <= RTOL[dtype] * m2_64)
    assert np.all(np.abs(g.mean - mu) <= RTOL[dtype] * np.abs(mu) * m2_64 / exact_var)
    assert np.all(np.abs(g.m2 - m2_64) <= RTOL[dtype] * m2_64 * m2_64 / exact_var)


def test_from_mean_m2_rejects_second_moment_below_mean_squared():
    with pytest.raises(ValueError):
        Gaussian.from_mean_m2(np.array([2.0]), np.array([3.9]))
    with pytest.raises(ValueError):
        Gaussian.from_mean_m2(np.array([2.0]), np.array([4.0]))


def test_zero_precision_has_mean_zero_and_infinite_variance(dtype):
    # includes the improper G(tau != 0, 0) that tolerant division may leave
    g = Gaussian(np.array([0.0, 2.5, -1.0], dtype), np.array([0.0, 0.0, 0.0], dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            mean, var, m2 = g.mean, g.var, g.m2
    assert np.all(mean == 0)
    assert np.all(np.isposinf(var)) and np.all(np.isposinf(m2))
    assert mean.dtype == dtype and var.dtype == dtype


def test_compiled_moments_equal_the_numpy_forms_bit_for_bit(dtype, monkeypatch):
    """``WithMoments`` (one compiled pass from ``MOMENTS_KERNEL_MIN`` elements on) against ``mean_of`` /
    ``var_of``: ordinary, zero, negative, NaN, tiny and huge precisions, a non-contiguous input."""
    from factorgraph import kernels
    from factorgraph.gaussian import MOMENTS_KERNEL_MIN, WithMoments, mean_of, var_of

    rng = np.random.default_rng(3)
    n = 4 * MOMENTS_KERNEL_MIN
    tau = rng.normal(0, 10, n).astype(dtype)
    rho = (10.0 ** rng.uniform(-30, 30, n)).astype(dtype)
    rho[:5] = [0, -1, np.nan, np.finfo(dtype).tiny, np.finfo(dtype).max]
    tau[5] = np.inf
    monkeypatch.setattr(kernels, "_ENABLED", True)
    with np.errstate(all="ignore"):
        for t, r in ((tau, rho), (tau.reshape(8, -1)[:, ::2], rho.reshape(8, -1)[:, ::2])):
            g = WithMoments(t, r)
            ref_mean, ref_var = mean_of(t, r), var_of(r)
            np.testing.assert_array_equal(g.mean, ref_mean)
            np.testing.assert_array_equal(g.var, ref_var)
            assert g.mean.dtype == dtype and g.var.dtype == dtype and g.mean.shape == t.shape


def test_uniform_is_identity_of_product(dtype):
    u = Gaussian.uniform((4,), dtype)
    assert u.tau.dtype == dtype and np.all(u.tau == 0) and np.all(u.rho == 0)
    g = Gaussian(np.array([1.0, -2.0, 0.0, 3.0], dtype), np.array([0.5, 2.0, 1.0, 0.0], dtype))
    for h in (g * u, u * g):
        np.testing.assert_array_equal(h.tau, g.tau)
        np.testing.assert_array_equal(h.rho, g.rho)


# ------------------------------------------------------------------------------------------------
# product and division
# ------------------------------------------------------------------------------------------------
def test_product_matches_density_product_moments(dtype):
    """N(x; m1, v1) N(x; m2, v2) is proportional to N(x; m, v), 1/v = 1/v1 + 1/v2, m/v = m1/v1 + m2/v2."""
    rng = np.random.default_rng(3)
    m1, v1 = _random_moments(rng, 300, dtype)
    m2, v2 = _random_moments(rng, 300, dtype)
    g = Gaussian.from_mean_var(m1, v1) * Gaussian.from_mean_var(m2, v2)
    assert g.tau.dtype == dtype
    m1, v1, m2, v2 = (x.astype(np.float64) for x in (m1, v1, m2, v2))
    v = 1.0 / (1.0 / v1 + 1.0 / v2)
    m = v * (m1 / v1 + m2 / v2)
    np.testing.assert_allclose(g.var, v, rtol=4 * RTOL[dtype])
    scale = v * (np.abs(m1) / v1 + np.abs(m2) / v2)  # cancellation scale of the mean
    assert np.all(np.abs(g.mean - m) <= 4 * RTOL[dtype] * scale)


def test_strict_division_inverts_product(dtype):
    rng = np.random.default_rng(4)
    a = Gaussian.from_mean_var(*_random_moments(rng, 300, dtype))
    b = Gaussian.from_mean_var(*_random_moments(rng, 300, dtype))
    q = divide(a * b, b)
    assert q.tau.dtype == dtype
    # subtraction after addition: the error scale is the larger operand
    assert np.all(np.abs(q.rho - a.rho) <= RTOL[dtype] * (a.rho + b.rho))
    assert np.all(np.abs(q.tau - a.tau) <= RTOL[dtype] * (np.abs(a.tau) + np.abs(b.tau)))
    q2 = (a * b) / b  # operator form
    np.testing.assert_array_equal(q2.tau, q.tau)
    np.testing.assert_array_equal(q2.rho, q.rho)
    assert guards.get("strict_division_roundoff") == 0


def test_strict_division_of_equal_precisions_gives_zero_without_clamp(dtype):
    num = Gaussian(np.array([1.0, 2.0], dtype), np.array([3.0, 4.0], dtype))
    den = Gaussian(np.array([0.5, 2.0], dtype), np.array([3.0, 4.0], dtype))
    q = divide(num, den)
    np.testing.assert_array_equal(q.rho, [0.0, 0.0])
    np.testing.assert_array_equal(q.tau, [0.5, 0.0])
    assert guards.get("strict_division_roundoff") == 0


def test_strict_division_roundoff_deficit_is_clamped_and_counted():
    rtol = config.STRICT_DIVISION_RTOL
    num = Gaussian(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1e6, 5.0]))
    den = Gaussian(np.array([0.5, 0.5, 1.0]), np.array([1.0 + 0.1 * rtol, 1e6 * (1 + 0.5 * rtol), 2.0]))
    q = divide(num, den)
    np.testing.assert_array_equal(q.rho[:2], [0.0, 0.0])
    assert q.rho[2] == 3.0
    np.testing.assert_array_equal(q.tau, [0.5, 1.5, 2.0])
    assert guards.get("strict_division_roundoff") == 2


@pytest.mark.parametrize("num_rho, den_rho", [(1.0, 1.1), (1.0, 1.0 + 10 * config.STRICT_DIVISION_RTOL),
                                              (1e-3, 1e-3 + 1e-10), (0.0, 1e-300)])
def test_strict_division_real_deficit_raises(num_rho, den_rho):
    num = Gaussian(np.array([0.0, 1.0]), np.array([5.0, num_rho]))
    den = Gaussian(np.array([0.0, 0.0]), np.array([1.0, den_rho]))
    with pytest.raises(ImproperMessageError):
        divide(num, den)
    with pytest.raises(ArithmeticError):  # ImproperMessageError is an ArithmeticError
        num / den


def test_tolerant_division_clamps_small_deficit_and_allows_improper_result(dtype):
    num = Gaussian(np.array([1.0, 2.0, 3.0], dtype), np.array([1.0, 1.0, 4.0], dtype))
    den = Gaussian(np.array([0.25, 0.0, 1.0], dtype), np.array([1.05, 1.0, 1.0], dtype))
    q = divide(num, den, tol=0.1)
    assert q.tau.dtype == dtype
    # deficit -0.05 >= -0.1: precision 0, tau kept: the improper G(0.75, 0)
    assert q.rho[0] == 0 and q.tau[0] == pytest.approx(0.75)
    assert q.rho[1] == 0 and q.tau[1] == 2.0
    assert q.rho[2] == 3.0 and q.tau[2] == 2.0
    assert guards.get("tolerant_division_clamp") == 1
    assert guards.get("strict_division_roundoff") == 0


def test_tolerant_division_default_tolerance():
    tol = config.DIVISION_TOL
    num = Gaussian(np.array([1.0]), np.array([1.0]))
    q = divide(num, Gaussian(np.array([0.0]), np.array([1.0 + 0.5 * tol])), tol=tol)
    assert q.rho[0] == 0 and q.tau[0] == 1.0
    assert guards.get("tolerant_division_clamp") == 1
    with pytest.raises(ImproperMessageError):
        divide(num, Gaussian(np.array([0.0]), np.array([1.0 + 3 * tol])), tol=tol)


def test_tolerant_division_beyond_tolerance_raises():
    num = Gaussian(np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    den = Gaussian(np.array([0.0, 0.0]), np.array([1.05, 1.2]))
    with pytest.raises(ImproperMessageError):
        divide(num, den, tol=0.1)


# ------------------------------------------------------------------------------------------------
# damping, random-variable operations, clamps
# ------------------------------------------------------------------------------------------------
def test_damp_beta_weights_the_new_message(dtype):
    old = Gaussian(np.array([0.0, 2.0], dtype), np.array([1.0, 4.0], dtype))
    new = Gaussian(np.array([10.0, -2.0], dtype), np.array([11.0, 0.0], dtype))
    d = old.damp(new, 0.1)
    assert d.tau.dtype == dtype
    np.testing.assert_allclose(d.tau, [0.9 * 0 + 0.1 * 10, 0.9 * 2 + 0.1 * -2], rtol=RTOL[dtype])
    np.testing.assert_allclose(d.rho, [0.9 * 1 + 0.1 * 11, 0.9 * 4 + 0.1 * 0], rtol=RTOL[dtype])
    for beta, want in ((1.0, new), (0.0, old)):
        d = old.damp(new, beta)
        np.testing.assert_array_equal(d.tau, want.tau)
        np.testing.assert_array_equal(d.rho, want.rho)


def test_scale_matches_moments_of_scaled_variable(dtype):
    rng = np.random.default_rng(5)
    mu, var = _random_moments(rng, 300, dtype)
    g = Gaussian.from_mean_var(mu, var)
    for a in (2.5, -0.3, -7.0, 1e-3):
        h = g.scale(a)
        assert h.tau.dtype == dtype
        np.testing.assert_allclose(h.mean, a * mu.astype(np.float64), rtol=4 * RTOL[dtype])
        np.testing.assert_allclose(h.var, a * a * var.astype(np.float64), rtol=4 * RTOL[dtype])
        back = h.scale(1.0 / a)
        np.testing.assert_allclose(back.tau, g.tau, rtol=4 * RTOL[dtype])
        np.testing.assert_allclose(back.rho, g.rho, rtol=4 * RTOL[dtype])


def test_shift_matches_moments_of_shifted_variable(dtype):
    rng = np.random.default_rng(6)
    mu, var = _random_moments(rng, 300, dtype)
    g = Gaussian.from_mean_var(mu, var)
    for c in (3.0, -11.5):
        h = g.shift(c)
        assert h.tau.dtype == dtype
        mu64 = mu.astype(np.float64)
        assert np.all(np.abs(h.mean - (mu64 + c)) <= 4 * RTOL[dtype] * (np.abs(mu64) + abs(c)))
        np.testing.assert_allclose(h.var, var, rtol=RTOL[dtype])


def test_add_variance_matches_moments(dtype):
    rng = np.random.default_rng(7)
    mu, var = _random_moments(rng, 300, dtype)
    g = Gaussian.from_mean_var(mu, var)
    for v in (0.0, 0.3, 1e4):
        h = g.add_variance(v)
        assert h.tau.dtype == dtype
        np.testing.assert_allclose(h.mean, mu, rtol=4 * RTOL[dtype])
        np.testing.assert_allclose(h.var, var.astype(np.float64) + v, rtol=4 * RTOL[dtype])
    # a uniform message stays uniform
    u = Gaussian.uniform((2,), dtype).add_variance(0.5)
    assert np.all(u.rho == 0) and np.all(u.tau == 0)


def test_scale_rho_keeps_mean_and_multiplies_precision(dtype):
    g = Gaussian.from_mean_var(np.array([1.5, -3.0], dtype), np.array([2.0, 0.25], dtype))
    h = g.scale_rho(0.5)
    np.testing.assert_allclose(h.mean, [1.5, -3.0], rtol=RTOL[dtype])
    np.testing.assert_allclose(h.rho, [0.25, 2.0], rtol=RTOL[dtype])


def test_clamp_min_rho_sets_floor_keeps_mean_and_counts(dtype):
    m = 1e-2
    g = Gaussian(np.array([3.0, 1e-3, -2e-3, 4.0], dtype), np.array([0.0, 1e-3, 4e-3, 2.0], dtype))
    h = clamp_min_rho(g, m)
    assert h.tau.dtype == dtype and h.rho.dtype == dtype
    # G(3, 0) -> G(0, m): mean := 0 when rho = 0
    assert h.rho[0] == pytest.approx(m, rel=RTOL[dtype]) and h.tau[0] == 0
    # proper but too flat: mean kept, precision raised
    np.testing.assert_allclose(h.rho[1:3], [m, m], rtol=RTOL[dtype])
    np.testing.assert_allclose(h.mean[1:3], [1.0, -0.5], rtol=RTOL[dtype])
    # sharp enough: unchanged
    assert h.rho[3] == 2.0 and h.tau[3] == 4.0
    assert guards.get("min_rho_clamp") == 3
    g.clamp_min_rho(m)  # method form counts too
    assert guards.get("min_rho_clamp") == 6


def test_clamp_min_rho_of_improper_message_is_proper_uniform_center(dtype):
    g = Gaussian(np.array([7.0], dtype), np.array([0.0], dtype))
    h = g.clamp_min_rho(config.MIN_PRECISION)
    assert h.tau[0] == 0 and h.rho[0] == np.asarray(config.MIN_PRECISION, dtype)
    h.validate()


# ------------------------------------------------------------------------------------------------
# truncation to x >= 0
# ------------------------------------------------------------------------------------------------
def truncated_moments_quad(mu, var):
    """Mean and variance of N(mu, var) restricted to x >= 0, by quadrature without cancellation.

    With s = sqrt(var) and t = mu / s the truncated density of y = x / s is proportional to
    exp(-(y - t)^2 / 2) on y >= 0.  For t <= 0 substitute y = z / L, L = max(1, -t): the integrand
    exp(-z^2 / (2 L^2) + t z / L) lives on z = O(1).  For t > 0 integrate w = y - t over [-t, inf).
    """
    s = np.sqrt(var)
    t = mu / s
    opts = dict(epsabs=0.0, epsrel=1e-13, limit=200)
    if t <= 0:
        L = max(1.0, -t)
        m = [integrate.quad(lambda z, n=n: z ** n * np.exp(-z * z / (2 * L * L) + t * z / L), 0, np.inf,
                            **opts)[0] for n in range(3)]
        ez = m[1] / m[0]
        vz = m[2] / m[0] - ez * ez
        return s * ez / L, var * vz / (L * L)
    lo = max(-t, -40.0)
    m = [integrate.quad(lambda w, n=n: w ** n * np.exp(-w * w / 2), lo, 0, **opts)[0]
         + integrate.quad(lambda w, n=n: w ** n * np.exp(-w * w / 2), 0, np.inf, **opts)[0]
         for n in range(3)]
    ew = m[1] / m[0]
    vw = m[2] / m[0] - ew * ew
    return s * (t + ew), var * vw


def test_quadrature_oracle_agrees_with_truncnorm_in_its_safe_range():
    # truncnorm itself loses digits in the left tail (about 4e-11 relative in the variance at t = -8)
    for mu, var in [(-3.0, 2.0), (0.0, 1.0), (1.0, 0.25), (-8.0, 1.0), (12.0, 4.0)]:
        s = np.sqrt(var)
        m_ref, v_ref = truncnorm.stats(-mu / s, np.inf, loc=mu, scale=s, moments="mv")
        m, v = truncated_moments_quad(mu, var)
        assert abs(m - m_ref) <= 1e-10 * abs(m_ref) and abs(v - v_ref) <= 1e-9 * v_ref


def test_quadrature_oracle_agrees_with_high_precision_formula():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    for t in (-1e4, -1e3, -100.0, -30.0, -8.0, -1.0, 0.0, 2.0, 40.0):
        tt = mpmath.mpf(t)
        v = mpmath.npdf(tt) / mpmath.ncdf(tt)
        m_ref, v_ref = float(tt + v), float(1 - v * (v + tt))
        m, var = truncated_moments_quad(t, 1.0)
        assert abs(m - m_ref) <= 1e-14 * abs(m_ref) and abs(var - v_ref) <= 1e-14 * v_ref, t


def _tail_scalar_many(x):
    from factorgraph.kernels import scalar

    return np.array([scalar.tail_moments(float(v)) for v in x]).T


def test_tail_moments_equal_60_digit_values_and_the_kernel_bit_for_bit(record_cases):
    """:func:`tail_moments` (NumPy) and ``scalar.tail_moments`` (the kernels' copy) against the truncation
    moments from 60-digit Mills ratios: ``E X`` within 1e-15 and ``Var X`` within 5e-15 relative from
    ``TAIL_T`` out to 1e7, on both sides of ``TAIL_SPLIT`` (the two pieces meet to 3e-15), the two copies
    bit for bit equal; far out (beyond 60 digits' reach of the subtraction) the series ``1/x (1 - 2/x^2)``,
    ``1/x^2 (1 - 6/x^2)`` holds to double precision, and ``x = inf`` gives (0, 0)."""
    mpmath = pytest.importorskip("mpmath")
    from factorgraph.gaussian import TAIL_SPLIT, TAIL_T, tail_moments

    mpmath.mp.dps = 60
    edges = [TAIL_T, np.nextafter(TAIL_T, 4), np.nextafter(TAIL_SPLIT, 0), TAIL_SPLIT,
             np.nextafter(TAIL_SPLIT, 6)]
    x = np.concatenate([edges, np.linspace(3.0, 60.0, 571), np.geomspace(60.0, 1e7, 60)])
    K, V = tail_moments(x)
    np.testing.assert_array_equal(np.stack([K, V]), _tail_scalar_many(x))
    for i, xi in enumerate(x):
        xx = mpmath.mpf(float(xi))
        k = 1 / (mpmath.sqrt(mpmath.pi / 2) * mpmath.erfc(xx / mpmath.sqrt(2)) * mpmath.exp(xx * xx / 2)) - xx
        v = 1 - k * (k + xx)
        assert abs(K[i] - k) <= 1e-15 * k, (xi, "mean")
        assert abs(V[i] - v) <= 5e-15 * v, (xi, "variance")
    near = tail_moments(np.array([np.nextafter(TAIL_SPLIT, 0)]))
    far = tail_moments(np.array([TAIL_SPLIT]))
    assert abs(near[1][0] / far[1][0] - 1) <= 3e-15 and abs(near[0][0] / far[0][0] - 1) <= 3e-15
    big = np.array([1e8, 1e30, 1e100, 1e150, 1e300, np.inf])
    K, V = tail_moments(big)
    np.testing.assert_array_equal(np.stack([K, V]), _tail_scalar_many(big))
    for xi, k, v in zip(big[:-1], K[:-1], V[:-1]):
        y = 1 / xi
        want_k, want_v = y * (1 - 2 * y * y), y * y * (1 - 6 * y * y)
        assert abs(k - want_k) <= 1e-15 * want_k and abs(v - want_v) <= 1e-15 * want_v + 1e-320, xi
    assert K[-1] == 0.0 and V[-1] == 0.0
    record_cases("tail moments vs 60 digits", x.size + big.size)


def test_truncation_moments_equal_80_digit_values_on_both_sides_of_the_switch(record_cases):
    """``(E X, Var X)`` of ``N(t, 1)`` restricted to ``X >= 0``, the NumPy reference and the compiled scalar
    kernel, to 1e-12 relative from t = 6 down to t = -1e6: the direct formula above ``-TAIL_T``,
    :func:`tail_moments` below (the direct formula lost 1e-9 relative in ``Var X`` at t = -16)."""
    mpmath = pytest.importorskip("mpmath")
    from factorgraph.gaussian import TAIL_T, truncation_shift_and_factor
    from factorgraph.kernels import scalar

    mpmath.mp.dps = 80
    t = np.concatenate([np.linspace(-12.0, 6.0, 361), [-TAIL_T - 1e-12, -TAIL_T, -TAIL_T + 1e-12],
                        -np.geomspace(12.0, 1e6, 40)])
    ref_shift, ref_u = truncation_shift_and_factor(t)
    for i, ti in enumerate(t):
        tt = mpmath.mpf(float(ti))
        v = mpmath.npdf(tt) / mpmath.ncdf(tt)
        want_shift, want_u = tt + v, 1 - v * (v + tt)
        for name, (got_shift, got_u) in (("reference", (ref_shift[i], ref_u[i])),
                                          ("kernel", scalar.shift_and_factor(float(ti)))):
            assert abs(got_shift - want_shift) <= 1e-12 * want_shift, (name, ti, "shift")
            assert abs(got_u - want_u) <= 1e-12 * want_u, (name, ti, "factor")
    # far tails, beyond 80 digits' reach: the series -1/t (1 - 2/t^2 ...), 1/t^2 (1 - 6/t^2 ...) is exact
    # to double precision there (nothing on the way may overflow or underflow)
    for ti in (-1e30, -1e100, -1e150):
        want_u = 1 / ti / ti
        for got_shift, got_u in (scalar.shift_and_factor(ti), [v[0] for v in truncation_shift_and_factor(np.array([ti]))]):
            assert abs(got_shift + 1 / ti) <= 1e-15 / abs(ti) and abs(got_u - want_u) <= 1e-15 * want_u, ti
    record_cases("truncation moments vs 80 digits", t.size)


def test_truncate_nonneg_matches_truncnorm_on_random_cases(dtype, record_cases):
    rng = np.random.default_rng(8)
    n = 400
    var = _loguniform(rng, 1e-4, 1e4, n)
    t = rng.uniform(-8.0, 8.0, n)
    mu = t * np.sqrt(var)
    g = Gaussian.from_mean_var(mu.astype(dtype), var.astype(dtype))
    h = truncate_nonneg(g)
    # oracle from the exact values the library received
    mu_in, var_in = g.tau.astype(np.float64) / g.rho.astype(np.float64), 1.0 / g.rho.astype(np.float64)
    s = np.sqrt(var_in)
    m_ref, v_ref = truncnorm.stats(-mu_in / s, np.inf, loc=mu_in, scale=s, moments="mv")
    mean = h.tau.astype(np.float64) / h.rho.astype(np.float64)
    var_out = 1.0 / h.rho.astype(np.float64)
    err_m, err_v = _rel(mean, m_ref), _rel(var_out, v_ref)
    i, j = int(np.argmax(err_m)), int(np.argmax(err_v))
    assert err_m[i] <= RTOL[dtype], f"mean: t={t[i]}, var={var[i]}: {mean[i]!r} vs {m_ref[i]!r}"
    assert err_v[j] <= RTOL[dtype], f"var: t={t[j]}, var={var[j]}: {var_out[j]!r} vs {v_ref[j]!r}"
    record_cases("truncate_nonneg", n)


TRUNCATION_EDGES = [
    # (id, t = mu / sigma, var)
    ("t=-10", -10.0, 1.0),
    ("t=-30", -30.0, 1.0),
    ("t=-100", -100.0, 4.0),
    ("t=-1e3", -1e3, 1.0),
    ("t=-1e4", -1e4, 0.25),
    ("t=-1e6", -1e6, 1.0),
    ("t=40", 40.0, 1.0),
    ("t=1e3", 1e3, 9.0),
    ("t=1e6", 1e6, 1e-2),
    ("tiny-var-t=-3", -3.0, 1e-12),
    ("tiny-var-t=0", 0.0, 1e-12),
    ("tiny-var-t=2.5", 2.5, 1e-12),
    ("huge-precision-t=-2", -2.0, 1e-30),
    ("huge-precision-t=1", 1.0, 1e-30),
    ("huge-precision-f64-t=-5", -5.0, 1e-200),
    ("huge-var-t=-1", -1.0, 1e12),
    ("huge-var-t=0.5", 0.5, 1e12),
]


@pytest.mark.parametrize("t, var", [e[1:] for e in TRUNCATION_EDGES], ids=[e[0] for e in TRUNCATION_EDGES])
def test_truncate_nonneg_edge_cases_match_quadrature(dtype, t, var):
    if var < np.finfo(dtype).tiny * 1e6:
        pytest.skip("variance not representable in this dtype")
    g = Gaussian.from_mean_var(np.array([t * np.sqrt(var)], dtype), np.array([var], dtype))
    mu_in = float(g.tau[0]) / float(g.rho[0])
    var_in = 1.0 / float(g.rho[0])
    m_ref, v_ref = truncated_moments_quad(mu_in, var_in)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = truncate_nonneg(g)
    with np.errstate(all="ignore"):
        mean = float(h.tau[0]) / float(h.rho[0])
        var_out = 1.0 / float(h.rho[0])
    assert abs(mean - m_ref) <= RTOL[dtype] * m_ref, f"mean {mean!r}, expected {m_ref!r}"
    assert abs(var_out - v_ref) <= RTOL[dtype] * v_ref, f"variance {var_out!r}, expected {v_ref!r}"
    assert not caught, [str(w.message) for w in caught]
    assert guards.get("truncation_u_floor") == 0


OPERATIONS = {
    "mean": lambda g: g.mean,
    "var": lambda g: g.var,
    "m2": lambda g: g.m2,
    "product": lambda g: (g * g).tau,
    "divide": lambda g: divide(g * g, g).tau,
    "tolerant-divide": lambda g: divide(g, g, tol=config.DIVISION_TOL).rho,
    "damp": lambda g: g.damp(g, 0.3).tau,
    "scale": lambda g: g.scale(-2.0).tau,
    "shift": lambda g: g.shift(1.5).tau,
    "add_variance": lambda g: g.add_variance(0.5).tau,
    "scale_rho": lambda g: g.scale_rho(0.5).tau,
    "clamp_min_rho": lambda g: clamp_min_rho(g, 1e-2).rho,
    "truncate_nonneg-tau": lambda g: truncate_nonneg(g).tau,
    "truncate_nonneg-rho": lambda g: truncate_nonneg(g).rho,
}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_operations_preserve_dtype(dtype, op):
    g = Gaussian.from_mean_var(np.array([1.0, -2.0, 0.5], dtype), np.array([1.0, 0.5, 3.0], dtype))
    out = OPERATIONS[op](g)
    assert out.dtype == dtype, f"{op}: {dtype.__name__} in, {out.dtype} out"


# ------------------------------------------------------------------------------------------------
# properties (hypothesis)
# ------------------------------------------------------------------------------------------------
_rho = st.floats(1e-12, 1e12)
_mu = st.floats(-1e6, 1e6)


@HYP
@given(_mu, _rho, _mu, _rho)
def test_product_then_division_is_identity_property(dtype, mu1, rho1, mu2, rho2):
    g = Gaussian(np.array([mu1 * rho1], dtype), np.array([rho1], dtype))
    h = Gaussian(np.array([mu2 * rho2], dtype), np.array([rho2], dtype))
    if not (np.isfinite(g.tau).all() and np.isfinite(h.tau).all()):
        return
    eps = np.finfo(dtype).eps
    q = divide(g * h, h)
    assert guards.get("strict_division_roundoff") == 0  # (g h) / h never has a precision deficit
    assert abs(float(q.rho[0]) - float(g.rho[0])) <= 2 * eps * (float(g.rho[0]) + float(h.rho[0]))
    assert abs(float(q.tau[0]) - float(g.tau[0])) <= 2 * eps * (abs(float(g.tau[0])) + abs(float(h.tau[0])))
    # the other order, when g is at least as sharp as h
    if rho1 >= rho2:
        p = divide(g, h) * h
        assert abs(float(p.rho[0]) - float(g.rho[0])) <= 2 * eps * (float(g.rho[0]) + float(h.rho[0]))


@HYP
@given(st.floats(-20.0, 40.0), _rho)
def test_truncate_nonneg_is_finite_nonnegative_and_narrower_property(record_cases, t, rho):
    sr = np.sqrt(rho)
    g = Gaussian(np.array([t * sr]), np.array([rho]))
    with np.errstate(divide="raise", invalid="raise", over="raise", under="ignore"):
        h = truncate_nonneg(g)
    assert np.isfinite(h.tau).all() and np.isfinite(h.rho).all()
    mean = float(h.tau[0] / h.rho[0])
    assert mean >= 0 and mean >= t / sr * (1 - 1e-12)  # truncation to x >= 0 cannot lower the mean
    assert h.rho[0] >= rho * (1 - 1e-12)  # nor widen the distribution
    if t < -1:
        # the truncated tail is lighter than an exponential with rate |t| / sigma
        assert mean <= 1 / (-t * sr) * (1 + 1e-9) and 1 / float(h.rho[0]) <= 1 / (t * t * rho) * (1 + 1e-9)
    record_cases("truncate_nonneg", 1)


def test_with_moments_caches_the_moments_of_the_same_message():
    from factorgraph.gaussian import WithMoments

    g = Gaussian(np.array([1.0, -2.0, 0.0]), np.array([2.0, 0.5, 0.0]))
    w = g.with_moments()
    assert isinstance(w, Gaussian)
    np.testing.assert_array_equal(w.mean, g.mean)
    np.testing.assert_array_equal(w.var, g.var)  # rho = 0: mean 0, var inf
    assert w.mean is w.mean and w.tau is g.tau  # computed once, no copy of the parameters
    sub, flat = w[1:], w.reshape(3, 1)
    # slices and reshapes keep the cached moments as views; other derived messages recompute theirs
    assert type(sub) is WithMoments and sub.mean[0] == -4.0 and np.shares_memory(sub.mean, w.mean)
    assert type(flat) is WithMoments and flat.var.shape == (3, 1) and np.shares_memory(flat.var, w.var)
    assert type(w * g) is Gaussian and (w * g).mean[0] == 0.5


def test_with_moments_from_moments_keeps_them_and_has_their_natural_parameters():
    from factorgraph.gaussian import WithMoments

    mean, var = np.array([1.5, -2.0]), np.array([0.5, 4.0])
    w = WithMoments.from_moments(mean, var)
    assert w.mean is mean and w.var is var
    np.testing.assert_array_equal(w.tau, [3.0, -0.5])
    np.testing.assert_array_equal(w.rho, [2.0, 0.25])


class _DeviceMask:
    """Stands in for a CuPy mask: not a NumPy array, summed 'on the device' into a 0-d array."""

    def __init__(self, mask):
        self.mask = np.asarray(mask)

    def sum(self, dtype=None):
        return np.asarray(self.mask.sum(dtype=dtype))


def test_guard_counts_of_device_masks_are_deferred_until_read():
    """A NumPy mask is counted at once; a device mask is summed on its device and read at the next flush
    (``counts``/``get`` flush first); ``fired`` then says 'apply the fix' without knowing."""
    assert guards.record("g", np.array([True, False, True])) == 2
    assert guards.record("g", np.float64(1.0) < 0) == 0  # a NumPy scalar (np.bool_) is counted at once
    assert guards.fired("g", np.zeros(3, bool)) is False
    assert guards.fired("g", np.ones(2, bool)) is True
    assert guards.record("d", _DeviceMask([True, True, False])) is None
    assert guards.fired("d", _DeviceMask([False, False])) is True
    guards.record("d", _DeviceMask([True]))
    assert guards._DEFERRED  # nothing read yet
    assert guards.counts() == {"g": 4, "d": 3}
    assert not guards._DEFERRED
    guards.record("d", _DeviceMask([True]))
    guards.reset()
    assert guards.counts() == {}
