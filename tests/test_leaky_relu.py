"""Oracle tests for the LeakyReLU message equations (SPEC 5.4).

Oracles (``oracles_1d``): adaptive quadrature of

* the push-forward moments of z = leaky(a), a ~ N(mu_a, var_a)                  (moment matching);
* the tilted density over z, p_z(z) N(z; mu_z, var_z), p_z the push-forward density (forward);
* the tilted density over a, N(a; mu_a, var_a) N(leaky(a); mu_z, var_z)          (backward);

followed by moment matching and division by the other message in natural parameters.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RTOL
from factorgraph import guards
from factorgraph.equations import (
    leaky_backward_marginal,
    leaky_forward_marginal,
    leaky_forward_moment_match,
)
from factorgraph.gaussian import Gaussian

import oracles_1d as O

SLOPES = (0.01, 0.1, 0.3, 0.7)
PER_SLOPE = 60  # 240 random cases per function
MIN_TILTED_MASS = 1e-8  # SPEC 5.4 b
BACKWARD_GAIN = 1e-8  # SPEC 5.4 c
TINY_PRECISION = 2e-8


def _tol(dtype):
    # float32: the equations exponentiate log-masses and subtract precisions; 2e-3 of the operand scale
    return RTOL[dtype] if dtype is np.float64 else 5 * RTOL[dtype]


def _msg(mu, var, dtype=np.float64):
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    return Gaussian((mu / var).astype(dtype), (1 / var).astype(dtype))


def _mean_var_of(tau, rho):
    """Moments of the (rounded) message in float64, as the oracle sees them."""
    tau, rho = float(tau), float(rho)
    return tau / rho, 1.0 / rho


def _draw(rng, n, mu_scale=4.0, lv=(-2.5, 1.5)):
    mu_a = rng.uniform(-mu_scale, mu_scale, n)
    var_a = 10.0 ** rng.uniform(*lv, n)
    mu_z = rng.uniform(-mu_scale, mu_scale, n)
    var_z = 10.0 ** rng.uniform(*lv, n)
    return mu_a, var_a, mu_z, var_z


def _assert_nat_close(tau, rho, want_tau, want_rho, scale_tau, scale_rho, tol, what):
    """|difference| <= tol * scale: messages are differences of marginals, so the error of either
    operand (not of the small result) sets the scale."""
    assert abs(float(rho) - want_rho) <= tol * scale_rho, (what, float(rho), want_rho, scale_rho)
    assert abs(float(tau) - want_tau) <= tol * scale_tau, (what, float(tau), want_tau, scale_tau)


# ===== (a) moment matching ===============================================================================
def _check_moment_match(m_a, slope, out, tol):
    for i in range(m_a.shape[0]):
        mu_a, var_a = _mean_var_of(m_a.tau[i], m_a.rho[i])
        want_mean, want_var = O.leaky_push_forward_moments(mu_a, var_a, slope)
        got_mean, got_var = float(out.tau[i]) / float(out.rho[i]), 1.0 / float(out.rho[i])
        sd = math.sqrt(want_var)
        assert abs(got_mean - want_mean) <= tol * (abs(want_mean) + sd), (mu_a, var_a, got_mean, want_mean)
        assert abs(got_var - want_var) <= tol * want_var, (mu_a, var_a, got_var, want_var)


def test_forward_moment_match_random(dtype, record_cases):
    rng = np.random.default_rng(11)
    n = 0
    for slope in SLOPES:
        mu_a, var_a, _, _ = _draw(rng, PER_SLOPE, mu_scale=6.0, lv=(-4, 3))
        m_a = _msg(mu_a, var_a, dtype)
        out = leaky_forward_moment_match(m_a, slope)
        assert out.tau.dtype == dtype and out.rho.dtype == dtype
        _check_moment_match(m_a, slope, out, _tol(dtype))
        n += PER_SLOPE
    record_cases("leaky_forward_moment_match", n)


MM_EDGE = [
    (1e3, 1e-6),  # huge mean, tiny variance: z = a
    (-1e3, 1e-6),  # large negative mean: z = slope a
    (-50.0, 1.0),
    (50.0, 1.0),
    (0.0, 1e-10),
    (1e-5, 1e-10),
    (0.0, 1e12),  # rho -> 0
    (3.0, 1e16),
]


@pytest.mark.parametrize("mu,var", MM_EDGE)
@pytest.mark.parametrize("slope", [0.01, 0.1, 0.5])
def test_forward_moment_match_edge(mu, var, slope):
    out = leaky_forward_moment_match(_msg([mu], [var]), slope)
    assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho > 0)
    _check_moment_match(_msg([mu], [var]), slope, out, 1e-8)


def test_forward_moment_match_linear_limits():
    """Far from the kink the layer is linear: N(mu, var) -> N(mu, var) or N(s mu, s^2 var)."""
    out = leaky_forward_moment_match(_msg([1e3, -1e3], [1e-6, 1e-6]), 0.1)
    np.testing.assert_allclose(out.tau / out.rho, [1e3, -100.0], rtol=1e-14)
    np.testing.assert_allclose(1 / out.rho, [1e-6, 1e-8], rtol=1e-10)


# ===== (b) forward by marginal approximation =============================================================
def _forward_oracle(mu_a, var_a, mu_z, var_z, slope):
    """Returns ('marginal' | 'fallback' | 'ambiguous', tau, rho, scale_tau, scale_rho)."""
    rho_a, rho_z = 1 / var_a, 1 / var_z

    def fallback():
        mm_mean, mm_var = O.leaky_push_forward_moments(mu_a, var_a, slope)
        return ("fallback", mm_mean / mm_var, 1 / mm_var, abs(mm_mean) / mm_var + 1 / math.sqrt(mm_var),
                1 / mm_var)

    lm, mean, var = O.leaky_forward_tilted(mu_a, var_a, mu_z, var_z, slope)
    if lm == -math.inf or not math.isfinite(var):
        return fallback()
    rho_hat = 1 / var
    tau_hat = mean * rho_hat
    nat = (tau_hat - mu_z * rho_z, rho_hat - rho_z,
           abs(tau_hat) + math.sqrt(rho_hat) + abs(mu_z) * rho_z, rho_hat + rho_z)
    log_min = math.log(MIN_TILTED_MASS)
    floor = rho_a + rho_z
    if lm < log_min - 1e-6 or rho_hat < floor * (1 - 1e-6):
        return fallback()
    if lm > log_min + 1e-6 and rho_hat > floor * (1 + 1e-6):
        return ("marginal",) + nat
    return ("ambiguous",) + nat


def test_forward_marginal_random_no_guard(dtype, record_cases):
    """Cases where the oracle says no guard applies: natural parameters vs quadrature, no fallback."""
    rng = np.random.default_rng(22)
    tol = _tol(dtype)
    per_slope = PER_SLOPE if dtype is np.float64 else 25
    n = 0
    for slope in SLOPES:
        rows = []  # (tau_a, rho_a, tau_z, rho_z, oracle inputs, oracle message)
        while len(rows) < per_slope:
            # round the messages to dtype first; the oracle sees the rounded values
            mu_a, var_a, mu_z, var_z = _draw(rng, 20, mu_scale=1.5, lv=(-1.5, 1))
            m_a, m_z = _msg(mu_a, var_a, dtype), _msg(mu_z, var_z, dtype)
            for i in range(20):
                args = _mean_var_of(m_a.tau[i], m_a.rho[i]) + _mean_var_of(m_z.tau[i], m_z.rho[i])
                kind, *want = _forward_oracle(*args, slope)
                if kind == "marginal":
                    rows.append((m_a.tau[i], m_a.rho[i], m_z.tau[i], m_z.rho[i], args, want))
        rows = rows[:per_slope]
        m_a = Gaussian(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        m_z = Gaussian(np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))
        assert m_a.dtype == dtype
        guards.reset()
        out = leaky_forward_marginal(m_a, m_z, slope)
        assert guards.get("leaky_forward_fallback") == 0
        assert out.tau.dtype == dtype
        for i, r in enumerate(rows):
            _assert_nat_close(out.tau[i], out.rho[i], *r[5], tol, r[4] + (slope,))
        n += len(rows)
    record_cases("leaky_forward_marginal", n)


def test_forward_marginal_random_with_guards(record_cases):
    """Mixed draws (wider ranges): each element is either the marginal message or the moment-matching
    fallback, exactly as the oracle's guard decision says, and the counter counts the fallbacks."""
    rng = np.random.default_rng(23)
    n, n_fb = 0, 0
    for slope in SLOPES:
        mu_a, var_a, mu_z, var_z = _draw(rng, 30, mu_scale=5.0, lv=(-3, 2))
        want = [_forward_oracle(*a, slope) for a in zip(mu_a, var_a, mu_z, var_z)]
        keep = [i for i, w in enumerate(want) if w[0] != "ambiguous"]
        m_a, m_z = _msg(mu_a[keep], var_a[keep]), _msg(mu_z[keep], var_z[keep])
        guards.reset()
        with np.errstate(all="ignore"):
            out = leaky_forward_marginal(m_a, m_z, slope)
        expected_fb = sum(want[i][0] == "fallback" for i in keep)
        assert guards.get("leaky_forward_fallback") == expected_fb
        for j, i in enumerate(keep):
            _assert_nat_close(out.tau[j], out.rho[j], *want[i][1:], 1e-8, (slope, want[i][0], i))
        n += len(keep)
        n_fb += expected_fb
    assert 15 <= n_fb <= n - 15  # both branches exercised
    record_cases("leaky_forward_marginal", n)


