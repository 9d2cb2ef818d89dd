"""Oracle tests for the probit-approximated softmax prediction (SPEC 3.3, 5.9).

Oracles: a naive per-row loop (t_i = mu_i / sqrt(1 + pi var_i / 8), softmax) from ``oracles_1d``, and
Monte Carlo of E[softmax(a)] for two classes, where the probit approximation is the classic
E[sigmoid(a)] ~ sigmoid(mu / sqrt(1 + pi var / 8)) when the other logit is (nearly) certain.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import RTOL
from factorgraph.equations import probit_scaled_means, probit_softmax
from factorgraph.gaussian import Gaussian

import oracles_1d as O

N_CASES = 250


def _msg(mu, var, dtype=np.float64):
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    return Gaussian((mu / var).astype(dtype), (1 / var).astype(dtype))


def test_probit_softmax_vs_loop(dtype, record_cases):
    rng = np.random.default_rng(1)
    tol = RTOL[dtype] if dtype is np.float64 else 1e-5
    tiny = 1e-300 if dtype is np.float64 else 1e-35
    for _ in range(N_CASES):
        c = int(rng.integers(2, 11))
        mu, var = rng.uniform(-15, 15, c), 10.0 ** rng.uniform(-4, 3, c)
        m = _msg(mu, var, dtype)
        p = probit_softmax(m)
        assert p.shape == (c,) and p.dtype == dtype
        mu64, var64 = (m.tau / m.rho).astype(np.float64), (1 / m.rho).astype(np.float64)
        want = O.probit_softmax_row(list(mu64), list(var64))
        for i in range(c):
            assert abs(float(p[i]) - want[i]) <= tol * want[i] + tiny, (mu, var, i, p[i], want[i])
    record_cases("probit_softmax", N_CASES)


def test_probit_scaled_means_vs_loop():
    rng = np.random.default_rng(2)
    mu, var = rng.uniform(-10, 10, 200), 10.0 ** rng.uniform(-6, 6, 200)
    t = probit_scaled_means(_msg(mu, var))
    for i in range(200):
        assert t[i] == pytest.approx(mu[i] / math.sqrt(1 + math.pi * var[i] / 8), rel=1e-12)


def test_probit_softmax_batched(record_cases):
    rng = np.random.default_rng(3)
    n, c = 50, 7
    mu, var = rng.uniform(-8, 8, (n, c)), 10.0 ** rng.uniform(-3, 2, (n, c))
    p = probit_softmax(_msg(mu, var))
    assert p.shape == (n, c)
    for r in range(n):
        np.testing.assert_allclose(p[r], O.probit_softmax_row(list(mu[r]), list(var[r])), rtol=1e-12)
    record_cases("probit_softmax", n)


def test_probit_softmax_close_to_monte_carlo_two_classes(record_cases):
    """C = 2 with logit 0 certain: p_1 = sigmoid(t_1) approximates E[sigmoid(a_1)] to ~0.013 (the
    maximum error of the probit approximation); Monte Carlo adds ~1e-3 of noise."""
    rng = np.random.default_rng(4)
    n_cases, n_samples = 40, 200_000
    worst = 0.0
    for _ in range(n_cases):
        mu1, var1 = rng.uniform(-6, 6), 10.0 ** rng.uniform(-2, 2)
        mu0 = 0.0
        a1 = rng.normal(mu1, math.sqrt(var1), n_samples)
        a0 = np.full(n_samples, mu0)
        # softmax of two logits, written out: e^a1 / (e^a0 + e^a1)
        mc = float(np.mean(1.0 / (1.0 + np.exp(a0 - a1))))
        p = probit_softmax(_msg([mu0, mu1], [1e-12, var1]))
        worst = max(worst, abs(float(p[1]) - mc))
        assert abs(float(p[0]) + float(p[1]) - 1) < 1e-12
    assert worst < 0.02, worst
    record_cases("probit_softmax", n_cases)


def test_probit_softmax_large_logits_do_not_overflow(dtype):
    big = 1e30 if dtype is np.float32 else 1e300
    cases = [
        ([1e3, 999.0, -1e3], [1e-6, 1e-6, 1e-6]),
        ([big, 0.0, -big], [1.0, 1.0, 1.0]),
        ([800.0, 800.0], [1e-3, 1e-3]),
        ([-800.0, -801.0], [1e-3, 1e-3]),
    ]
    for mu, var in cases:
        p = probit_softmax(_msg(mu, var, dtype))
        assert np.all(np.isfinite(p)) and np.all(p >= 0), (mu, p)
        assert float(p.sum()) == pytest.approx(1.0, rel=1e-6)
        np.testing.assert_allclose(p, O.probit_softmax_row(mu, var), rtol=RTOL[dtype], atol=1e-30)
    # nearly certain logits one apart: almost sigmoid(+-1)
    p = probit_softmax(_msg([1e3, 999.0, -1e3], [1e-6, 1e-6, 1e-6]))
    np.testing.assert_allclose(p, [1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0.0], rtol=1e-6, atol=1e-300)


def test_probit_softmax_uniform_logit():
    """A logit with rho = 0 (mean 0, variance inf by convention) gets t = 0."""
    m = Gaussian(np.array([0.0, 2.0]), np.array([0.0, 1.0]))
    p = probit_softmax(m)
    t1 = 2.0 / math.sqrt(1 + math.pi / 8)
    np.testing.assert_allclose(p, [1 / (1 + math.exp(t1)), 1 / (1 + math.exp(-t1))], rtol=1e-12)


def test_probit_softmax_variance_pulls_towards_uniform():
    """Growing variance of the winning logit shrinks its probability towards 1/C."""
    var = 10.0 ** np.linspace(-3, 6, 30)
    p = [probit_softmax(_msg([2.0, 0.0, 0.0], [v, 1e-6, 1e-6]))[0] for v in var]
    assert np.all(np.diff(p) < 0)
    assert p[-1] == pytest.approx(1 / 3, abs=1e-3)


@settings(max_examples=120, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 12), elements=st.floats(-1e6, 1e6)),
    st.data(),
)
def test_property_probit_softmax_finite_normalised(mu, data):
    var = data.draw(hnp.arrays(np.float64, len(mu), elements=st.floats(1e-10, 1e10)))
    m = _msg(mu, var)
    p = probit_softmax(m)
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    assert abs(float(p.sum()) - 1) < 1e-12
    # the largest scaled mean gets the largest probability (means as stored in the message)
    t = (m.tau / m.rho) / np.sqrt(1 + np.pi * (1 / m.rho) / 8)
    assert p[int(np.argmax(t))] == p.max()
