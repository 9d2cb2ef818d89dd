"""Parallel (chunked) message passing within a batch: ``Chunked(1)`` is the sequential schedule exactly,
and on Bayesian linear regression the fully parallel schedule (damped) reaches the exact posterior mean."""

import numpy as np
import pytest

from factorgraph import kernels
from layers import create_factor_graph
from schedules import Chunked, Shuffled

TEMPLATES = [(3,), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 2),
             ("Regression", 0.05)]


def _data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)


def _state(fg):
    return [(s.q.tau.copy(), s.q.rho.copy(), s.msgs.tau.copy()) for _, layer in fg.weighted_layers()
            for s in layer.params.values()]


@pytest.fixture(params=[True, False], ids=["kernels", "numpy"])
def use_kernels(request):
    """Run the test with the compiled kernels, then with the NumPy reference."""
    prev = kernels.set_enabled(request.param)
    yield request.param
    kernels.set_enabled(prev)


def test_chunk_of_one_is_the_sequential_schedule_exactly(use_kernels):
    X, Y = _data()
    a = create_factor_graph(TEMPLATES, batch_size=24, seed=2)
    b = create_factor_graph(TEMPLATES, batch_size=24, seed=2)
    a.train_batch(X, Y, 3, order=Shuffled())
    b.train_batch(X, Y, 3, order=Chunked(1))
    for sa, sb in zip(_state(a), _state(b)):
        for u, v in zip(sa, sb):
            np.testing.assert_array_equal(u, v)


def test_chunked_marginal_is_prior_times_damped_messages(use_kernels):
    X, Y = _data()
    fg = create_factor_graph(TEMPLATES, batch_size=24, seed=2)
    fg.train_batch(X, Y, 2, order=Chunked(8, damping=0.5))
    for _, layer in fg.weighted_layers():
        for s in layer.params.values():
            np.testing.assert_allclose(s.q.rho, s.msgs.rho.sum(0), rtol=1e-12)
            assert s.pending is None and s.damping == 1.0


def test_chunks_see_the_marginal_of_the_chunk_start():
    """Within a chunk the marginals do not move: the forward of the chunk's last example equals its
    forward on a graph that saw none of the chunk's earlier examples."""
    X, Y = _data(n=4)
    fg = create_factor_graph([(3,), ("Linear", 2), ("Regression", 0.05)], batch_size=4, seed=0)
    ref = create_factor_graph([(3,), ("Linear", 2), ("Regression", 0.05)], batch_size=4, seed=0)
    slots = [s for _, layer in fg.weighted_layers() for s in layer.params.values()]
    for s in slots:
        s.defer(1.0)
    for i in range(3):
        fg.forward_pass(X[i], i)
        fg.backward_pass(Y[i], i)
    np.testing.assert_array_equal(fg.forward_pass(X[3], 3).tau, ref.forward_pass(X[3], 3).tau)
    for s in slots:
        s.commit()
    assert not np.array_equal(fg.forward_pass(X[3], 3).tau, ref.forward_pass(X[3], 3).tau)


def test_fully_parallel_damped_schedule_reaches_exact_blr_posterior_mean():
    rng = np.random.default_rng(5)
    n, d = 40, 3
    X = rng.normal(size=(n, d)) @ np.array([[1, .5, 0], [0, 1, .3], [0, 0, 1]]) + 0.3
    y = X @ np.array([0.5, -1.0, 2.0]) + 0.2 * rng.normal(size=n)
    m0, v0, bv, beta2 = 0.4, 1.0, 1.0, 0.04
    fg = create_factor_graph([(d,), ("Linear", 1, {"prior_mean": m0, "prior_var": v0, "bias_prior_var": bv}),
                              ("Regression", beta2)], batch_size=n, seed=0)
    fg.train_batch(X, y[:, None], 400, order=Chunked(n, damping=0.2))
    A = np.hstack([X, np.ones((n, 1))])
    P0 = np.diag([1 / v0] * d + [1 / bv])
    P = P0 + A.T @ A / beta2
    exact = np.linalg.solve(P, P0 @ np.array([m0] * d + [0.0]) + A.T @ y / beta2)
    lin = fg.layers[0]
    est = np.concatenate([lin.params["W"].q.mean[:, 0], lin.params["c"].q.mean])
    np.testing.assert_allclose(est, exact, rtol=1e-8, atol=1e-10)


def test_chunked_rejects_bad_values():
    with pytest.raises(ValueError, match="chunk_size"):
        Chunked(0)
    with pytest.raises(ValueError, match="damping"):
        Chunked(4, damping=0.0)
    assert str(Chunked(8, 0.5)) == "Chunked(8, damping=0.5)"