def test_forward_marginal_uniform_backward_falls_back(dtype):
    """m_z = G(0, 0) (first iteration after a reset): Z = 0, M0 = 0, moment matching, counted."""
    rng = np.random.default_rng(24)
    mu_a, var_a = rng.uniform(-3, 3, 50), 10.0 ** rng.uniform(-2, 1, 50)
    m_a = _msg(mu_a, var_a, dtype)
    m_z = Gaussian.uniform(50, dtype)
    guards.reset()
    out = leaky_forward_marginal(m_a, m_z, 0.1)
    assert guards.get("leaky_forward_fallback") == 50
    ref = leaky_forward_moment_match(m_a, 0.1)
    np.testing.assert_array_equal(out.tau, ref.tau)
    np.testing.assert_array_equal(out.rho, ref.rho)
    _check_moment_match(m_a, 0.1, out, _tol(dtype))


def test_forward_marginal_far_apart_falls_back():
    """M0 < 1e-8: forward and backward messages do not overlap."""
    m_a, m_z = _msg([5.0, -5.0], [0.01, 0.01]), _msg([-3.0, 4.0], [0.01, 0.01])
    guards.reset()
    out = leaky_forward_marginal(m_a, m_z, 0.1)
    assert guards.get("leaky_forward_fallback") == 2
    for i in range(2):
        assert O.leaky_forward_tilted(float(m_a.mean[i]), 0.01, float(m_z.mean[i]), 0.01, 0.1)[0] < math.log(
            MIN_TILTED_MASS
        )
    _check_moment_match(m_a, 0.1, out, 1e-8)


