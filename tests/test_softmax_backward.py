"""Oracle tests for the softmax likelihood backward message (SPEC 5.9).

Oracles:

* ``_quad_oracle_row``: SPEC 5.9 step by step for one row of logits, one logit at a time, with
  ``scipy.integrate.quad`` for the tilted moments (adaptive QUADPACK instead of the code's QuadGK) and the
  same decisions (``m0 < 1e-12`` -> G(0, 0), tolerant division with tol 0.1).  Written independently of
  the library: scalar ``math`` code, no shared helpers.
* Monte Carlo for C = 2: both logits sampled from their forward messages and weighted by the SPEC
  likelihood of logit i (its ``S_{-i}`` holds the probit-scaled mean ``t`` of the other class, not the
  sample); self-normalised importance-sampling mean and variance of logit i vs the tilted moments.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

from factorgraph import config, guards
from factorgraph.equations import softmax_backward
from factorgraph.equations import softmax as S
from factorgraph.gaussian import Gaussian

N_CASES = 200
TOL = {np.float64: 1e-9, np.float32: 1e-6}


def _msg(mu, var, dtype=np.float64):
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    return Gaussian((mu / var).astype(dtype), (1 / var).astype(dtype))


# ----- the quad oracle ----------------------------------------------------------------------------------
def _logaddexp(a, b):
    if a == -math.inf:
        return b
    hi = max(a, b)
    return hi + math.log1p(math.exp(-abs(a - b)))


def _logsumexp(xs):
    hi = max(xs)
    if hi == -math.inf:
        return -math.inf
    return hi + math.log(sum(math.exp(x - hi) for x in xs))


def _quad_oracle_row(tau, rho, y):
    """SPEC 5.9 for one row; returns per logit (status, msg_tau, msg_rho, tau_hat, rho_hat, log_m0)."""
    C = len(tau)
    mu = [tau[j] / rho[j] for j in range(C)]
    var = [1 / rho[j] for j in range(C)]
    # 1. probit-scaled means and their max
    t = [mu[j] / math.sqrt(1 + math.pi * var[j] / 8) for j in range(C)]
    M = max(t)
    out = []
    for i in range(C):
        # 2. log S_{-i} = log sum_{j != i} exp(t_j - M) (log-sum-exp: S - exp(t_i - M) can cancel/underflow)
        log_s = _logsumexp([t[j] - M for j in range(C) if j != i])
        s, sy = math.sqrt(var[i]), math.sqrt(var[y])
        lognorm = math.log(s) + 0.5 * math.log(2 * math.pi)

        # 3.-4. log-likelihood plus log N(z; mu_i, var_i)
        def logf(z, i=i, log_s=log_s, s=s, lognorm=lognorm):
            base = (z - M) if i == y else (t[y] - M)
            return base - _logaddexp(log_s, z - M) - 0.5 * ((z - mu[i]) / s) ** 2 - lognorm

        # 5. integration interval
        lo, hi = mu[i] - 7 * s, mu[i] + 7 * s
        if hi > mu[y] - 7 * sy:
            lo, hi = min(lo, mu[y] - 7 * sy), max(hi, mu[y] + 7 * sy)
        # a reference level (so quad sees O(1) values) and break points that guide quad to the peak
        cand = [mu[i], mu[i] - var[i], mu[i] + var[i], M + log_s]
        cand = [c for c in cand if math.isfinite(c) and lo < c < hi]
        grid = np.concatenate([np.linspace(lo, hi, 4001), mu[i] + s * np.linspace(-7, 7, 141), cand])
        base = (grid - M) if i == y else (t[y] - M)
        vals = base - np.logaddexp(log_s, grid - M) - 0.5 * ((grid - mu[i]) / s) ** 2 - lognorm
        k = int(np.argmax(vals))
        zbest, gref = float(grid[k]), float(vals[k])
        near = [zbest + s * d for d in (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)]
        points = sorted({p for p in near + cand if lo < p < hi})

        def integral(fn):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", integrate.IntegrationWarning)
                return integrate.quad(fn, lo, hi, points=points, epsabs=0, epsrel=1e-10, limit=200)[0]

        # 6. moments m0, m1 and the central second moment (about the mean, to avoid cancellation)
        i0 = integral(lambda z: math.exp(logf(z) - gref))
        log_m0 = math.log(i0) + gref if i0 > 0 else -math.inf
        # 7. decisions
        if log_m0 < math.log(1e-12):
            out.append(("low", 0.0, 0.0, math.nan, math.nan, log_m0))
            continue
        mean = mu[i] + integral(lambda z: (z - mu[i]) * math.exp(logf(z) - gref)) / i0
        v = integral(lambda z: (z - mean) ** 2 * math.exp(logf(z) - gref)) / i0
        rho_hat = 1 / v
        tau_hat = mean * rho_hat
        # 8. tolerant division with tol 0.1; a larger deficit falls back to G(0, 0)
        d = rho_hat - rho[i]
        if d < -0.1:
            out.append(("improper", 0.0, 0.0, tau_hat, rho_hat, log_m0))
        else:
            out.append(("ok", tau_hat - tau[i], max(d, 0.0), tau_hat, rho_hat, log_m0))
    return out


def _random_cases(rng, n):
    """Rows with C in 2..10, means up to ~+-300, variances 1e-6..1e4 (float32-representable)."""
    cases = []
    for _ in range(n):
        c = int(rng.integers(2, 11))
        mu = rng.normal(size=c) * 10.0 ** rng.uniform(-1, 2, size=c)
        var = 10.0 ** rng.uniform(-6, 4, size=c)
        m = _msg(mu, var, np.float32)
        cases.append((m.tau.astype(np.float64), m.rho.astype(np.float64), int(rng.integers(c))))
    return cases


@pytest.fixture(scope="module")
def oracle_cases():
    rng = np.random.default_rng(59)
    cases = _random_cases(rng, N_CASES)
    return [(tau, rho, y, _quad_oracle_row(list(tau), list(rho), y)) for tau, rho, y in cases]


def _check_row(out_tau, out_rho, tau, rho, want, tol):
    for i, (status, w_tau, w_rho, tau_hat, rho_hat, log_m0) in enumerate(want):
        got_t, got_r = float(out_tau[i]), float(out_rho[i])
        if status != "ok":
            assert abs(log_m0 - math.log(config.SOFTMAX_MIN_MASS)) > 1e-6  # not a threshold tie
            assert got_t == 0.0 and got_r == 0.0, (tau, rho, i, status, got_t, got_r)
            continue
        # errors of the tilted moments scale with rho_hat (precision) and |tau_hat| + sqrt(rho_hat) (mean)
        assert abs(got_r - w_rho) <= tol * rho_hat, (tau, rho, i, got_r, w_rho)
        assert abs(got_t - w_tau) <= tol * (abs(tau_hat) + abs(tau[i]) + math.sqrt(rho_hat)), (
            tau, rho, i, got_t, w_tau)


def test_softmax_backward_vs_quad(oracle_cases, dtype, record_cases):
    """Batched by C: every (n_C, C) call equals the per-element quad oracle in natural parameters."""
    by_c = {}
    for case in oracle_cases:
        by_c.setdefault(len(case[0]), []).append(case)
    statuses = set()
    for c, rows in by_c.items():
        tau, rho = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        m = Gaussian(tau.astype(dtype), rho.astype(dtype))
        y = np.array([r[2] for r in rows])
        out = softmax_backward(m, y)
        assert out.shape == (len(rows), c) and out.tau.dtype == dtype and out.rho.dtype == dtype
        assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
        for k, (tau, rho, _, want) in enumerate(rows):
            _check_row(out.tau[k], out.rho[k], tau, rho, want, TOL[dtype])
            statuses.update(w[0] for w in want)
    assert {"ok", "low"} <= statuses  # both branches were exercised
    assert guards.get("softmax_improper_fallback") == 0 and guards.get("softmax_nonfinite_fallback") == 0
    record_cases("softmax_backward", len(oracle_cases))


def test_softmax_backward_single_row_and_permutation(oracle_cases):
    """A (C,) message with a 0-d label gives the batched result; permuting classes permutes messages."""
    rng = np.random.default_rng(3)
    for tau, rho, y, want in oracle_cases[:20]:
        out = softmax_backward(Gaussian(tau, rho), np.array(y))
        assert out.shape == tau.shape
        _check_row(out.tau, out.rho, tau, rho, want, TOL[np.float64])
        perm = rng.permutation(len(tau))
        outp = softmax_backward(Gaussian(tau[perm], rho[perm]), np.array(int(np.nonzero(perm == y)[0][0])))
        np.testing.assert_allclose(outp.tau, out.tau[perm], rtol=1e-12, atol=1e-12 * np.abs(tau).max())
        np.testing.assert_allclose(outp.rho, out.rho[perm], rtol=1e-12, atol=1e-12 * rho.max())


# ----- Monte Carlo, C = 2 -------------------------------------------------------------------------------
MC_CASES = [  # (mu, var)
    ([0.5, -0.3], [1.0, 2.0]),
    ([2.0, 1.0], [0.3, 4.0]),
    ([-1.5, 3.0], [6.0, 0.5]),
]


@pytest.mark.parametrize("mu,var", MC_CASES)
@pytest.mark.parametrize("y", [0, 1])
def test_softmax_backward_monte_carlo_two_classes(mu, var, y):
    rng = np.random.default_rng(11 + y)
    n = 400_000
    mu, var = np.array(mu), np.array(var)
    z = mu + np.sqrt(var) * rng.standard_normal((n, 2))  # both logits, from their forward messages
    t = mu / np.sqrt(1 + math.pi * var / 8)
    m = _msg(mu, var)
    post = m * softmax_backward(m, np.array(y))
    assert np.all(post.rho > m.rho)
    for i in range(2):
        other = 1 - i
        # SPEC likelihood of logit i: exp(z_i or t_y) / (exp(t_other) + exp(z_i)), t_other fixed
        log_num = z[:, i] if i == y else np.full(n, t[y])
        logw = log_num - np.logaddexp(t[other], z[:, i])
        w = np.exp(logw - logw.max())
        w /= w.sum()
        zi = z[:, i]
        mean = np.sum(w * zi)
        v = np.sum(w * (zi - mean) ** 2)
        # delta-method standard errors of the self-normalised estimates
        se_mean = math.sqrt(np.sum(w**2 * (zi - mean) ** 2))
        se_var = math.sqrt(np.sum(w**2 * ((zi - mean) ** 2 - v) ** 2))
        got_mean, got_var = post.mean[i], post.var[i]
        assert abs(got_mean - mean) < 5 * se_mean, (i, got_mean, mean, se_mean)
        assert abs(got_var - v) < 5 * se_var, (i, got_var, v, se_var)
        # the likelihood informs: the tilted variance is below the forward one
        assert got_var < var[i]


# ----- edge cases ---------------------------------------------------------------------------------------
EDGE_ROWS = [  # (mu, var, label)
    ([0.0, 1.0, -1.0], [1e8, 1e8, 1e8], 0),  # huge variances
    ([0.0, 1.0, -1.0], [1e8, 1.0, 1e-8], 2),
    ([0.0, 1.0, -1.0], [1e-8, 1e-8, 1e-8], 0),  # tiny variances
    ([0.0, 1.0, -1.0], [1e-8, 1e-8, 1e-8], 2),
    ([1e3, -1e3, 0.0, 5.0], [1e-8, 1.0, 1e8, 1e-2], 0),  # large |means|
    ([1e3, -1e3, 0.0, 5.0], [1e-8, 1.0, 1e8, 1e-2], 1),
    ([1e3, -1e3, 0.0, 5.0], [1e-8, 1.0, 1e8, 1e-2], 3),
    ([-1e3, -1e3, 1e3], [1e-8, 1e-4, 1e8], 0),
    ([-1e3, -1e3, 0.0, -1e3], [1e-4, 1e-4, 1e8, 1.0], 3),  # S_{-i} underflows for the top class
    ([1e3, 1e3], [1e8, 1e-8], 1),
    ([0.0, 0.0], [1.0, 1.0], 0),
]


def _grid_rows(rng, n, c):
    mus = np.array([-1e3, -30.0, 0.0, 1.0, 30.0, 1e3])
    vars_ = np.array([1e-8, 1e-4, 1.0, 1e4, 1e8])
    mu = rng.choice(mus, (n, c)) * rng.choice([1.0, 1.3], (n, 1))
    var = rng.choice(vars_, (n, c))
    y = rng.integers(0, c, n)
    y[: n // 3] = 0  # labels at both ends
    y[n // 3: 2 * n // 3] = c - 1
    return mu, var, y


def _check_sane(m, out, lo_hi=None):
    assert out.shape == m.shape and out.dtype == m.dtype
    assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
    # the tilted density is a log-concave tilt of m restricted to an interval: its mean lies inside the
    # interval (so within the forward +-7 sigma of logit i or of the target) and the message never
    # moves a mean to infinity
    post = m.astype(np.float64) * out.astype(np.float64)
    mu, sd = m.astype(np.float64).mean, np.sqrt(m.astype(np.float64).var)
    span = np.abs(mu).max() + 7 * sd.max()
    assert np.all(np.abs(post.mean) <= span * (1 + 1e-6))


@pytest.mark.parametrize("mu,var,y", EDGE_ROWS)
def test_softmax_backward_edge_rows(mu, var, y, dtype):
    m = _msg(mu, var, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid warnings either
        out = softmax_backward(m, np.array(y))
    _check_sane(m, out)
    assert guards.get("softmax_improper_fallback") == 0 and guards.get("softmax_nonfinite_fallback") == 0


def test_softmax_backward_edge_grid(dtype):
    """Every combination of extreme means and variances: finite output or counted fallbacks, never NaN."""
    rng = np.random.default_rng(21)
    mu, var, y = _grid_rows(rng, 1500, 4)
    m = _msg(mu, var, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = softmax_backward(m, y)
    _check_sane(m, out)
    counts = guards.counts()
    assert set(counts) <= {"softmax_low_mass", "softmax_tolerant_clamp", "softmax_improper_fallback",
                           "softmax_nonfinite_fallback"}
    assert counts.get("softmax_low_mass", 0) > 0
    # G(0, 0) exactly where a fallback or low mass says so: no more zero messages than counted
    zero = (out.tau == 0) & (out.rho == 0)
    fallbacks = sum(counts.get(k, 0) for k in ("softmax_low_mass", "softmax_improper_fallback",
                                                "softmax_nonfinite_fallback"))
    assert zero.sum() >= fallbacks


def test_softmax_backward_agrees_across_dtypes():
    rng = np.random.default_rng(5)
    mu, var, y = _grid_rows(rng, 300, 5)
    m32 = _msg(mu, var, np.float32)
    a = softmax_backward(m32, y)
    b = softmax_backward(m32.astype(np.float64), y)
    np.testing.assert_array_equal(a.tau, b.tau.astype(np.float32))
    np.testing.assert_array_equal(a.rho, b.rho.astype(np.float32))


# ----- guards -------------------------------------------------------------------------------------------
def test_low_mass_gives_uniform_and_is_counted():
    # i = 1 != y sits 200 above the target with tiny variance: exp(l) ~ exp(-200) on its whole support
    m = _msg([-100.0, 100.0], [1.0, 1.0])
    out = softmax_backward(m, np.array(0))
    assert out.tau[1] == 0 and out.rho[1] == 0
    assert guards.get("softmax_low_mass") == 2  # the target (likelihood ~exp(-200) as well) and logit 1


def test_decisions_on_constructed_moments():
    """The decision step of SPEC 5.7-8 on hand-made moments: each guard fires where expected."""
    mu = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    rho = np.ones(7)
    log_m0 = np.array([math.log(1e-13), 0.0, 0.0, 0.0, 0.0, -1.0, -2.0])
    mean_u = np.array([0.3, 0.2, 0.2, np.nan, 0.1, 0.0, 0.5])
    var_u = np.array([0.5, 1 / 0.5, 1 / 0.95, 0.5, 0.0, np.inf, 0.25])
    tau, r = S._softmax_message(mu, rho, log_m0, mean_u, var_u)
    # 0: low mass; 1: deficit -0.5 -> improper fallback; 2: deficit -0.05 -> clamp, G(tau_hat - tau, 0);
    # 3: NaN mean, 4: zero variance, 5: infinite variance -> non-finite fallback; 6: a proper message
    assert guards.counts() == {"softmax_low_mass": 1, "softmax_improper_fallback": 1,
                               "softmax_tolerant_clamp": 1, "softmax_nonfinite_fallback": 3}
    np.testing.assert_array_equal(r[[0, 1, 3, 4, 5]], 0)
    np.testing.assert_array_equal(tau[[0, 1, 3, 4, 5]], 0)
    assert r[2] == 0 and tau[2] == pytest.approx(1.2 * 0.95 - 1.0)
    assert r[6] == pytest.approx(3.0) and tau[6] == pytest.approx(2.5 * 4 - 2.0)


def test_improper_and_nonfinite_through_softmax_backward(monkeypatch):
    """Wired end to end: moments that imply a negative precision or NaN give counted G(0, 0), no raise."""
    m = _msg([0.5, -0.5, 0.0], [1.0, 2.0, 0.5])
    real = S._tilted_moments

    def widen(*args):
        log_m0, mean_u, var_u = real(*args)
        var_u = var_u * 3.0  # wider than the forward variance: deficit <= -2/3 rho
        mean_u[2] = np.nan
        return log_m0, mean_u, var_u

    monkeypatch.setattr(S, "_tilted_moments", widen)
    out = softmax_backward(m, np.array(1))
    assert np.all(out.tau == 0) and np.all(out.rho == 0)
    assert guards.get("softmax_improper_fallback") == 2 and guards.get("softmax_nonfinite_fallback") == 1


def test_input_validation():
    m = _msg([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError):
        softmax_backward(m, np.array(2))
    with pytest.raises(ValueError):
        softmax_backward(m, np.array([0, 1]))
    with pytest.raises(ValueError):
        softmax_backward(Gaussian(np.zeros(2), np.array([1.0, 0.0])), np.array(0))


def test_quadrature_rule_is_cached_and_exact_for_polynomials():
    x, w = S._gauss_legendre()
    assert S._gauss_legendre()[0] is x
    assert len(x) == S._GL_POINTS
    for k in range(2 * S._GL_POINTS):
        assert np.sum(w * x**k) == pytest.approx(1 / (k + 1), rel=1e-13)
