"""Bayesian linear regression is exact: serial Gaussian message passing on one Linear layer plus a
Regression likelihood has the closed-form posterior mean as its fixed point.  The oracle is the
normal-equation solution; it shares nothing with the library."""

import numpy as np
import pytest

from layers import create_factor_graph
from trainer import Trainer, constant_damping


def _problem(seed, n=40, d=4):
    rng = np.random.default_rng(seed)
    C = np.array([[1, .8, .3, 0], [.8, 1, .5, .2], [.3, .5, 1, .4], [0, .2, .4, 1]])[:d, :d]
    X = rng.normal(size=(n, d)) @ np.linalg.cholesky(C).T + 0.5  # correlated, non-centred inputs
    w = rng.normal(size=d)
    y = X @ w + 0.3 * rng.normal(size=n)
    return X, y


def _closed_form(X, y, m0, v0, bv, beta2):
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    P0 = np.diag([1 / v0] * d + [1 / bv])
    mu0 = np.array([m0] * d + [0.0])
    P = P0 + A.T @ A / beta2
    return np.linalg.solve(P, P0 @ mu0 + A.T @ y / beta2)


def _templates(d, m0, v0, bv, beta2):
    return [(d,), ("Linear", 1, {"prior_mean": m0, "prior_var": v0, "bias_prior_var": bv}),
            ("Regression", beta2)]


def _posterior_mean(fg):
    lin = fg.layers[0]
    return np.concatenate([lin.params["W"].q.mean[:, 0], lin.params["c"].q.mean])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_train_batch_reaches_exact_posterior_mean(seed):
    X, y = _problem(seed)
    m0, v0, bv, beta2 = 0.7, 2.0, 1.5, 0.09
    fg = create_factor_graph(_templates(4, m0, v0, bv, beta2), batch_size=len(X), seed=seed)
    fg.train_batch(X, y[:, None], 300)
    exact = _closed_form(X, y, m0, v0, bv, beta2)
    np.testing.assert_allclose(_posterior_mean(fg), exact, rtol=1e-8, atol=1e-10 * np.abs(exact).max())


def test_few_iterations_are_not_exact():
    """The check above can fail: after one sweep the means are still far from the posterior."""
    X, y = _problem(0)
    fg = create_factor_graph(_templates(4, 0.7, 2.0, 1.5, 0.09), batch_size=len(X), seed=0)
    fg.train_batch(X, y[:, None], 1)
    exact = _closed_form(X, y, 0.7, 2.0, 1.5, 0.09)
    assert np.abs(_posterior_mean(fg) - exact).max() > 1e-3


def test_trainer_with_several_batches_reaches_exact_posterior_mean():
    X, y = _problem(4, n=60)
    m0, v0, bv, beta2 = -0.3, 1.0, 2.0, 0.09
    fg = create_factor_graph(_templates(4, m0, v0, bv, beta2), batch_size=16, seed=0)
    tr = Trainer(fg, X, y[:, None], damping=constant_damping(1.0), progress=False)
    tr.train(num_epochs=60, num_training_its=20)
    exact = _closed_form(X, y, m0, v0, bv, beta2)
    total_w, total_c = tr.total[(0, "W")], tr.total[(0, "c")]
    est = np.concatenate([total_w.mean[:, 0], total_c.mean])
    # batch-level fixed point iteration converges geometrically; 60 epochs get it to ~1e-7
    np.testing.assert_allclose(est, exact, rtol=1e-5, atol=1e-7 * np.abs(exact).max())