@pytest.mark.parametrize(
    "mu_a,var_a,mu_z,var_z",
    [
        (1e3, 1e-6, 1e3, 1e-6),  # huge mean, tiny variance, linear regime (guard on the boundary)
        (1e3, 1e-6, 1e3 + 1e-3, 1e-4),
        (-1e3, 1e-6, -100.0, 1e-8),  # large negative mean, slope branch
        (-50.0, 1.0, -5.0, 0.01),
        (0.0, 1e12, 0.5, 1.0),  # rho_a -> 0
        (0.3, 1.0, 0.0, 1e12),  # rho_z -> 0
        (0.0, 1e12, 0.0, 1e12),
        (1e-5, 1e-10, 0.0, 1e-10),
    ],
)
def test_forward_marginal_edge(mu_a, var_a, mu_z, var_z):
    slope = 0.1
    m_a, m_z = _msg([mu_a], [var_a]), _msg([mu_z], [var_z])
    with np.errstate(all="ignore"):
        out = leaky_forward_marginal(m_a, m_z, slope)
    assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
    kind, *want = _forward_oracle(mu_a, var_a, mu_z, var_z, slope)
    if kind == "ambiguous":
        # on the guard boundary both answers coincide up to the boundary tolerance
        mm = leaky_forward_moment_match(m_a, slope)
        assert float(out.rho[0]) == pytest.approx(float(mm.rho[0]), rel=1e-5)
        assert float(out.tau[0]) == pytest.approx(float(mm.tau[0]), rel=1e-5)
    else:
        _assert_nat_close(out.tau[0], out.rho[0], *want, 1e-8, kind)


