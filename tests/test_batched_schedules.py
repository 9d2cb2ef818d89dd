"""Batched schedules (issue 7): ``Parallel`` (chunks as matrices, one weight site per chunk), ``Chains``,
and the Trainer's half-batch mixing and warm starts.

Oracles: per-use first-order expansions written out by broadcasting (for the GEMM messages), the exact
per-use messages (error bound ``e^2 / (1 - e)``), the sequential schedule, and the closed-form Bayesian
linear regression posterior (``tests/test_blr.py``)."""

import contextlib

import numpy as np
import pytest

from factorgraph.equations import (
    s1_backward_to_b,
    s1_backward_to_b_gemm,
    s1_forward,
    s2_backward,
    s2_backward_gemm,
    s2_forward,
)
from factorgraph.factor import Factor
from factorgraph.gaussian import Gaussian
from layers import create_factor_graph
from schedules import ByEpoch, Chains, Chunked, Constant, Parallel, Shuffled
from test_blr import _closed_form, _posterior_mean, _problem, _templates
from trainer import Trainer

MLP = [(3,), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 3), ("Argmax", True)]
CNN = [(8, 8, 1), ("Conv", 2, 3), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 3, 2, 1), ("LeakyReLU", 0.1),
       ("AvgPool", 3), ("Flatten",), ("Linear", 3), ("Softmax",)]


def _g(rng, shape, scale=1.0):
    mu = rng.normal(size=shape)
    var = scale * rng.uniform(0.01, 1, size=shape)
    return Gaussian(mu / var, 1 / var)


MLP_REG = [(3,), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 2),
           ("Regression", 0.05)]


@contextlib.contextmanager
def _kernels(on):
    """The compiled CPU kernels on or off for the block (the previous setting restored)."""
    from factorgraph import kernels

    prev = kernels.set_enabled(on)
    try:
        yield
    finally:
        kernels.set_enabled(prev)


def _weights(fg):
    return [s.q for _, layer in fg.weighted_layers() for s in layer.params.values()]


