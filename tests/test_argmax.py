"""Oracle tests for the argmax likelihood (SPEC 5.5, 5.10).

Oracles: Monte Carlo of the pairwise probabilities P(a_i - a_j + eps > 0), eps ~ N(0, 0.3); a double
loop with ``scipy.stats.norm.cdf``; and a loop over the pairs (y, i) in moment form with
``scipy.stats.truncnorm`` for the backward messages (``oracles_1d``).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import RTOL
from factorgraph.equations import argmax_backward, argmax_log_probs, argmax_probs
from factorgraph.gaussian import Gaussian

import oracles_1d as O

NOISE = 0.3
REG_VAR = 0.1
N_CASES = 220


def _msg(mu, var, dtype=np.float64):
    mu, var = np.asarray(mu, np.float64), np.asarray(var, np.float64)
    return Gaussian((mu / var).astype(dtype), (1 / var).astype(dtype))


def _rows(rng, n, c_max=6, mu_scale=5.0, lv=(-3, 2)):
    """n random rows, each (mu, var) of 2..c_max classes."""
    out = []
    for _ in range(n):
        c = int(rng.integers(2, c_max + 1))
        out.append((rng.uniform(-mu_scale, mu_scale, c), 10.0 ** rng.uniform(*lv, c)))
    return out


# ===== probabilities ====================================================================================
def test_argmax_probs_vs_loop(dtype, record_cases):
    rng = np.random.default_rng(1)
    rows = _rows(rng, N_CASES, c_max=6)
    tol = RTOL[dtype] if dtype is np.float64 else 1e-4
    tiny = 1e-300 if dtype is np.float64 else 1e-35  # float32 flushes smaller probabilities to 0
    for mu, var in rows:
        m = _msg(mu, var, dtype)
        p = argmax_probs(m)
        assert p.shape == mu.shape and p.dtype == dtype
        mu64, var64 = (m.tau / m.rho).astype(np.float64), (1 / m.rho).astype(np.float64)
        want = O.argmax_probs_row(list(mu64), list(var64), NOISE)
        for i in range(len(mu)):
            assert abs(float(p[i]) - want[i]) <= tol * want[i] + tiny, (mu, var, i, p[i], want[i])
    record_cases("argmax_probs", N_CASES)


def test_argmax_probs_batched_rows(record_cases):
    """A (n, C) batch gives row-wise results equal to the per-row oracle; log probs agree."""
    rng = np.random.default_rng(2)
    n, c = 40, 5
    mu, var = rng.uniform(-4, 4, (n, c)), 10.0 ** rng.uniform(-2, 1, (n, c))
    m = _msg(mu, var)
    p = argmax_probs(m)
    lp = argmax_log_probs(m)
    assert p.shape == (n, c)
    np.testing.assert_allclose(np.exp(lp), p, rtol=1e-14)
    for r in range(n):
        np.testing.assert_allclose(p[r], O.argmax_probs_row(list(mu[r]), list(var[r])), rtol=1e-9)
    record_cases("argmax_probs", n)


def test_argmax_probs_vs_monte_carlo(record_cases):
    """Each pairwise factor is P(a_i - a_j + eps > 0), a_i ~ N(mu_i, var_i), eps ~ N(0, 0.3); sample
    each pair independently and normalise the product of the sampled probabilities."""
    rng = np.random.default_rng(3)
    n_samples = 100_000
    rows = _rows(rng, 40, c_max=5, mu_scale=2.0, lv=(-1.5, 0.5))
    worst = 0.0
    for mu, var in rows:
        c = len(mu)
        pair = np.ones((c, c))
        for i in range(c):
            for j in range(i + 1, c):
                ai = rng.normal(mu[i], math.sqrt(var[i]), n_samples)
                aj = rng.normal(mu[j], math.sqrt(var[j]), n_samples)
                eps = rng.normal(0.0, math.sqrt(NOISE), n_samples)
                pij = float(np.mean(ai - aj + eps > 0))
                pair[i, j], pair[j, i] = pij, 1.0 - pij  # the same event seen from both sides
        pstar = pair.prod(axis=1)
        want = pstar / pstar.sum()
        got = argmax_probs(_msg(mu, var))
        worst = max(worst, float(np.max(np.abs(got - want))))
    # standard error of each pairwise probability <= 0.5 / sqrt(1e5) = 1.6e-3
    assert worst < 0.012, worst
    record_cases("argmax_probs", len(rows))


def test_argmax_probs_noise_is_included():
    """With equal variances 0 the probabilities depend on the noise 0.3 (SPEC 5.10 [C])."""
    m = _msg([0.0, 1.0], [1e-12, 1e-12])
    p = argmax_probs(m)
    q = O.argmax_probs_row([0.0, 1.0], [0.0, 0.0], NOISE)
    np.testing.assert_allclose(p, q, rtol=1e-9)
    # without the noise the larger logit would win with probability ~1
    assert 0.02 < p[0] < 0.1


def test_argmax_probs_rows_sum_to_one_and_extremes():
    rng = np.random.default_rng(4)
    mu = rng.uniform(-200, 200, (100, 10))
    var = 10.0 ** rng.uniform(-8, 4, (100, 10))
    p = argmax_probs(_msg(mu, var))
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
    # a logit 1e3 above all others with tiny variances wins with probability 1
    p = argmax_probs(_msg([0.0, 1e3, -5.0], [1e-6, 1e-6, 1e-6]))
    np.testing.assert_allclose(p, [0.0, 1.0, 0.0], atol=1e-300)


def test_argmax_probs_permutation_symmetric(record_cases):
    rng = np.random.default_rng(5)
    for mu, var in _rows(rng, 100, c_max=8):
        perm = rng.permutation(len(mu))
        p = argmax_probs(_msg(mu, var))
        q = argmax_probs(_msg(mu[perm], var[perm]))
        np.testing.assert_allclose(q, p[perm], rtol=1e-12, atol=1e-300)


# ===== backward =========================================================================================
def _check_backward_row(mu, var, y, out_tau, out_rho, regularize, tol):
    want_tau, want_rho = O.argmax_backward_row(list(mu), list(var), int(y), regularize, NOISE, REG_VAR)
    scale_tau, scale_rho = O.argmax_backward_scale_row(list(mu), list(var), int(y), NOISE)
    for i in range(len(mu)):
        # the truncation ratio is a difference of precisions ~1/var_s; its error sets the scale
        st_ = scale_tau[i] + abs(want_tau[i]) + (10.0 if regularize else 0.0)
        sr = scale_rho[i] + abs(want_rho[i]) + (10.0 if regularize else 0.0)
        assert abs(float(out_rho[i]) - want_rho[i]) <= tol * sr, (mu, var, y, i, out_rho[i], want_rho[i])
        assert abs(float(out_tau[i]) - want_tau[i]) <= tol * st_, (mu, var, y, i, out_tau[i], want_tau[i])


@pytest.mark.parametrize("regularize,n_cases", [(False, N_CASES), (True, 80)])
def test_argmax_backward_vs_moment_form_loop(regularize, n_cases, record_cases):
    rng = np.random.default_rng(6 + regularize)
    for mu, var in _rows(rng, n_cases, c_max=5):
        y = int(rng.integers(len(mu)))
        out = argmax_backward(_msg(mu, var), np.array(y), regularize=regularize)
        assert out.shape == mu.shape
        assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
        _check_backward_row(mu, var, y, out.tau, out.rho, regularize, 1e-8)
    record_cases("argmax_backward", n_cases)


@pytest.mark.parametrize("regularize", [False, True])
def test_argmax_backward_batched_labels(regularize, dtype, record_cases):
    """(n, C) messages with (n,) labels: every row equals the per-row oracle."""
    rng = np.random.default_rng(8 + regularize)
    n, c = 30, 4
    mu, var = rng.uniform(-4, 4, (n, c)), 10.0 ** rng.uniform(-2, 1.5, (n, c))
    y = rng.integers(0, c, n)
    m = _msg(mu, var, dtype)
    out = argmax_backward(m, y, regularize=regularize)
    assert out.shape == (n, c) and out.tau.dtype == dtype and out.rho.dtype == dtype
    tol = RTOL[dtype] if dtype is np.float64 else 1e-4
    for r in range(n):
        mu64, var64 = (m.tau[r] / m.rho[r]).astype(np.float64), (1 / m.rho[r]).astype(np.float64)
        _check_backward_row(mu64, var64, y[r], out.tau[r], out.rho[r], regularize, tol)
    record_cases("argmax_backward", n)


def test_argmax_backward_structure():
    """Target message = product of its pair messages; non-target precision = hack-1 scaled pair message;
    regularisation adds exactly N(+-1, 0.1) in natural parameters."""
    mu, var = np.array([0.5, -1.0, 2.0, 0.0]), np.array([0.4, 1.5, 0.2, 3.0])
    m = _msg(mu, var)
    y = np.array(2)
    plain = argmax_backward(m, y)
    reg = argmax_backward(m, y, regularize=True)
    np.testing.assert_allclose(reg.rho - plain.rho, 1 / REG_VAR, rtol=1e-12)
    np.testing.assert_allclose(reg.tau - plain.tau, [-10.0, -10.0, 10.0, -10.0], rtol=1e-12)
    # the target message is the product of one message per pair: removing a class changes it by
    # exactly that pair's contribution
    m3 = _msg(mu[[0, 2, 3]], var[[0, 2, 3]])
    three = argmax_backward(m3, np.array(1))
    t_full, r_full = O.argmax_backward_row(list(mu), list(var), 2, False)
    t_pair1, r_pair1 = O.argmax_backward_row(list(mu[[1, 2]]), list(var[[1, 2]]), 1, False)
    assert plain.rho[2] == pytest.approx(three.rho[1] + r_pair1[1], rel=1e-12)
    assert plain.tau[2] == pytest.approx(three.tau[1] + t_pair1[1], rel=1e-12)
    # hack 1 keeps the mean of the non-target messages: it equals mu_y - mu_r of the moment form
    for i in (0, 1, 3):
        assert plain.tau[i] / plain.rho[i] == pytest.approx(t_full[i] / r_full[i], rel=1e-10)


def test_argmax_backward_extremes_finite():
    """Logits far apart (target far ahead or far behind) and tiny / huge variances stay finite."""
    mu = np.array([[0.0, 50.0, -50.0], [1e3, 0.0, -1e3], [0.0, 0.0, 0.0], [-30.0, 30.0, 0.0]])
    var = np.array([[1e-8, 1e-8, 1e-8], [1e4, 1e-6, 1.0], [1e8, 1e-8, 1.0], [1e-3, 1e-3, 1e-3]])
    for y in range(3):
        out = argmax_backward(_msg(mu, var), np.full(4, y))
        assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
        for r in range(4):
            _check_backward_row(mu[r], var[r], y, out.tau[r], out.rho[r], False, 1e-7)


# ===== properties =======================================================================================
@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(2, 7), elements=st.floats(-50, 50)),
    st.data(),
)
def test_property_argmax_probs_symmetry(mu, data):
    c = len(mu)
    var = data.draw(hnp.arrays(np.float64, c, elements=st.floats(1e-6, 1e3)))
    perm = np.array(data.draw(st.permutations(range(c))))
    p = argmax_probs(_msg(mu, var))
    q = argmax_probs(_msg(mu[perm], var[perm]))
    assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-12
    np.testing.assert_allclose(q, p[perm], rtol=1e-10, atol=1e-300)
    # equal logits (same mean and variance) get equal probabilities
    i, j = 0, 1
    mu2, var2 = mu.copy(), var.copy()
    mu2[j], var2[j] = mu2[i], var2[i]
    p2 = argmax_probs(_msg(mu2, var2))
    assert p2[i] == pytest.approx(p2[j], rel=1e-12, abs=1e-300)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(2, 7), elements=st.floats(-100, 100)),
    st.data(),
)
def test_property_argmax_backward_finite(mu, data):
    c = len(mu)
    var = data.draw(hnp.arrays(np.float64, c, elements=st.floats(1e-6, 1e4)))
    y = data.draw(st.integers(0, c - 1))
    for regularize in (False, True):
        out = argmax_backward(_msg(mu, var), np.array(y), regularize=regularize)
        assert np.all(np.isfinite(out.tau)) and np.all(np.isfinite(out.rho)) and np.all(out.rho >= 0)