# ----- the thesis-printed variant is wrong ---------------------------------------------------------------
def _moments_from_blocks(b0, b1, b2):
    mean = b1 / b0
    return mean, b2 / b0 - mean * mean


def test_forward_marginal_thesis_variant_is_wrong(record_cases):
    """SPEC 5.4 b: the thesis prints the second term as (-1)^k B_k(-mu_a, var_a, -s mu_z, s^2 var_z); the
    code uses (-1)^k B_k(-mu_z, var_z, -s mu_a, s^2 var_a).  Build both from quadrature Block52 values and
    compare with the tilted moments: the code form is exact, the printed one is not, and the library
    (which implements the code form) is closer to quadrature than the printed form on every case."""
    rng = np.random.default_rng(25)
    slope = 0.1
    n = 40
    mu_a, mu_z = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    var_a, var_z = rng.uniform(0.5, 2, n), rng.uniform(0.5, 2, n)
    out = leaky_forward_marginal(_msg(mu_a, var_a), _msg(mu_z, var_z), slope)
    lib_rho_hat = out.rho + 1 / var_z
    lib_mean = (out.tau + mu_z / var_z) / lib_rho_hat
    n_far = 0
    for i in range(n):
        a, va, z, vz = mu_a[i], var_a[i], mu_z[i], var_z[i]
        _, t_mean, t_var = O.leaky_forward_tilted(a, va, z, vz, slope)
        pos = [O.block52(a, va, z, vz, k) for k in range(3)]
        code = [pos[k] + (-1) ** k * O.block52(-z, vz, -slope * a, slope**2 * va, k) for k in range(3)]
        thesis = [pos[k] + (-1) ** k * O.block52(-a, va, -slope * z, slope**2 * vz, k) for k in range(3)]
        c_mean, c_var = _moments_from_blocks(*code)
        p_mean, p_var = _moments_from_blocks(*thesis)
        # the code formula is the exact tilted integral
        assert c_mean == pytest.approx(t_mean, rel=1e-9, abs=1e-9)
        assert c_var == pytest.approx(t_var, rel=1e-9)
        err_thesis = max(abs(p_mean - t_mean) / math.sqrt(t_var), abs(p_var / t_var - 1))
        err_lib = max(abs(lib_mean[i] - t_mean) / math.sqrt(t_var), abs(1 / lib_rho_hat[i] / t_var - 1))
        assert err_lib < 1e-8
        assert err_lib < err_thesis
        n_far += err_thesis > 1e-2
    assert n_far >= n // 2  # the printed formula is grossly off, not merely round-off different
    record_cases("leaky_forward_marginal", n)


