"""Layer plumbing: incremental marginals equal exact products, layers call the equations as specified,
prediction shapes and dtypes, and an end-to-end statistic that can fail."""

import numpy as np
import pytest

from factorgraph import equations as eq
from factorgraph.gaussian import Gaussian
from layers import create_factor_graph

TOY = [(1,), ("Linear", 16), ("LeakyReLU", 0.1), ("Linear", 16), ("LeakyReLU", 0.1), ("Linear", 1),
       ("Regression", 0.05 ** 2)]


def toy_data(n, lo, hi, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, 1))
    g = 0.5 * x + 0.2 * np.sin(2 * np.pi * x) + 0.3 * np.sin(4 * np.pi * x)
    return x, g + 0.05 * rng.normal(size=x.shape)


def test_incremental_marginal_equals_exact_product_after_every_example():
    X, Y = toy_data(12, 0, 1, 0)
    fg = create_factor_graph(TOY, batch_size=12, seed=0)
    for it in range(2):
        for i in range(12):
            fg.forward_pass(X[i], i)
            fg.backward_pass(Y[i], i)
            for _, layer in fg.weighted_layers():
                for slots in layer.params.values():
                    np.testing.assert_allclose(slots.q.tau, slots.msgs.tau.sum(0), rtol=1e-9, atol=1e-9)
                    np.testing.assert_allclose(slots.q.rho, slots.msgs.rho.sum(0), rtol=1e-9, atol=1e-9)


def test_first_linear_forward_uses_cavities_and_s1():
    fg = create_factor_graph([(3,), ("Linear", 2), ("Regression", 0.1)], batch_size=2, seed=0)
    x = np.array([0.5, -1.0, 2.0])
    fg.forward_pass(x, 0)
    fg.backward_pass(np.array([0.3, -0.2]), 0)
    out = fg.forward_pass(x, 0)
    lin = fg.layers[0]
    W, c = lin.params["W"], lin.params["c"]
    cav_w = Gaussian(W.q.tau - W.msgs.tau[0], W.q.rho - W.msgs.rho[0])
    cav_c = Gaussian(c.q.tau - c.msgs.tau[0], c.q.rho - c.msgs.rho[0])
    mu = x @ (cav_w.tau / cav_w.rho) + cav_c.tau / cav_c.rho
    var = (x ** 2) @ (1 / cav_w.rho) + 1 / cav_c.rho
    np.testing.assert_allclose(out.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(out.var, var, rtol=1e-12)


def test_leaky_relu_first_iteration_is_moment_matching_then_marginal():
    X, Y = toy_data(4, 0, 1, 1)
    fg = create_factor_graph(TOY, batch_size=4, seed=0)
    fg.forward_pass(X[0], 0)
    relu = fg.layers[1]
    m_in = relu.m_in[0]
    first = eq.leaky_forward_moment_match(m_in, 0.1)
    out = relu.forward(m_in, 0)
    np.testing.assert_allclose(out.tau, first.tau)
    fg.backward_pass(Y[0], 0)
    second = relu.forward(m_in, 0)
    expected = eq.leaky_forward_marginal(m_in, relu.m_back[0], 0.1)
    np.testing.assert_allclose(second.tau, expected.tau)
    assert not np.allclose(second.tau, first.tau)


def test_predict_shapes_split_and_dtype(dtype):
    X, Y = toy_data(10, 0, 1, 2)
    fg = create_factor_graph(TOY, batch_size=4, seed=0, dtype=dtype)
    fg.train_batch(X[:4], Y[:4], 2)
    mean, var = fg.predict(X)
    assert mean.shape == var.shape == (10, 1)
    assert mean.dtype == dtype and var.dtype == dtype
    m2, epi, ale = fg.predict(X, split=True)
    np.testing.assert_allclose(epi + ale, var, rtol=1e-5)
    assert np.all(ale == np.asarray(0.05 ** 2, dtype))
    for _, layer in fg.weighted_layers():
        assert layer.params["W"].q.tau.dtype == dtype


@pytest.mark.slow
def test_toy_network_fits_and_is_uncertain_out_of_range():
    X, Y = toy_data(100, 0, 1, 98)
    fg = create_factor_graph(TOY, batch_size=100, seed=98)
    fg.train_batch(X, Y, 40)
    rmse = fg.evaluate(X, Y)["rmse"]
    assert rmse < 0.12  # the target's std is about 0.26; an untrained network is far off
    _, var_in = fg.predict(np.linspace(0, 1, 50)[:, None])
    _, var_out = fg.predict(np.linspace(5, 6, 50)[:, None])
    assert np.median(var_out) > 10 * np.median(var_in)


def test_untrained_network_does_not_fit():
    """The fit statistic above can fail: without training the RMSE is large."""
    X, Y = toy_data(100, 0, 1, 98)
    fg = create_factor_graph(TOY, batch_size=100, seed=98)
    assert fg.evaluate(X, Y)["rmse"] > 0.12