# --- the GEMM message equations -------------------------------------------------------------------
def test_s2_gemm_equals_first_order_expansion_of_every_use():
    rng = np.random.default_rng(0)
    U, K, J = 5, 9, 4
    qa, qb, mc, r = _g(rng, (U, K)), _g(rng, (K, J), 0.05), _g(rng, (J,)), _g(rng, (U, J))
    mz = s2_forward(qa, qb, mc)
    mua, vara = qa.mean[:, :, None], qa.var[:, :, None]
    mub, varb = qb.mean, qb.var
    d = (1 + r.rho * mz.var)[:, None, :]
    h, g = r.rho[:, None, :] / d, (r.tau - r.rho * mz.mean)[:, None, :] / d
    f = 1 + (vara * (varb + mub ** 2) + mua ** 2 * varb) * h  # 1 + e, first order of 1 / (1 - e)
    core = (g + mua * mub * h) * f
    to_a, to_b = s2_backward_gemm(qa, qb, mz, r)
    np.testing.assert_allclose(to_b.rho, ((vara + mua ** 2) * h * f).sum(0), rtol=1e-12)
    np.testing.assert_allclose(to_b.tau, (mua * core).sum(0), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(to_a.rho, ((varb + mub ** 2) * h * f).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(to_a.tau, (mub * core).sum(-1), rtol=1e-11, atol=1e-12)


def _s1_case(seed, U, K, J, scale):
    """Constants ``a`` (U, K), weight messages, the forward message and a backward message."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(U, K))
    qb, mc, r = _g(rng, (K, J), scale), _g(rng, (J,)), _g(rng, (U, J))
    return a, qb, s1_forward(a, qb, mc), r


def test_s1_gemm_equals_first_order_expansion_of_every_use():
    a, qb, ms, r = _s1_case(1, 6, 7, 3, 0.1)
    A = a[:, :, None]
    d = (1 + r.rho * ms.var)[:, None, :]
    h, g = r.rho[:, None, :] / d, (r.tau - r.rho * ms.mean)[:, None, :] / d
    f = 1 + A ** 2 * qb.var * h
    got = s1_backward_to_b_gemm(a, qb, ms, r)
    np.testing.assert_allclose(got.rho, (A ** 2 * h * f).sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.tau, ((A * g + A ** 2 * qb.mean * h) * f).sum(0), rtol=1e-11, atol=1e-12)


def _per_use_share(qa, qb, mz, r):
    """``e = V_k h`` per use (U, K, J): each term's own share of the output's uncertainty."""
    V = qa.var[:, :, None] * (qb.var + qb.mean ** 2) + qa.mean[:, :, None] ** 2 * qb.var
    return V * (r.rho / (1 + r.rho * mz.var))[:, None, :]


@pytest.mark.parametrize("K", [50, 500])
def test_gemm_messages_are_within_the_second_order_bound_of_the_exact_ones(K):
    """Exact per-use precision ``p / (1 - e)`` against ``p (1 + e)``: relative error ``e^2 / (1 - e)``."""
    rng = np.random.default_rng(K)
    U, J = 8, 5
    qa, qb, mc, r = _g(rng, (U, K)), _g(rng, (K, J), 1.0 / K), _g(rng, (J,)), _g(rng, (U, J))
    mz = s2_forward(qa, qb, mc)
    e = _per_use_share(qa, qb, mz, r).max()
    assert 0 < e < 0.5
    exact_a, exact_b = s2_backward(qa, qb, mz, r)
    to_a, to_b = s2_backward_gemm(qa, qb, mz, r)
    bound = e * e / (1 - e)
    assert np.all(np.abs(to_b.rho - exact_b.rho) <= bound * exact_b.rho * (1 + 1e-9))
    assert np.all(np.abs(to_a.rho - exact_a.rho) <= bound * exact_a.rho * (1 + 1e-9))
    # and the drop is real: the zeroth-order form (no correction) is further off
    zeroth = (qa.var + qa.mean ** 2).T @ (r.rho / (1 + r.rho * mz.var))
    assert np.abs(zeroth - exact_b.rho).max() > np.abs(to_b.rho - exact_b.rho).max()


def test_s2_zeroth_order_is_the_sum_of_the_exact_per_use_messages_scaled_by_one_minus_e():
    """The zeroth-order form keeps each exact per-use message's mean and scales its natural parameters by
    ``1 - e``; checked against :func:`s2_backward` per use (``reduce=False``) with ``e`` from its own
    definition."""
    rng = np.random.default_rng(5)
    U, K, J = 6, 8, 5
    qa, qb, mc, r = _g(rng, (U, K)), _g(rng, (K, J), 0.2), _g(rng, (J,)), _g(rng, (U, J))
    mz = s2_forward(qa, qb, mc)
    e = _per_use_share(qa, qb, mz, r)
    assert 0.05 < e.max() < 1
    per_a, per_b = s2_backward(qa, qb, mz, r, reduce=False)  # per_a: summed over j already
    to_a, to_b = s2_backward_gemm(qa, qb, mz, r, expansion=0)
    np.testing.assert_allclose(to_b.rho, (per_b.rho * (1 - e)).sum(0), rtol=1e-11)
    np.testing.assert_allclose(to_b.tau, (per_b.tau * (1 - e)).sum(0), rtol=1e-10, atol=1e-12 * np.abs(to_b.tau).max())
    # to the inputs: the exact per-(use, output) messages are the j-terms of s2_backward's sum
    mu_a, mu_b = qa.mean[:, :, None], qb.mean
    d = (1 + r.rho * mz.var)[:, None, :]
    h, g = r.rho[:, None, :] / d, (r.tau - r.rho * mz.mean)[:, None, :] / d
    rho_uj = (qb.var + mu_b ** 2) * h / (1 - e)
    tau_uj = mu_b * (g + mu_a * mu_b * h) / (1 - e)
    np.testing.assert_allclose(rho_uj.sum(-1), per_a.rho, rtol=1e-10)  # the same messages s2_backward sums
    np.testing.assert_allclose(to_a.rho, (rho_uj * (1 - e)).sum(-1), rtol=1e-11)
    np.testing.assert_allclose(to_a.tau, (tau_uj * (1 - e)).sum(-1), rtol=1e-10, atol=1e-12 * np.abs(to_a.tau).max())
    # never more precise than the exact messages, and less precise than the first-order form
    first_a, first_b = s2_backward_gemm(qa, qb, mz, r)
    assert np.all(to_b.rho <= first_b.rho) and np.all(first_b.rho <= per_b.rho.sum(0) * (1 + 1e-12))


def test_s1_zeroth_order_is_the_sum_of_the_exact_per_use_messages_scaled_by_one_minus_e():
    a, qb, ms, r = _s1_case(6, 7, 6, 4, 0.3)
    e = a[:, :, None] ** 2 * qb.var * (r.rho / (1 + r.rho * ms.var))[:, None, :]
    assert 0.05 < e.max() < 1
    per = s1_backward_to_b(a, qb, ms, r, reduce=False)
    got = s1_backward_to_b_gemm(a, qb, ms, r, expansion=0)
    np.testing.assert_allclose(got.rho, (per.rho * (1 - e)).sum(0), rtol=1e-11)
    np.testing.assert_allclose(got.tau, (per.tau * (1 - e)).sum(0), rtol=1e-10, atol=1e-12 * np.abs(got.tau).max())


@pytest.mark.parametrize("fn", [s1_backward_to_b_gemm, s2_backward_gemm])
def test_gemm_messages_reject_other_orders(fn):
    g = Gaussian(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="expansion"):
        fn(np.ones((2, 2)) if fn is s1_backward_to_b_gemm else g, g, g, g, expansion=2)


def test_parallel_zeroth_order_trains_and_differs_from_first_order():
    """Both orders run through the layers (MLP and CNN); they give different but close marginals."""
    rng = np.random.default_rng(8)
    for templates, shape in [(MLP, (3,)), (CNN, (8, 8, 1))]:
        X = rng.normal(size=(16,) + shape)
        Y = rng.integers(0, 3, 16)
        a = create_factor_graph(templates, 16, seed=3)
        b = create_factor_graph(templates, 16, seed=3)
        a.train_batch(X, Y, 2, order=Parallel(8, 0.5))
        b.train_batch(X, Y, 2, order=Parallel(8, 0.5, expansion=1))
        diffs = [np.abs(qa.mean - qb.mean).max() / (np.abs(qa.mean).max() + 1e-300)
                 for qa, qb in zip(_weights(a), _weights(b))]
        assert 0 < max(diffs) < 0.5
    assert str(Parallel(8, 0.5, expansion=1)) == "Parallel(8, damping=0.5, expansion=1)"
    assert Parallel(8).messages == 0 and Parallel(8, exact=True).messages is None


# --- Parallel: exactness claims -------------------------------------------------------------------
@pytest.mark.parametrize("templates, shape", [(MLP, (3,)), (CNN, (8, 8, 1))])
def test_parallel_chunk_of_one_exact_is_the_sequential_schedule(templates, shape):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12,) + shape)
    Y = rng.integers(0, 3, 12)
    a = create_factor_graph(templates, 12, seed=2)
    b = create_factor_graph(templates, 12, seed=2)
    a.train_batch(X, Y, 2, order=Shuffled())
    b.train_batch(X, Y, 2, order=Parallel(1, exact=True))
    for qa, qb in zip(_weights(a), _weights(b)):
        np.testing.assert_allclose(qb.tau, qa.tau, rtol=1e-7, atol=1e-9 * np.abs(qa.tau).max())
        np.testing.assert_allclose(qb.rho, qa.rho, rtol=1e-7)


@pytest.mark.parametrize("templates, shape", [(MLP, (3,)), (CNN, (8, 8, 1))])
def test_exact_chunk_message_is_the_product_of_the_per_example_messages(templates, shape):
    """One chunk of the whole batch stores in slot 0 the product of the messages that ``Chunked`` (per
    example, all from the same marginals) stores in slots 0..n-1."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(5,) + shape)
    Y = rng.integers(0, 3, 5)
    a = create_factor_graph(templates, 5, seed=4)
    b = create_factor_graph(templates, 5, seed=4)
    a.train_batch(X, Y, 1, order=Parallel(5, exact=True))
    b.train_batch(X, Y, 1, order=Chunked(5))
    for (_, la), (_, lb) in zip(a.weighted_layers(), b.weighted_layers()):
        for name in la.params:
            sa, sb = la.params[name], lb.params[name]
            np.testing.assert_array_equal(sa.msgs.tau[1:5], 0)
            np.testing.assert_allclose(sa.msgs.rho[0], sb.msgs.rho[:5].sum(0), rtol=1e-10)
            np.testing.assert_allclose(sa.msgs.tau[0], sb.msgs.tau[:5].sum(0), rtol=1e-9,
                                       atol=1e-12 * np.abs(sb.msgs.tau[:5]).sum())


def test_gemm_chunk_differs_from_exact_by_the_second_order_term_only():
    """Wide layer: the GEMM chunk messages are close to (not equal to) the exact product."""
    rng = np.random.default_rng(5)
    T = [(200,), ("Linear", 20), ("LeakyReLU", 0.1), ("Linear", 4), ("Regression", 0.1)]
    X, Y = rng.normal(size=(16, 200)), rng.normal(size=(16, 4))
    a = create_factor_graph(T, 16, seed=1)
    b = create_factor_graph(T, 16, seed=1)
    a.train_batch(X, Y, 1, order=Parallel(16, exact=True))
    b.train_batch(X, Y, 1, order=Parallel(16, expansion=1))
    c = create_factor_graph(T, 16, seed=1)
    c.train_batch(X, Y, 1, order=Parallel(16))  # zeroth order: further off, less precise
    for (_, la), (_, lb), (_, lc) in zip(a.weighted_layers(), b.weighted_layers(), c.weighted_layers()):
        qa, qb, qc = la.params["W"].q, lb.params["W"].q, lc.params["W"].q
        rel = np.abs(qb.rho - qa.rho) / qa.rho
        assert 0 < rel.max() < 1e-2
        assert rel.max() < (np.abs(qc.rho - qa.rho) / qa.rho).max() < 0.1


def test_parallel_marginal_is_prior_times_chunk_messages():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(20, 3)), rng.integers(0, 3, 20)
    fg = create_factor_graph(MLP, 20, seed=0)
    fg.train_batch(X, Y, 3, order=Parallel(8, 0.5))
    for _, layer in fg.weighted_layers():
        for s in layer.params.values():
            np.testing.assert_allclose(s.q.rho, s.msgs.rho.sum(0), rtol=1e-12)
            np.testing.assert_array_equal(s.msgs.rho[3:20], 0)  # 3 chunks: sites 0, 1, 2


def test_parallel_rejects_a_factor_without_chunk_messages_before_any_change():
    class Double(Factor):
        kind = "Double"

        def forward(self, m, i):
            return Gaussian(m.tau / 2, m.rho / 4)

        def backward(self, m, i):
            return Gaussian(m.tau * 2, m.rho * 4)

        def predict(self, m):
            return Gaussian(m.tau / 2, m.rho / 4)

    fg = create_factor_graph([(3,), ("Linear", 2), Double(), ("Regression", 0.1)], 4, seed=0)
    before = [q.tau.copy() for q in _weights(fg)]
    with pytest.raises(ValueError, match="Double"):
        fg.train_batch(np.ones((4, 3)), np.ones((4, 2)), 1, order=Parallel(2))
    for order in (Parallel(2), ByEpoch(Shuffled(), (2, Parallel(2)))):  # the Trainer: when it is made
        with pytest.raises(ValueError, match="not supported by: Double"):
            Trainer(fg, np.ones((8, 3)), np.ones((8, 2)), order=order, progress=False)
    for q, t in zip(_weights(fg), before):
        np.testing.assert_array_equal(q.tau, t)


@pytest.mark.parametrize("bad", [dict(chunk_size=0), dict(chunk_size=2.5), dict(chunk_size=2, damping=0),
                                 dict(chunk_size=2, damping=1.5), dict(chunk_size=2, exact=1),
                                 dict(chunk_size=2, max_step=0), dict(chunk_size=2, max_step=-1.0),
                                 dict(chunk_size=2, max_step=float("inf")), dict(chunk_size=2, max_step=True),
                                 dict(chunk_size=2, expansion=2), dict(chunk_size=2, expansion=True),
                                 dict(chunk_size=2, expansion=0.5), dict(chunk_size=2, damping=()),
                                 dict(chunk_size=2, damping=(0.5, 0)),
                                 dict(chunk_size=2, damping=(0.5, "x"))])
def test_parallel_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        Parallel(**bad)


@pytest.mark.parametrize("kernels_on", [True, False])
def test_parallel_damps_each_weighted_layer_by_its_own_damping(kernels_on):
    """One chunk per sweep: within a chunk a layer's new site depends on the other layers' marginals before
    the chunk only, so each layer's site under ``(0.3, 0.7, 0.45)`` is its site under that layer's damping
    alone (same graphs, same order)."""
    from factorgraph import kernels

    X, y = _reg_data(16)
    dampings = (0.3, 0.7, 0.45)
    with _kernels(kernels_on):
        graphs = {d: create_factor_graph(MLP_REG, 16, seed=4) for d in (dampings, *dampings)}
        for d, fg in graphs.items():
            fg.train_batch(X, y, 1, order=Parallel(16, d))
        mixed = graphs[dampings]
        assert [l for l, _ in mixed.weighted_layers()] == [0, 2, 4]
        for j, (l, layer) in enumerate(mixed.weighted_layers()):
            alone = graphs[dampings[j]].layers[l]
            for name, slots in layer.params.items():
                np.testing.assert_array_equal(slots.msgs.tau[0], alone.params[name].msgs.tau[0])
                np.testing.assert_array_equal(slots.msgs.rho[0], alone.params[name].msgs.rho[0])
                np.testing.assert_array_equal(slots.q.tau, alone.params[name].q.tau)
        # and a uniform sequence is the scalar
        same = create_factor_graph(MLP_REG, 16, seed=4)
        same.train_batch(X, y, 1, order=Parallel(16, (0.3, 0.3, 0.3)))
        for (_, a), (_, b) in zip(same.weighted_layers(), graphs[0.3].weighted_layers()):
            np.testing.assert_array_equal(a.params["W"].q.tau, b.params["W"].q.tau)
    assert kernels.enabled()
    assert str(Parallel(64, (0.125, 0.35, 0.35), max_step=1.0)) == \
        "Parallel(64, damping=(0.125, 0.35, 0.35), max_step=1.0)"


def test_per_layer_dampings_must_fit_the_graph_before_anything_changes():
    X, y = _reg_data(16)
    fg = create_factor_graph(MLP_REG, 16, seed=4)
    before, rng = [q.tau.copy() for q in _weights(fg)], fg.rng.bit_generator.state
    with pytest.raises(ValueError, match="2 dampings but the graph has 3 weighted layers"):
        fg.train_batch(X, y, 1, order=Parallel(8, (0.5, 0.25)))
    with pytest.raises(ValueError, match="4 dampings"):
        Trainer(fg, X, y, order=ByEpoch(Parallel(8, 0.5), (2, Parallel(8, (0.5, 0.2, 0.2, 0.2)))))
    for q, t in zip(_weights(fg), before):
        np.testing.assert_array_equal(q.tau, t)
    assert fg.rng.bit_generator.state == rng  # not even the batch's order was drawn


# --- Bayesian linear regression ---------------------------------------------------------------------
@pytest.mark.parametrize("order", [Parallel(1, exact=True), Chains(4, 0.5), Chains(2, 0.7), Chunked(40, 0.5)])
def test_blr_exact_posterior_mean(order):
    X, y = _problem(0)
    m0, v0, bv, beta2 = 0.7, 2.0, 1.5, 0.09
    fg = create_factor_graph(_templates(4, m0, v0, bv, beta2), batch_size=len(X), seed=0)
    fg.train_batch(X, y[:, None], 300, order=order)
    exact = _closed_form(X, y, m0, v0, bv, beta2)
    np.testing.assert_allclose(_posterior_mean(fg), exact, rtol=1e-8, atol=1e-10 * np.abs(exact).max())


def test_blr_chunk_sites_are_not_the_exact_posterior():
    """Documented limitation: with chunk sites the examples of one chunk do not exchange information,
    so the fixed point of ``Parallel(c > 1)`` is near, not at, the exact posterior mean."""
    X, y = _problem(0)
    fg = create_factor_graph(_templates(4, 0.7, 2.0, 1.5, 0.09), batch_size=len(X), seed=0)
    fg.train_batch(X, y[:, None], 300, order=Parallel(4, 0.5))
    exact = _closed_form(X, y, 0.7, 2.0, 1.5, 0.09)
    err = np.abs(_posterior_mean(fg) - exact).max() / np.abs(exact).max()
    assert 1e-4 < err < 0.05


def test_parallel_trust_region_keeps_the_blr_fixed_point():
    """``max_step`` bounds the steps, not where they lead: on BLR the bounded and the free fully damped
    schedules reach the same fixed point, and the bound was active on the way (counted)."""
    from factorgraph import guards

    X, y = _problem(0)
    means = []
    for max_step in (None, 0.5):
        fg = create_factor_graph(_templates(4, 0.7, 2.0, 1.5, 0.09), batch_size=len(X), seed=0)
        guards.reset()
        fg.train_batch(X, y[:, None], 400, order=Parallel(4, 0.5, max_step=max_step, expansion=1))
        means.append(_posterior_mean(fg))
        assert (guards.get("parallel_step_limit") > 0) == (max_step is not None)
    np.testing.assert_allclose(means[1], means[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "numpy"])
def test_trust_region_moves_no_mean_further_than_max_step_sds(compiled, monkeypatch):
    """One bounded replacement: every weight's marginal mean moves at most ``max_step`` sds of the
    marginal before it (exactly that far where the bound binds), unbound weights take the full step,
    and precisions stay between the old and the fully updated ones; the compiled kernel and the NumPy
    form alike."""
    from factorgraph import kernels
    from factorgraph.factor import WeightSlots

    monkeypatch.setattr(kernels, "_ENABLED", compiled)

    rng = np.random.default_rng(4)
    shape = (50, 8)
    prior = Gaussian.from_mean_var(rng.normal(0, 1, shape), 10 ** rng.uniform(-2, 1, shape))
    free, bound = WeightSlots(prior, 4), WeightSlots(prior, 4)
    bound.max_step = 1.5
    new = Gaussian(rng.normal(0, 30, shape), 10 ** rng.uniform(-3, 2, shape))
    mu0, sd0 = prior.mean, np.sqrt(prior.var)
    free.replace(1, new, 0.7)
    bound.replace(1, new, 0.7)
    step_free = np.abs(free.q.mean - mu0) / sd0
    step = np.abs(bound.q.mean - mu0) / sd0
    binds = step_free > 1.5
    assert binds.any() and (~binds).any()
    assert np.all(step <= 1.5 * (1 + 1e-12))
    np.testing.assert_allclose(step[binds], 1.5, rtol=1e-12)
    np.testing.assert_array_equal(bound.q.tau[~binds], free.q.tau[~binds])
    lo, hi = np.minimum(prior.rho, free.q.rho), np.maximum(prior.rho, free.q.rho)
    assert np.all((bound.q.rho >= lo * (1 - 1e-15)) & (bound.q.rho <= hi * (1 + 1e-15)))
    np.testing.assert_allclose(bound.q.tau, prior.tau + bound.msgs.tau[1], rtol=1e-12)  # q = prior * slot


def _slots_pair(rng, shape, dtype, max_step):
    from factorgraph.factor import WeightSlots

    prior = Gaussian.from_mean_var(rng.normal(0, 1, shape), 10 ** rng.uniform(-2, 1, shape)).astype(dtype)
    pair = [WeightSlots(prior, 3), WeightSlots(prior, 3)]
    old = Gaussian(rng.normal(0, 3, shape), 10 ** rng.uniform(-3, 1, shape)).astype(dtype)
    for s in pair:
        s.replace(2, old, 1.0)  # a previous site message to be replaced
        s.max_step = max_step
    return pair


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("damping, max_step", [(1.0, None), (0.3, None), (1.0, 0.5), (0.6, 1.5)])
def test_compiled_site_replacement_equals_the_numpy_form(dtype, damping, max_step, monkeypatch):
    """One pass of ``sites_cpu.replace_site`` against the NumPy damping, trust region and marginal update:
    the same marginal, site message and ``parallel_step_limit`` count (bit for bit without the bound, in
    the slots' dtype; with it to 1e-14 / 1e-6, the bound's step fraction rounds differently in the last
    bit)."""
    from factorgraph import guards, kernels

    rng = np.random.default_rng(11)
    shape = (40, 7)
    pair = _slots_pair(rng, shape, dtype, max_step)
    new = Gaussian(rng.normal(0, 30, shape), 10 ** rng.uniform(-3, 2, shape)).astype(dtype)
    new.rho[0, :3] = 0  # uniform new messages and a zero-precision site
    counts = []
    for compiled, s in zip((False, True), pair):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        guards.reset()
        s.replace(2, new, damping)
        counts.append(guards.get("parallel_step_limit"))
    numpy_form, compiled = pair
    assert counts[0] == counts[1] and (counts[0] > 0) == (max_step is not None)
    tol = dict(rtol=0 if max_step is None else (1e-14 if dtype == np.float64 else 1e-6), atol=0)
    for a, b in ((numpy_form.q, compiled.q), (numpy_form.msgs[2], compiled.msgs[2])):
        np.testing.assert_allclose(b.tau, a.tau, **tol)
        np.testing.assert_allclose(b.rho, a.rho, **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("used", [0, 1, 5, 40])
@pytest.mark.parametrize("threads", [False, True])
def test_recompute_by_the_compiled_slot_sums_equals_numpy(dtype, used, threads, monkeypatch):
    """``WeightSlots.recompute`` through ``sites_cpu.marginal_sums`` (threaded or not) against NumPy's
    ``msgs[:u].sum(axis=0)`` and ``+ prior``: the same marginal and sums, bit for bit, for 0, 1, 5 and 40
    used slots (the threaded kernel over parts of the weights)."""
    from factorgraph import kernels
    from factorgraph.factor import WeightSlots
    from factorgraph.kernels import sites_cpu

    rng = np.random.default_rng(used)
    shape = (130, 150)  # 19500 weights: threaded from sites_cpu.THREADS_MIN inside kernels.threaded
    results = []
    for compiled in (False, True):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        rng = np.random.default_rng(used)  # the same messages for both
        s = WeightSlots(Gaussian(rng.normal(0, 1, shape), 10 ** rng.uniform(-2, 1, shape)).astype(dtype), 40)
        s.msgs.tau[:used] = rng.normal(0, 3, (used,) + shape)
        s.msgs.rho[:used] = 10 ** rng.uniform(-3, 1, (used,) + shape)
        s.used = used
        with kernels.threaded() if threads else contextlib.nullcontext():
            s.recompute()
        lik = s.likelihood()
        results.append((s.q.tau, s.q.rho, lik.tau, lik.rho))
    assert sites_cpu.THREADS_MIN <= shape[0] * shape[1]
    for a, b in zip(*results):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("max_step", [None, 0.5])
def test_site_replacement_broadcasts_a_smaller_message_like_numpy(monkeypatch, max_step):
    """A message that only broadcasts to the slot's shape takes the NumPy form (the compiled pass needs equal
    shapes; flat views of unequal arrays would read past the end), with and without the bound."""
    from factorgraph import kernels
    from factorgraph.factor import WeightSlots

    prior = Gaussian(np.zeros((4, 3)), np.ones((4, 3)))
    new = Gaussian(np.array([[1.0, 2.0, 3.0]]), np.array([[0.5, 0.5, 0.5]]))
    out = []
    for compiled in (False, True):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        s = WeightSlots(prior, 2)
        s.max_step = max_step
        s.replace(1, new, 1.0 if max_step else 0.5)  # undamped, the message stays smaller than the slot
        out.append((s.q.tau.copy(), s.msgs.tau[1].copy()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    if max_step is None:
        np.testing.assert_array_equal(out[1][1], np.broadcast_to([[0.5, 1.0, 1.5]], (4, 3)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_cavity_moments_equal_strict_division(dtype, monkeypatch):
    """``WeightSlots.cavity_moments`` (one compiled pass) against ``divide(q, m_i).with_moments()``:
    ordinary weights, a zero-precision cavity, a round-off deficit (clamped and counted) and a real deficit
    (raises, the same error), for both the kernel and the NumPy form."""
    from factorgraph import guards, kernels
    from factorgraph.factor import WeightSlots
    from factorgraph.guards import ImproperMessageError

    rng = np.random.default_rng(12)
    shape = (30, 5)
    prior = Gaussian.from_mean_var(rng.normal(0, 1, shape), 10 ** rng.uniform(-2, 1, shape)).astype(dtype)
    s = WeightSlots(prior, 2)
    s.replace(0, Gaussian(rng.normal(0, 3, shape), 10 ** rng.uniform(-3, 1, shape)).astype(dtype), 1.0)
    s.q.rho[0, 0] = s.msgs.rho[0, 0, 0]  # cavity precision exactly 0: mean 0, variance inf
    s.q.rho[0, 1] = s.msgs.rho[0, 0, 1] * (1 - 1e-12 if dtype == np.float64 else 1.0)
    s.msgs.rho[0, 0, 2] = s.q.rho[0, 2] * (1 + 1e-12) if dtype == np.float64 else s.q.rho[0, 2]
    got = {}
    for compiled in (False, True):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        guards.reset()
        got[compiled] = (s.cavity_moments(0), guards.get("strict_division_roundoff"))
    (ref, n_ref), (cav, n_cav) = got[False], got[True]
    assert n_ref == n_cav and (n_ref == 2) == (dtype == np.float64)
    for name in ("tau", "rho", "mean", "var"):
        np.testing.assert_allclose(getattr(cav, name), getattr(ref, name), rtol=1e-15 if dtype == np.float64 else 1e-6)
    assert cav.var[0, 0] == np.inf and cav.mean[0, 0] == 0 and cav.rho[0, 0] == 0
    s.msgs.rho[0, 3, 3] = 2 * s.q.rho[3, 3]  # a real deficit
    for compiled in (False, True):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        with pytest.raises(ImproperMessageError, match="1 element"):
            s.cavity_moments(0)


def test_one_chain_is_the_sequential_schedule_exactly():
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(10, 3)), rng.integers(0, 3, 10)
    a = create_factor_graph(MLP, 10, seed=3)
    b = create_factor_graph(MLP, 10, seed=3)
    a.train_batch(X, Y, 2, order=Shuffled())
    b.train_batch(X, Y, 2, order=Chains(1))
    for qa, qb in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(qa.tau, qb.tau)


# --- Trainer: mixing and warm starts ----------------------------------------------------------------
def _reg_data(n=40):
    rng = np.random.default_rng(8)
    X = rng.normal(size=(n, 3))
    return X, np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)


REG = [(3,), ("Linear", 6), ("LeakyReLU", 0.1), ("Linear", 2), ("Regression", 0.05)]


def test_mixing_stores_half_batches_and_pairs_them_anew_each_epoch():
    X, Y = _reg_data()
    seen = []
    fg = create_factor_graph(REG, 8, seed=1)
    tr = Trainer(fg, X, Y, mixing=True, progress=False,
                 callbacks={"on_batch_end": lambda t, e, b: seen.append((e, b))})
    assert tr.batches[:2] == [(0, 4), (4, 8)] and tr.num_batches == 10
    tr.train(3, 2)
    pairs = [frozenset(b) for e, b in seen]
    assert all(len(p) == 2 for p in pairs) and len(pairs) == 15
    assert len(set(pairs[:5]) | set(pairs[5:10]) | set(pairs[10:])) > 5  # partners change between epochs
    for key, m in tr.msgs.items():  # Q is the prior times every half's message
        np.testing.assert_allclose(tr.total[key].rho, tr.prior[key].rho + m.rho.sum(0), rtol=1e-12)
        assert np.all(m.rho.sum(axis=tuple(range(1, m.rho.ndim))) > 0)  # every half got a message


def test_mixing_rejects_parallel_chunk_sites():
    X, Y = _reg_data()
    with pytest.raises(ValueError, match="mixing"):
        Trainer(create_factor_graph(REG, 8, seed=1), X, Y, mixing=True, order=Parallel(4))


def test_by_epoch_gives_each_epoch_its_order():
    X, Y = _reg_data()
    big, small = Parallel(4, 0.5, max_step=1.0), Parallel(2, 0.5)
    fg = create_factor_graph(REG, 8, seed=1)
    Trainer(fg, X, Y, order=ByEpoch(big, (3, small)), progress=False).train(schedule=Constant(4, 2))
    ref = create_factor_graph(REG, 8, seed=1)
    tr = Trainer(ref, X, Y, order=big, progress=False)
    tr.train(2, 2)
    tr.order = small
    tr.train(2, 2)
    for a, b in zip(_weights(fg), _weights(ref)):
        np.testing.assert_array_equal(a.tau, b.tau)
        np.testing.assert_array_equal(a.rho, b.rho)
    other = create_factor_graph(REG, 8, seed=1)  # and the change mattered
    Trainer(other, X, Y, order=big, progress=False).train(4, 2)
    assert not np.array_equal(_weights(other)[0].tau, _weights(fg)[0].tau)


def test_by_epoch_picks_orders_by_epoch_and_rejects_bad_values():
    a, b, c = Shuffled(), Parallel(32, 0.5), Parallel(8, 0.5)
    order = ByEpoch(a, (3, b), (5, c))
    assert [order.at(e) for e in range(1, 8)] == [a, a, b, b, c, c, c]
    assert order.orders == (a, b, c) and ByEpoch(b).at(9) == b
    assert str(order) == ("ByEpoch(Shuffled(), from epoch 3: Parallel(32, damping=0.5), "
                          "from epoch 5: Parallel(8, damping=0.5))")
    for bad in ((a, (1, b)), (a, (3, b), (3, c)), (a, (2.0, b)), (a, 3), (a, (2, b, c))):
        with pytest.raises(ValueError, match="epoch"):
            ByEpoch(*bad)
    for bad in ((order,), (a, (2, "Parallel(8)")), (None,)):
        with pytest.raises(TypeError, match="within-batch orders"):
            ByEpoch(*bad)
    X, Y = _reg_data()
    fg = create_factor_graph(REG, 8, seed=1)
    with pytest.raises(ValueError, match="mixing"):
        Trainer(fg, X, Y, mixing=True, order=ByEpoch(a, (2, Parallel(4))))
    with pytest.raises(TypeError, match="order must be"):
        Trainer(fg, X, Y, order="Parallel(4)")
    with pytest.raises(TypeError, match="pass it to trainer.Trainer"):
        fg.train_batch(X[:8], Y[:8], order=order)
    assert all(np.array_equal(s.q.tau, s.prior.tau) and np.array_equal(s.q.rho, s.prior.rho)  # nothing changed
               for _, layer in fg.weighted_layers() for s in layer.params.values())


def test_warm_start_fills_activation_messages_with_the_moving_average():
    X, Y = _reg_data()
    fg = create_factor_graph(REG, 8, seed=1)
    tr = Trainer(fg, X, Y, warm_start=True, progress=False)
    tr.train(1, 2)
    assert set(tr.warm) == {(1, "m_back"), (2, "m_to_x")}
    fg.reset_batch(tr.batch_prior(0))
    fg.warm_start_caches(tr.warm)
    np.testing.assert_array_equal(fg.layers[1].m_back.rho[5], tr.warm[(1, "m_back")].rho)
    assert all(fg.layers[1]._seen_back)


def test_warm_start_and_mixing_survive_save_and_load(tmp_path):
    X, Y = _reg_data()
    fg = create_factor_graph(REG, 8, seed=1)
    tr = Trainer(fg, X, Y, warm_start=True, mixing=True, progress=False)
    tr.train(2, 1)
    tr.save(tmp_path / "t.npz")
    back = Trainer.load(tmp_path / "t.npz", progress=False)
    assert back.mixing and back.warm_start
    tr.train(1, 1)
    back.train(1, 1)
    np.testing.assert_array_equal(back.fg.predict(X)[0], fg.predict(X)[0])


def _chunk_trainer(seed=1):
    X, Y = _reg_data(48)
    return Trainer(create_factor_graph(REG, 16, seed=seed), X, Y, order=Parallel(4, 0.5, max_step=1.0),
                   progress=False), X


def test_a_chunk_trained_checkpoint_holds_only_the_used_slots_and_resumes_exactly(tmp_path):
    full, X = _chunk_trainer()
    full.train(3, 1)
    part, _ = _chunk_trainer()
    part.train(2, 1)
    part.save(tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        assert f["fg.layer0.W.tau"].shape == (4, 3, 6)  # the four chunk sites, not all 17 slots
        np.testing.assert_array_equal(f["fg.layer0.W.prior_tau"], part.fg.layers[0].params["W"].prior.tau)
    back = Trainer.load(tmp_path / "p.npz", order=Parallel(4, 0.5, max_step=1.0), progress=False)
    for (_, a), (_, b) in zip(part.fg.weighted_layers(), back.fg.weighted_layers()):
        for name in a.params:
            assert b.params[name].used == a.params[name].used == 4
            np.testing.assert_array_equal(b.params[name].msgs.tau, a.params[name].msgs.tau)  # zeros beyond
            np.testing.assert_array_equal(b.params[name].msgs.rho, a.params[name].msgs.rho)
    back.train(1, 1)
    np.testing.assert_array_equal(back.fg.predict(X)[0], full.fg.predict(X)[0])
    np.testing.assert_array_equal(back.fg.predict(X)[1], full.fg.predict(X)[1])


def test_checkpoints_with_all_slots_still_load(tmp_path):
    """Version 1 checkpoints stored all B + 1 slots of every weight tensor (prior last) and no prior keys."""
    import json

    tr, X = _chunk_trainer()
    tr.train(2, 1)
    tr.save(tmp_path / "v2.npz")
    with np.load(tmp_path / "v2.npz") as f:
        arrays = {k: f[k] for k in f.files}
    for key in [k for k in arrays if k.endswith(".prior_tau")]:
        base = key[:-len("prior_tau")]
        for p in ("tau", "rho"):
            used = arrays.pop(base + p)
            full = np.zeros((17,) + used.shape[1:], used.dtype)
            full[:len(used)], full[16] = used, arrays.pop(base + "prior_" + p)
            arrays[base + p] = full
    meta = json.loads(str(arrays["meta"]))
    meta["format"] = "factorgraph-trainer-1"
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "v1.npz", **arrays)
    old = Trainer.load(tmp_path / "v1.npz", order=Parallel(4, 0.5, max_step=1.0), progress=False)
    assert old.fg.layers[0].params["W"].used == 16  # unknown in version 1: every slot is summed
    np.testing.assert_array_equal(old.fg.layers[0].params["W"].msgs.tau, tr.fg.layers[0].params["W"].msgs.tau)
    old.train(1, 1)
    tr.train(1, 1)
    np.testing.assert_array_equal(old.fg.predict(X)[0], tr.fg.predict(X)[0])


def test_slot_state_of_another_shape_is_refused_before_anything_changes():
    tr, _ = _chunk_trainer()
    tr.train(1, 1)
    W = tr.fg.layers[0].params["W"]
    state, before = W.state(), W.msgs.tau.copy()
    for bad in (dict(state, tau=state["tau"][:, :2]), dict(state, tau=np.zeros((17,) + W.shape)),
                {k: v for k, v in dict(state, tau=np.zeros((5,) + W.shape)).items() if "prior" not in k}):
        with pytest.raises(ValueError, match="do not fit 16 slots"):
            W.load_state(bad)
    for key in ("prior_tau", "q_rho"):
        with pytest.raises(ValueError, match=f"saved {key} of shape \\(3,\\) does not fit"):
            W.load_state(dict(state, **{key: np.zeros(3)}))
    np.testing.assert_array_equal(W.msgs.tau, before)
    assert W.used == 4


def test_a_diverging_schedule_raises_instead_of_leaving_nan_marginals():
    from factorgraph import guards
    from factorgraph.guards import ImproperMessageError

    X, y = _problem(0)
    fg = create_factor_graph(_templates(4, 0.7, 2.0, 1.5, 0.09), batch_size=len(X), seed=0)
    fg.train_batch(X, y[:, None], 2, order=Chains(4))  # large but finite
    W = fg.layers[0].params["W"]
    W.msgs.tau[len(X), 0, 0] = np.inf  # a blown-up prior message stands in for an overflow
    before = guards.get("diverged_sweep")
    with np.errstate(all="ignore"), pytest.raises(ImproperMessageError, match="diverged under Chains"):
        fg.train_batch(X, y[:, None], 1, order=Chains(4))
    assert guards.get("diverged_sweep") == before + 1


@pytest.mark.parametrize("bad", [dict(chains=0), dict(chains=1.5), dict(chains=True), dict(chains=2, damping=0),
                                 dict(chains=2, damping=2.0)])
def test_chains_reject_bad_arguments(bad):
    with pytest.raises(ValueError):
        Chains(**bad)


@pytest.mark.parametrize("key", ["mixing", "warm_start"])
def test_trainer_options_must_be_booleans(key):
    X, Y = _reg_data()
    with pytest.raises(TypeError, match=key):
        Trainer(create_factor_graph(REG, 8, seed=1), X, Y, **{key: "yes"})


def test_fold_of_a_stack_is_the_stack_of_folds():
    from factorgraph.equations import fold_messages, patch_index

    rng = np.random.default_rng(9)
    shape = (5, 6, 2)
    src, _ = patch_index(shape, 3, 1, 1, "zeros")
    msg = Gaussian(rng.normal(size=(4,) + src.shape), rng.uniform(0.1, 1, size=(4,) + src.shape))
    stacked = fold_messages(msg, src, shape)
    assert stacked.shape == (4,) + shape
    for j in range(4):
        one = fold_messages(msg[j], src, shape)
        np.testing.assert_array_equal(stacked.tau[j], one.tau)
        np.testing.assert_array_equal(stacked.rho[j], one.rho)


def test_an_arithmetic_error_inside_a_sweep_is_reported_as_divergence(monkeypatch):
    """Compiled kernels raise ZeroDivisionError on non-finite inputs (a blown-up chunk): train_batch
    turns that into the same ImproperMessageError as a non-finite marginal, with the cause chained."""
    from factorgraph.guards import ImproperMessageError

    X, Y = _reg_data()
    fg = create_factor_graph(REG, 40, seed=1)

    def boom(*args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(fg.layers[1], "forward_chunk", boom)
    with pytest.raises(ImproperMessageError, match="diverged under Parallel.*ZeroDivisionError") as info:
        fg.train_batch(X, Y, 1, order=Parallel(8, 0.5))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_runaway_means_with_proper_marginals_are_reported():
    """A too-parallel schedule can diverge with finite, proper marginals whose means run away; a sweep
    that leaves a mean more than config.MEAN_SHIFT_WARN_SDS batch-prior sds from the batch prior warns
    and counts ``mean_shift_beyond_prior``; ordinary training does neither."""
    import warnings

    from factorgraph import config, guards

    X, Y = _reg_data()
    fg = create_factor_graph(REG, 40, seed=1)
    guards.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning here would fail the test
        fg.train_batch(X, Y, 2)
    assert guards.get("mean_shift_beyond_prior") == 0
    W = fg.layers[0].params["W"]
    prior_sd = 1 / np.sqrt(W.prior.rho[0, 0])
    # slot 0's message pulls one weight's marginal mean 3 * MEAN_SHIFT_WARN_SDS prior sds away
    W.msgs.tau[0, 0, 0] += 3 * config.MEAN_SHIFT_WARN_SDS * prior_sd * W.msgs.rho[:, 0, 0].sum()
    W.recompute()
    with pytest.warns(RuntimeWarning, match="may be diverging.*layer 0.*1 of"):
        fg._check_marginals(Shuffled())
    assert guards.get("mean_shift_beyond_prior") == 1


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_marginal_check_equals_the_array_check(dtype, threaded, monkeypatch):
    """The after-sweep check's compiled pass (``sites_cpu.marginal_check``, on one thread or in 16 parts on
    all threads) and its array form agree on health, the count of runaway means and the largest shift:
    ordinary marginals, runaway means, a prior element with zero precision, and each kind of broken
    marginal (NaN, inf, zero and negative precision)."""
    import contextlib
    from types import SimpleNamespace

    from factorgraph import kernels
    from factorgraph.gaussian import Gaussian
    from factorgraph.kernels import sites_cpu
    from factorgraph.model import FactorGraph

    monkeypatch.setattr(sites_cpu, "THREADS_MIN", 1)

    rng = np.random.default_rng(3)
    shape = (40, 7)
    prior = Gaussian(rng.normal(0, 1, shape), rng.uniform(0.5, 2, shape)).astype(dtype)
    q = Gaussian(prior.tau + rng.normal(0, 1, shape), prior.rho + rng.uniform(0, 5, shape)).astype(dtype)
    q.tau[3, 4] = 5e5 * q.rho[3, 4]  # a runaway mean
    q.tau[7, 1] = (prior.tau[7, 1] / prior.rho[7, 1] - 1.5e4 / np.sqrt(prior.rho[7, 1])) * q.rho[7, 1]  # 1.5 limits
    prior.tau[0, 0] = prior.rho[0, 0] = 0  # a flat prior element: mean 0, shift 0
    cases = [q]
    for i, (t, r) in enumerate([(np.nan, 1.0), (np.inf, 1.0), (1.0, np.inf), (1.0, 0.0), (1.0, -2.0)]):
        broken = q.copy()
        broken.tau[i, 2], broken.rho[i, 2] = t, r
        cases.append(broken)
    edge = q.copy()
    edge.rho.reshape(-1)[17] = 0.0  # the last element of the first of 16 thread parts (280 in parts of 18)
    cases.append(edge)
    for case in cases:
        slots = SimpleNamespace(q=case, prior=prior)
        prev = kernels.set_enabled(True)
        try:
            with kernels.threaded() if threaded else contextlib.nullcontext():
                got = FactorGraph._marginal_health(slots)
            kernels.set_enabled(False)
            want = FactorGraph._marginal_health(slots)
        finally:
            kernels.set_enabled(prev)
        assert got[0] == want[0]
        if want[0]:
            assert got[1] == want[1] == 2
            np.testing.assert_allclose(got[2], want[2], rtol=1e-6)
    assert not FactorGraph._marginal_health(SimpleNamespace(q=cases[1], prior=prior))[0]


def test_trust_region_trains_a_cnn_that_diverges_without_it():
    """The 8x8 digits with a small CNN (1280 training images, batch 320): chunks of 32 raise (the runaway
    of large chunks through conv layers) unless each chunk's step is bounded; bounded, they train."""
    import warnings

    from sklearn.datasets import load_digits

    from factorgraph import guards
    from factorgraph.guards import ImproperMessageError
    from schedules import Staircase
    from trainer import Trainer

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    X, y = (d.images / 16.0 - 0.3).reshape(-1, 8, 8, 1)[order], d.target[order]
    templates = [(8, 8, 1), ("Conv", 8, 3, {"padding": 1}), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 16, 3),
                 ("LeakyReLU", 0.1), ("Flatten",), ("Linear", 32), ("LeakyReLU", 0.1), ("Linear", 10),
                 ("Regression", 0.01)]
    accuracy = {}
    for max_step in (None, 1.0):
        fg = create_factor_graph(templates, batch_size=320, seed=0)
        guards.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the runaway warns before it raises
            try:
                Trainer(fg, X[:1280], np.eye(10)[y[:1280]], order=Parallel(32, 0.5, max_step=max_step),
                        progress=False).train(schedule=Staircase(2))
            except ImproperMessageError:
                accuracy[max_step] = None
                continue
        accuracy[max_step] = fg.evaluate(X[1280:], y[1280:])["accuracy"]
        assert guards.get("parallel_step_limit") > 0
    assert accuracy[None] is None
    assert accuracy[1.0] > 0.9


def test_parse_order_takes_order_expressions_only():
    from schedules import parse_order

    assert parse_order("Parallel(64, (0.125, 0.35, 0.35), max_step=1.0)") == \
        Parallel(64, (0.125, 0.35, 0.35), max_step=1.0)
    assert parse_order("ByEpoch(Shuffled(), (2, Chains(2, 0.5)))").at(2) == Chains(2, 0.5)
    for bad, match in (("Parallel(0)", "chunk_size"), ("open('x')", "NameError"), ("3", "not an order"),
                       ("Parallel(8", "SyntaxError")):
        with pytest.raises(ValueError, match=match):
            parse_order(bad)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("used", [0, 1, 5])
@pytest.mark.parametrize("divide", [False, True])
@pytest.mark.parametrize("threads", [False, True])
def test_reset_by_the_compiled_pass_equals_numpy(dtype, used, divide, threads, monkeypatch):
    """``WeightSlots.reset(prior[, removed])`` by ``sites_cpu.reset_slots`` (threaded or not) against the
    array form: every slot, the batch prior ``prior - removed`` and the marginal bit for bit; the marginal
    keeps its own arrays (written in place, never the prior's or the arguments')."""
    from factorgraph import kernels
    from factorgraph.factor import WeightSlots
    from factorgraph.kernels import sites_cpu

    shape = (130, 150)  # 19500 weights: threaded from sites_cpu.THREADS_MIN inside kernels.threaded
    assert sites_cpu.THREADS_MIN <= shape[0] * shape[1]
    results = []
    for compiled in (False, True):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        rng = np.random.default_rng(used)
        s = WeightSlots(_g(rng, shape).astype(dtype), 8)
        s.msgs.tau[:used] = rng.normal(0, 3, (used,) + shape)
        s.msgs.rho[:used] = 10 ** rng.uniform(-3, 1, (used,) + shape)
        s.used = used
        s.recompute()
        q_arrays = (s.q.tau, s.q.rho)
        prior, removed = _g(rng, shape, 3.0).astype(dtype), _g(rng, shape).astype(dtype)
        kept = prior.copy(), removed.copy()
        with kernels.threaded() if threads else contextlib.nullcontext():
            s.reset(prior, removed if divide else None)
        assert s.used == 0 and s.likelihood().rho.max() == 0
        for a, b in zip(kept, (prior, removed)):  # the arguments are not written
            np.testing.assert_array_equal(a.tau, b.tau)
            np.testing.assert_array_equal(a.rho, b.rho)
        if compiled:
            assert s.q.tau is q_arrays[0] and s.q.rho is q_arrays[1]  # in place
        s.q.tau += 1  # the marginal shares no memory with the prior
        assert not np.shares_memory(s.q.tau, s.msgs.tau) and not np.shares_memory(s.q.rho, prior.rho)
        s.q.tau -= 1
        results.append((s.msgs.tau, s.msgs.rho, s.q.tau, s.q.rho))
    for a, b in zip(*results):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(b, a)
    want_tau = (prior.tau - removed.tau) if divide else prior.tau
    np.testing.assert_array_equal(results[1][0][-1], want_tau)


def test_reset_with_its_own_marginal_as_the_prior():
    """``reset(slots.q)`` (the prior is the marginal's own arrays) and ``reset(slots.prior)`` leave the
    batch prior and the marginal equal to it, in separate arrays."""
    from factorgraph.factor import WeightSlots

    rng = np.random.default_rng(0)
    s = WeightSlots(_g(rng, (20, 30)), 4)
    s.msgs[0] = _g(rng, (20, 30))
    s.used = 1
    s.recompute()
    want = s.q.copy()
    s.reset(s.q)
    for g in (s.prior, s.q):
        np.testing.assert_array_equal(g.tau, want.tau)
        np.testing.assert_array_equal(g.rho, want.rho)
    assert not np.shares_memory(s.q.tau, s.msgs.tau)
    s.reset(s.prior)
    np.testing.assert_array_equal(s.q.rho, want.rho)
    np.testing.assert_array_equal(s.prior.rho, want.rho)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [False, True])
def test_recompute_checks_the_marginal_in_its_own_pass_as_the_separate_check(dtype, threads, monkeypatch):
    """``WeightSlots.recompute(limit)`` returns the health the after-sweep check computes on its own
    (``FactorGraph._marginal_health``: finite and proper, runaway means, the largest shift) for ordinary
    marginals, two runaway means, and each kind of broken marginal (NaN, inf, zero and negative precision),
    on one thread and in 16 parts."""
    from factorgraph import config, kernels
    from factorgraph.factor import WeightSlots
    from factorgraph.kernels import sites_cpu
    from factorgraph.model import FactorGraph

    monkeypatch.setattr(sites_cpu, "THREADS_MIN", 1)
    rng = np.random.default_rng(4)
    shape = (40, 7)
    base = WeightSlots(Gaussian(rng.normal(0, 1, shape), rng.uniform(0.5, 2, shape)).astype(dtype), 3)
    base.msgs[0] = Gaussian(rng.normal(0, 1, shape), rng.uniform(0, 5, shape)).astype(dtype)
    base.msgs[1] = Gaussian(rng.normal(0, 0.1, shape), rng.uniform(0, 1, shape)).astype(dtype)
    base.used = 2
    base.msgs.tau[0, 3, 4] = 5e5  # a runaway mean
    base.msgs.tau[1, 9, 2] = -2e6
    base.prior.rho[2, 2], base.msgs.rho[0, 2, 2] = 1.0, 0.5  # slot 1's precision -1.5 makes q's exactly 0
    breaks = [(np.nan, 1.0), (np.inf, 1.0), (1.0, np.inf), (0.0, -1.5), (1.0, -50.0)]
    for case in [None] + breaks:
        s = WeightSlots(base.prior.copy(), 3)
        s.msgs[:2] = base.msgs[:2]
        s.used = 2
        if case is not None:
            s.msgs.tau[1, 2, 2], s.msgs.rho[1, 2, 2] = case
        with kernels.threaded() if threads else contextlib.nullcontext():
            got = s.recompute(config.MEAN_SHIFT_WARN_SDS)
        want = FactorGraph._marginal_health(s)
        assert got[0] == want[0] == (case is None)
        if case is None:
            assert got[1] == want[1] == 2
            assert got[2] == want[2]
    assert WeightSlots(base.prior.copy(), 3).recompute() is None  # no limit: no check
    assert config.MEAN_SHIFT_WARN_SDS == 1e4  # both runaway means beyond it, nothing else