# ===== (c) backward by marginal approximation ============================================================
def _backward_oracle(mu_a, var_a, mu_z, var_z, slope):
    """(tau, rho, scale_tau, scale_rho) of the backward message; None where the fallback G(0, 0) applies."""
    rho_a, rho_z = 1 / var_a, 1 / var_z
    tau_z = mu_z * rho_z
    if tau_z < 0 and rho_z < TINY_PRECISION:
        return None
    lm, mean, var = O.leaky_backward_tilted(mu_a, var_a, mu_z, var_z, slope)
    if lm == -math.inf or not math.isfinite(var):
        return None
    rho_hat = max(rho_a + BACKWARD_GAIN, 1 / var)
    tau_hat = mean * rho_hat
    return (tau_hat - mu_a * rho_a, rho_hat - rho_a,
            abs(tau_hat) + math.sqrt(rho_hat) + abs(mu_a) * rho_a, rho_hat + rho_a)


def _branch_t(mu_a, var_a, mu_z, var_z, slope):
    """Standardised distance of each branch's product peak from the kink, on the side it is cut to."""
    cp, sp = O.product_bump(mu_a, var_a, mu_z, var_z)
    cn, sn = O.product_bump(mu_a, var_a, mu_z / slope, var_z / slope**2)
    return cp / sp, -cn / sn


def _draw_conflict(rng, n, slope):
    """Precise, conflicting messages: a > 0 forward, z < 0 backward, with
    slope rho_z |mu_z| < rho_a mu_a < rho_z |mu_z|, so both branch peaks lie beyond the kink."""
    var_a = 10.0 ** rng.uniform(-6, -3, n)
    var_z = var_a * 10.0 ** rng.uniform(-0.5, 0.5, n)
    mu_a = rng.uniform(0.2, 2, n)
    r = np.exp(rng.uniform(np.log(slope), 0, n))  # rho_a mu_a / (rho_z |mu_z|)
    mu_z = -(mu_a / var_a) / (r / var_z)
    return mu_a, var_a, mu_z, var_z


def test_backward_marginal_random(dtype, record_cases):
    rng = np.random.default_rng(33)
    tol = _tol(dtype)
    n = n_tail = 0
    for slope in SLOPES:
        if dtype is np.float64:
            draws = [_draw(rng, PER_SLOPE - 10, lv=(-3, 1.5)), _draw_conflict(rng, 10, slope)]
        else:
            # no conflict cases in float32: their branch log-weights are ~1e5 in size with an O(1)
            # difference, which float32 cannot resolve (~10% error in the message precision)
            draws = [_draw(rng, PER_SLOPE, lv=(-1.5, 1.0))]
        mu_a, var_a, mu_z, var_z = (np.concatenate(x) for x in zip(*draws))
        m_a, m_z = _msg(mu_a, var_a, dtype), _msg(mu_z, var_z, dtype)
        guards.reset()
        out = leaky_backward_marginal(m_a, m_z, slope)
        assert guards.get("leaky_backward_fallback") == 0
        assert out.tau.dtype == dtype
        assert np.all(out.rho >= 0)
        for i in range(PER_SLOPE):
            args = _mean_var_of(m_a.tau[i], m_a.rho[i]) + _mean_var_of(m_z.tau[i], m_z.rho[i])
            want = _backward_oracle(*args, slope)
            _assert_nat_close(out.tau[i], out.rho[i], *want, tol, args + (slope,))
            # both branches cut > 20 sd beyond the kink: conflicting messages, a spike at a = 0
            n_tail += max(_branch_t(*args, slope)) < -20
            n += 1
    assert n_tail >= (20 if dtype is np.float64 else 0)
    record_cases("leaky_backward_marginal", n)


def test_backward_marginal_clamp(record_cases):
    """Where the tilted variance exceeds var_a the precision is raised to rho_a + 1e-8 (counted)."""
    # the forward message puts a < 0, the backward one z > 0: the tilted density is skewed and broader
    mu_a, var_a = np.array([-0.755, -0.047]), np.array([0.338, 0.0904])
    mu_z, var_z = np.array([0.593, 2.357]), np.array([0.246, 0.463])
    slope = 0.1
    guards.reset()
    out = leaky_backward_marginal(_msg(mu_a, var_a), _msg(mu_z, var_z), slope)
    assert guards.get("leaky_backward_clamp") == 2
    for i in range(2):
        _, _, var = O.leaky_backward_tilted(mu_a[i], var_a[i], mu_z[i], var_z[i], slope)
        assert var > var_a[i]
        want = _backward_oracle(mu_a[i], var_a[i], mu_z[i], var_z[i], slope)
        _assert_nat_close(out.tau[i], out.rho[i], *want, 1e-8, i)
        assert float(out.rho[i]) == pytest.approx(BACKWARD_GAIN, rel=1e-6)
    record_cases("leaky_backward_marginal", 2)


def test_backward_marginal_fallbacks(dtype):
    """tau_z < 0 and rho_z < 2e-8 -> G(0, 0); G(0, 0) input -> G(0, 0); both counted."""
    m_a = _msg([0.5, -1.0, 2.0, 0.3, 0.3], [1.0, 2.0, 0.5, 1.0, 1.0], dtype)
    tau_z = np.array([-1e-9, -5.0e-9, 0.0, 1e-9, -1e-9], dtype)
    rho_z = np.array([1e-8, 1.9e-8, 0.0, 1e-8, 3e-8], dtype)
    guards.reset()
    out = leaky_backward_marginal(m_a, Gaussian(tau_z, rho_z), 0.1)
    assert guards.get("leaky_backward_fallback") == 3
    np.testing.assert_array_equal(out.tau[:3], 0)
    np.testing.assert_array_equal(out.rho[:3], 0)
    # tau_z > 0 with tiny rho_z, or tau_z < 0 with rho_z >= 2e-8: a real (clamped) message
    for i in (3, 4):
        args = _mean_var_of(m_a.tau[i], m_a.rho[i]) + _mean_var_of(tau_z[i], rho_z[i])
        want = _backward_oracle(*args, 0.1)
        _assert_nat_close(out.tau[i], out.rho[i], *want, _tol(dtype), i)


@pytest.mark.parametrize(
    "mu_a,var_a,mu_z,var_z",
    [
        (1e3, 1e-6, 1e3, 1e-6),  # huge mean, tiny variance
        (1e3, 1e-6, 1e3 + 1e-3, 1e-4),
        (-1e3, 1e-6, -100.0, 1e-8),  # large negative mean, slope branch
        (-50.0, 1.0, -5.0, 0.01),
        (-50.0, 1.0, 3.0, 1.0),
        (0.0, 1e12, 0.5, 1.0),  # rho_a -> 0
        (0.3, 1.0, 0.0, 1e12),  # rho_z -> 0
        (0.0, 1e12, 0.0, 1e12),
        (1e-5, 1e-10, 0.0, 1e-10),
    ],
)
def test_backward_marginal_edge(mu_a, var_a, mu_z, var_z):
    slope = 0.1
    out = leaky_backward_marginal(_msg([mu_a], [var_a]), _msg([mu_z], [var_z]), slope)
    assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
    want = _backward_oracle(mu_a, var_a, mu_z, var_z, slope)
    _assert_nat_close(out.tau[0], out.rho[0], *want, 1e-7, (mu_a, var_a, mu_z, var_z))


def test_backward_marginal_conflicting_precise_messages():
    """m_a = N(1, 1e-6), m_z = N(-1, 5e-7), slope 0.1: the tilted density is a two-sided spike at a = 0
    (rates 1e6 on the right, 8e5 on the left), variance 2.5625e-12, precision 3.90e11.  Both branch
    peaks lie hundreds of sd beyond the kink, and backward_marginal has no M0 guard, so this needs
    truncated moments that are accurate far in the tail (the closed form gave precision 1.28e11)."""
    mu_a, var_a, mu_z, var_z = 1.0, 1e-6, -1.0, 5e-7
    out = leaky_backward_marginal(_msg([mu_a], [var_a]), _msg([mu_z], [var_z]), 0.1)
    tau, rho, _, _ = _backward_oracle(mu_a, var_a, mu_z, var_z, 0.1)
    assert rho == pytest.approx(3.90e11, rel=1e-2)  # the oracle agrees with the hand calculation
    assert float(out.rho[0]) == pytest.approx(rho, rel=1e-6)
    assert float(out.tau[0]) == pytest.approx(tau, rel=1e-6)


# ===== properties =====================================================================================
means = st.floats(-1e3, 1e3, allow_nan=False)
variances = st.floats(1e-6, 1e6, allow_nan=False)
slopes = st.sampled_from(SLOPES)


@settings(max_examples=100, deadline=None)
@given(means, variances, means, variances, slopes)
def test_property_outputs_finite(mu_a, var_a, mu_z, var_z, slope):
    m_a, m_z = _msg([mu_a], [var_a]), _msg([mu_z], [var_z])
    with np.errstate(all="ignore"):
        outs = [
            leaky_forward_moment_match(m_a, slope),
            leaky_forward_marginal(m_a, m_z, slope),
            leaky_backward_marginal(m_a, m_z, slope),
        ]
    for g in outs:
        assert np.all(np.isfinite(g.tau)) and np.all(np.isfinite(g.rho)) and np.all(g.rho >= 0)


@settings(max_examples=60, deadline=None)
@given(means, variances, slopes)
def test_property_uniform_backward_input(mu_a, var_a, slope):
    """A uniform backward message G(0, 0): backward gives G(0, 0) (counted), forward moment matching."""
    m_a, m_z = _msg([mu_a], [var_a]), Gaussian.uniform(1)
    guards.reset()
    with np.errstate(all="ignore"):
        back = leaky_backward_marginal(m_a, m_z, slope)
        fwd = leaky_forward_marginal(m_a, m_z, slope)
    assert back.tau[0] == 0 and back.rho[0] == 0
    assert guards.get("leaky_backward_fallback") == 1
    assert guards.get("leaky_forward_fallback") == 1
    mm = leaky_forward_moment_match(m_a, slope)
    assert fwd.tau[0] == mm.tau[0] and fwd.rho[0] == mm.rho[0]
    assert np.isfinite(fwd.tau[0]) and fwd.rho[0] > 0


# ===== 80-digit closed form: the tilted density is two truncated Gaussians =========================
def _tilted_exact(mu_a, var_a, mu_z, var_z, slope):
    """Moments of ``a`` and of ``z = leaky(a)`` under ``N(a; mu_a, var_a) N(leaky(a); mu_z, var_z)`` at 80
    digits: on each side of 0 the density is a Gaussian in ``a`` (slope 1 or ``slope``) restricted to that
    side, whose mass, mean and variance have closed forms; the mixture of the two sides is exact."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 80
    ma, va, mz, vz, s = (mp.mpf(float(v)) for v in (mu_a, var_a, mu_z, var_z, slope))
    sides = []
    for k, sign in ((mp.mpf(1), 1), (s, -1)):  # a > 0: z = a; a < 0: z = s a
        P = 1 / va + k * k / vz
        m = (ma / va + k * mz / vz) / P
        c = -(ma * ma / va + mz * mz / vz) / 2 + P * m * m / 2
        sd = 1 / mp.sqrt(P)
        al = sign * m / sd
        lam = mp.npdf(al) / mp.ncdf(al)
        e = sign * (sign * m + sd * lam)
        v = sd * sd * (1 - al * lam - lam * lam)
        sides.append((c + mp.log(sd) + mp.log(mp.ncdf(al)), e, v, k))
    top = max(sides[0][0], sides[1][0])
    w = [mp.exp(lw - top) for lw, _, _, _ in sides]
    w = [x / (w[0] + w[1]) for x in w]
    (_, e1, v1, k1), (_, e2, v2, k2) = sides
    mean_a = w[0] * e1 + w[1] * e2
    var_a_t = w[0] * v1 + w[1] * v2 + w[0] * w[1] * (e1 - e2) ** 2
    mean_z = w[0] * k1 * e1 + w[1] * k2 * e2
    var_z_t = w[0] * k1 ** 2 * v1 + w[1] * k2 ** 2 * v2 + w[0] * w[1] * (k1 * e1 - k2 * e2) ** 2
    return (mean_a, var_a_t), (mean_z, var_z_t)


# conflicting messages: each side's truncation sits 3 to 40 sd beyond the kink (t from -3 to -40), where
# u = 1 - v (v + t) by the direct formula lost up to 1e-9 relative before the tail moments (now tail_moments)
CONFLICTS = [
    (2.647347418342025, 0.01148043035209221, -2.10271330627373, 0.00396802630047717),
    (1.4382328997062102, 0.003812730916045304, -6.355092372420756, 0.0060771982522463104),
    (4.4689078557398725, 0.057425280712514105, -4.657637725749522, 0.05002688953769377),
    (7.526983306897174, 0.04127694937582418, -0.6730696338542094, 0.0012287521489751333),
    (1.0, 1e-4, -1.0, 5e-5),
    (0.5, 0.02, -3.0, 0.3),
    (-2.0, 0.01, 1.5, 0.002),
]


# forward marginals with one side 3 to 5 sd beyond the kink that the forward guard accepts
FORWARD_TAILS = [
    (-0.007335978054100264, 0.003492705509607339, -0.30044235604854935, 0.0029558333325557192),
    (2.449529454015043, 0.368117818980892, -0.8133796150843526, 0.07664714852375024),
    (0.7860362496342553, 0.15916873771249912, -0.47174206270925917, 0.009308885565133965),
    (0.7615952625182434, 0.024014896763417025, -0.045354155665930734, 0.005096272172213344),
]


@pytest.mark.parametrize("case", CONFLICTS)
def test_backward_marginal_equals_the_80_digit_closed_form_in_the_tails(case, record_cases):
    """To 1e-12 of the marginal it forms with the input message (the forward marginal falls back to
    moment matching on these, by its guard)."""
    from closeness import assert_messages_close

    mu_a, var_a, mu_z, var_z = case
    (ea, va), _ = _tilted_exact(mu_a, var_a, mu_z, var_z, 0.1)
    m_a = _msg([mu_a], [var_a])
    back = leaky_backward_marginal(m_a, _msg([mu_z], [var_z]), 0.1)
    assert guards.get("leaky_backward_clamp") == 0
    assert_messages_close(back.tau, back.rho, float(ea / va - mu_a / var_a), float(1 / va - 1 / var_a), 1e-12,
                          m_a.tau, m_a.rho, "backward")
    record_cases("leaky backward vs 80 digits", 1)


@pytest.mark.parametrize("case", FORWARD_TAILS)
def test_forward_marginal_equals_the_80_digit_closed_form_in_the_tails(case, record_cases):
    from closeness import assert_messages_close

    mu_a, var_a, mu_z, var_z = case
    _, (ez, vz) = _tilted_exact(mu_a, var_a, mu_z, var_z, 0.1)
    m_z = _msg([mu_z], [var_z])
    fwd = leaky_forward_marginal(_msg([mu_a], [var_a]), m_z, 0.1)
    assert guards.get("leaky_forward_fallback") == 0
    assert_messages_close(fwd.tau, fwd.rho, float(ez / vz - mu_z / var_z), float(1 / vz - 1 / var_z), 1e-12,
                          m_z.tau, m_z.rho, "forward")
    record_cases("leaky forward vs 80 digits", 1)
