"""Pooling (SPEC 5.5, 5.6, issue 5): MaxPool with argmax weights and AvgPool (global and windowed), against
naive loop oracles that share no helper with the library.

The S1 backward oracle is written in moment form: the message to window element i is
``rho = a_i^2 / (var_r + sum_{j != i} a_j^2 var_j)``, ``tau = a_i (mu_r - sum_{j != i} a_j mu_j) / (same)``.
"""

import numpy as np
import pytest
from scipy.stats import norm

from factorgraph.gaussian import Gaussian
from layers import create_factor_graph

MIN_RHO = 1e-8


def pool_layer(shape, template):
    """A pooling layer with input ``shape`` (H, W, C), built through the DSL behind a 1x1 conv."""
    H, W, C = shape
    fg = create_factor_graph([(H, W, 1), ("Conv", C, 1), template, ("Flatten",), ("Linear", 1),
                              ("Regression", 1.0)], batch_size=2, seed=0)
    layer = fg.layers[1]
    assert layer.input_shape == shape
    return layer


def random_messages(rng, shape, lo=0.05, hi=2.0):
    mu = rng.normal(size=shape)
    var = rng.uniform(lo, hi, size=shape)
    return Gaussian(mu / var, 1 / var)


def moments(tau, rho):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rho > 0, tau / rho, 0.0), np.where(rho > 0, 1 / rho, np.inf)


def clamp(tau, rho, m=MIN_RHO):
    mu, _ = moments(tau, rho)
    low = rho < m
    return np.where(low, mu * m, tau), np.where(low, m, rho)


def windows(H, W, k):
    """{(oy, ox): [(y, x), ...]} for complete k x k windows, stride k; k=None: one global window."""
    if k is None:
        return {(): [(y, x) for y in range(H) for x in range(W)]}
    return {(oy, ox): [(oy * k + dy, ox * k + dx) for dy in range(k) for dx in range(k)]
            for oy in range(H // k) for ox in range(W // k)}


def argmax_weights(mu, var, noise):
    """p*_i = prod_{j != i} Phi((mu_i - mu_j) / sqrt(var_i + var_j + noise)), normalised (SPEC 5.5)."""
    n = len(mu)
    ps = np.ones(n)
    for i in range(n):
        for j in range(n):
            if j != i:
                ps[i] *= norm.cdf((mu[i] - mu[j]) / np.sqrt(var[i] + var[j] + noise))
    return ps / ps.sum()


def pool_oracle(m_in, r, k, weight_fn):
    """Forward (mu, var) and S1 backward messages (tau, rho) of a window pool, by loops.

    ``weight_fn(mu, var)`` gives the window's constant coefficients.  Pixels outside complete windows get
    exactly G(0, 0).  Returns forward arrays shaped like the layer output and backward arrays (H, W, C)."""
    H, W, C = m_in.shape
    mu, var = moments(m_in.tau, m_in.rho)
    wins = windows(H, W, k)
    out_shape = (C,) if k is None else (H // k, W // k, C)
    f_mu, f_var = np.zeros(out_shape), np.zeros(out_shape)
    b_tau, b_rho = np.zeros((H, W, C)), np.zeros((H, W, C))
    weights = {}
    for o, pix in wins.items():
        for c in range(C):
            m = np.array([mu[y, x, c] for y, x in pix])
            v = np.array([var[y, x, c] for y, x in pix])
            a = weight_fn(m, v)
            weights[o + (c,)] = a
            f_mu[o + (c,)] = np.sum(a * m)
            f_var[o + (c,)] = np.sum(a * a * v)
            if r is None:
                continue
            rt, rr = r.tau[o + (c,)], r.rho[o + (c,)]
            if rr == 0:
                continue
            mu_r, var_r = rt / rr, 1 / rr
            for n, (y, x) in enumerate(pix):
                rest_mu = sum(a[j] * m[j] for j in range(len(pix)) if j != n)
                rest_var = sum(a[j] ** 2 * v[j] for j in range(len(pix)) if j != n)
                den = var_r + rest_var
                b_rho[y, x, c] = a[n] ** 2 / den
                b_tau[y, x, c] = a[n] * (mu_r - rest_mu) / den
    return (f_mu, f_var), (b_tau, b_rho), weights


def assert_close(actual, expected, rtol=1e-9):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=rtol,
                               atol=1e-12 * max(1.0, float(np.max(np.abs(expected)))))


# --- MaxPool ------------------------------------------------------------------------------------

MAX_SHAPES = [((4, 4, 2), 2), ((5, 7, 2), 2), ((6, 6, 1), 3), ((7, 5, 3), 3), ((3, 4, 2), 1)]


@pytest.mark.parametrize("noise", [None, 0.0, 1.0])
@pytest.mark.parametrize("shape,k", MAX_SHAPES)
def test_maxpool_forward_and_backward_equal_naive_oracle(shape, k, noise):
    template = ("MaxPool", k) if noise is None else ("MaxPool", k, {"noise": noise})
    beta2 = 0.3 if noise is None else noise  # the thesis-code default is 0.3 (SPEC 5.5)
    layer = pool_layer(shape, template)
    rng = np.random.default_rng(sum(shape) + k)
    m_in = random_messages(rng, shape)
    out = layer.forward(m_in, 1)
    r = random_messages(rng, out.shape, 0.1, 5.0)
    back = layer.backward(r, 1)
    (f_mu, f_var), (b_tau, b_rho), _ = pool_oracle(m_in, r, k, lambda m, v: argmax_weights(m, v, beta2))
    assert out.shape == f_mu.shape == (shape[0] // k, shape[1] // k, shape[2])
    assert_close(out.mean, f_mu)
    assert_close(out.var, f_var)
    assert back.shape == shape
    assert_close(back.tau, b_tau)
    assert_close(back.rho, b_rho)
    # inputs outside complete windows get exactly G(0, 0)
    H, W, _ = shape
    outside = np.ones((H, W), bool)
    outside[:H // k * k, :W // k * k] = False
    assert (back.tau[outside] == 0).all() and (back.rho[outside] == 0).all()
    assert (back.rho[~outside] > 0).all()


def test_maxpool_outside_windows_odd_shape_is_uninformative():
    layer = pool_layer((5, 3, 2), ("MaxPool", 2))
    rng = np.random.default_rng(0)
    m_in = random_messages(rng, (5, 3, 2))
    out = layer.forward(m_in, 0)
    assert out.shape == (2, 1, 2)
    back = layer.backward(random_messages(rng, out.shape), 0)
    np.testing.assert_array_equal(back.tau[4], 0)
    np.testing.assert_array_equal(back.rho[4], 0)
    np.testing.assert_array_equal(back.tau[:, 2], 0)
    np.testing.assert_array_equal(back.rho[:, 2], 0)


def test_maxpool_weights_depend_on_noise():
    layer0 = pool_layer((2, 2, 1), ("MaxPool", 2, {"noise": 0.0}))
    layer3 = pool_layer((2, 2, 1), ("MaxPool", 2))
    m_in = Gaussian.from_mean_var(np.array([[[0.3], [0.0]], [[-0.2], [0.1]]]), np.full((2, 2, 1), 0.05))
    mu0 = layer0.forward(m_in, 0).mean[0, 0, 0]
    mu3 = layer3.forward(m_in, 0).mean[0, 0, 0]
    mu, var = np.array([0.3, 0.0, -0.2, 0.1]), np.full(4, 0.05)
    assert mu0 == pytest.approx(argmax_weights(mu, var, 0.0) @ mu, rel=1e-12)
    assert mu3 == pytest.approx(argmax_weights(mu, var, 0.3) @ mu, rel=1e-12)
    assert mu0 > mu3 + 1e-3  # less noise puts more weight on the largest input


def test_maxpool_forward_matches_monte_carlo_of_weighted_sum():
    # The thesis MaxPool is an approximation of max(a_i): it treats the argmax probabilities p_i as fixed
    # coefficients.  What the forward message must match exactly is therefore the distribution of the
    # weighted sum sum_i p_i a_i with p fixed (a_i independent ~ N(mu_i, var_i)); we check its first two
    # moments by Monte Carlo with 5-standard-error bounds.
    shape = (4, 4, 2)
    layer = pool_layer(shape, ("MaxPool", 2))
    rng = np.random.default_rng(42)
    m_in = random_messages(rng, shape, 0.1, 1.5)
    out = layer.forward(m_in, 0)
    mu, var = moments(m_in.tau, m_in.rho)
    N = 200_000
    for (oy, ox), pix in windows(4, 4, 2).items():
        for c in range(2):
            m = np.array([mu[y, x, c] for y, x in pix])
            v = np.array([var[y, x, c] for y, x in pix])
            p = argmax_weights(m, v, 0.3)
            s = (m + np.sqrt(v) * rng.standard_normal((N, 4))) @ p
            got_mu, got_var = out.mean[oy, ox, c], out.var[oy, ox, c]
            assert abs(s.mean() - got_mu) < 5 * np.sqrt(got_var / N)
            assert abs(s.var() - got_var) < 5 * got_var * np.sqrt(2 / N)


def test_maxpool_approximates_max_when_one_input_dominates():
    # Sanity check of the approximation: with one clearly largest input, p is ~one-hot and the forward
    # message is close to the Monte-Carlo moments of max(a_i).
    layer = pool_layer((2, 2, 1), ("MaxPool", 2))
    mu = np.array([[[4.0], [0.0]], [[-1.0], [0.5]]])
    var = np.full((2, 2, 1), 0.04)
    out = layer.forward(Gaussian.from_mean_var(mu, var), 0)
    rng = np.random.default_rng(0)
    a = mu.reshape(-1) + 0.2 * rng.standard_normal((100_000, 4))
    mx = a.max(axis=1)
    assert out.mean[0, 0, 0] == pytest.approx(mx.mean(), abs=5e-3)
    assert out.var[0, 0, 0] == pytest.approx(mx.var(), rel=3e-2)


def test_maxpool_symmetry_under_swapping_inputs():
    shape = (2, 2, 1)
    layer = pool_layer(shape, ("MaxPool", 2))
    rng = np.random.default_rng(3)
    base = random_messages(rng, shape)
    # two equal inputs (positions (0, 1) and (1, 0)) receive exactly equal messages
    base.tau[1, 0], base.rho[1, 0] = base.tau[0, 1], base.rho[0, 1]
    layer.forward(base, 0)
    r = Gaussian(np.array([[[0.7]]]), np.array([[[2.0]]]))
    back = layer.backward(r, 0)
    assert back.tau[0, 1, 0] == back.tau[1, 0, 0]
    assert back.rho[0, 1, 0] == back.rho[1, 0, 0]
    # swapping the two equal inputs changes nothing, exactly
    swapped = base.copy()
    swapped.tau[[0, 1], [1, 0]] = base.tau[[1, 0], [0, 1]]
    swapped.rho[[0, 1], [1, 0]] = base.rho[[1, 0], [0, 1]]
    out2 = layer.forward(swapped, 0)
    back2 = layer.backward(r, 0)
    np.testing.assert_array_equal(back2.tau, back.tau)
    np.testing.assert_array_equal(back2.rho, back.rho)
    # swapping two different inputs swaps their messages and leaves the output unchanged
    out1 = layer.forward(base, 0)
    other = base.copy()
    other.tau[0, 0], other.tau[1, 1] = base.tau[1, 1], base.tau[0, 0]
    other.rho[0, 0], other.rho[1, 1] = base.rho[1, 1], base.rho[0, 0]
    out3 = layer.forward(other, 0)
    back3 = layer.backward(r, 0)
    for o in (out2, out3):
        assert_close(o.tau, out1.tau, rtol=1e-13)
        assert_close(o.rho, out1.rho, rtol=1e-13)
    assert_close(back3.tau[0, 0], back.tau[1, 1], rtol=1e-12)
    assert_close(back3.tau[1, 1], back.tau[0, 0], rtol=1e-12)
    assert_close(back3.rho[0, 0], back.rho[1, 1], rtol=1e-12)
    assert_close(back3.rho[1, 1], back.rho[0, 0], rtol=1e-12)
    assert_close(back3.tau[0, 1], back.tau[0, 1], rtol=1e-12)


def test_maxpool_predict_equals_training_forward():
    shape = (5, 4, 3)
    layer = pool_layer(shape, ("MaxPool", 2))
    rng = np.random.default_rng(8)
    batch = random_messages(rng, (3,) + shape)
    pred = layer.predict(batch)
    assert pred.shape == (3, 2, 2, 3)
    for n in range(3):
        f = layer.forward(batch[n], 0)
        assert_close(pred.tau[n], f.tau, rtol=1e-13)
        assert_close(pred.rho[n], f.rho, rtol=1e-13)
        (f_mu, f_var), _, _ = pool_oracle(batch[n], None, 2, lambda m, v: argmax_weights(m, v, 0.3))
        assert_close(pred.mean[n], f_mu)
        assert_close(pred.var[n], f_var)


# --- AvgPool ------------------------------------------------------------------------------------

def uniform_weights(m, v):
    return np.full(len(m), 1.0 / len(m))


AVG_CASES = [((3, 4, 2), None), ((4, 4, 3), 2), ((5, 7, 2), 2), ((6, 6, 1), 3)]


@pytest.mark.parametrize("shape,k", AVG_CASES)
def test_avgpool_forward_backward_equal_naive_oracle(shape, k):
    template = ("AvgPool",) if k is None else ("AvgPool", k)
    layer = pool_layer(shape, template)
    rng = np.random.default_rng(5)
    m_in = random_messages(rng, shape)
    out = layer.forward(m_in, 0)
    r = random_messages(rng, out.shape, 0.1, 3.0)
    back = layer.backward(r, 0)
    (f_mu, f_var), (b_tau, b_rho), _ = pool_oracle(m_in, r, k, uniform_weights)
    ft, fr = clamp(f_mu / f_var, 1 / f_var)
    bt, br = clamp(b_tau, b_rho)  # outside complete windows: G(0, 0) -> G(0, 1e-8)
    assert out.shape == ((shape[2],) if k is None else (shape[0] // k, shape[1] // k, shape[2]))
    assert_close(out.tau, ft)
    assert_close(out.rho, fr)
    assert back.shape == shape
    assert_close(back.tau, bt)
    assert_close(back.rho, br)
    assert back.rho.min() >= MIN_RHO


def test_global_avgpool_hand_computed():
    layer = pool_layer((1, 2, 1), ("AvgPool",))
    m_in = Gaussian.from_mean_var(np.array([[[1.0], [3.0]]]), np.array([[[1.0], [3.0]]]))
    out = layer.forward(m_in, 0)
    assert out.mean[0] == pytest.approx(2.0) and out.var[0] == pytest.approx(1.0)  # (1 + 3) / 4
    back = layer.backward(Gaussian.from_mean_var(np.array([2.5]), np.array([0.25])), 0)
    # message to x_1: x_1 = 2 * s - x_2 -> mean 2 * 2.5 - 3 = 2, var 4 * 0.25 + 3 = 4
    assert back.mean[0, 0, 0] == pytest.approx(2.0) and back.var[0, 0, 0] == pytest.approx(4.0)
    assert back.mean[0, 1, 0] == pytest.approx(4.0) and back.var[0, 1, 0] == pytest.approx(2.0)


def test_avgpool_min_rho_clamps_in_training():
    shape = (2, 2, 3)
    layer = pool_layer(shape, ("AvgPool",))
    rng = np.random.default_rng(9)
    m_in = random_messages(rng, shape)
    m_in.tau[..., 0] = 0.5e-12 * rng.normal(size=(2, 2))  # channel 0: almost flat inputs
    m_in.rho[..., 0] = 1e-12
    out = layer.forward(m_in, 0)
    (f_mu, f_var), _, _ = pool_oracle(m_in, None, None, uniform_weights)
    assert 1 / f_var[0] < MIN_RHO  # the clamp fires on channel 0 only
    assert out.rho[0] == MIN_RHO
    assert_close(out.mean, f_mu)
    assert_close(out.rho[1:], 1 / f_var[1:])
    # backward: channel 0 G(0, 0), channel 1 tiny precision -> clamped; channel 2 ordinary
    r = Gaussian(np.array([0.0, 0.3e-9, 1.0]), np.array([0.0, 1e-9, 2.0]))
    back = layer.backward(r, 0)
    assert (back.tau[..., 0] == 0).all() and (back.rho[..., 0] == MIN_RHO).all()
    assert (back.rho[..., 1] == MIN_RHO).all()
    (_, _), (b_tau, b_rho), _ = pool_oracle(m_in, r, None, uniform_weights)
    assert (b_rho[..., 1] < MIN_RHO).all()
    bt, br = clamp(b_tau, b_rho)
    assert_close(back.tau, bt)
    assert_close(back.rho, br)
    assert_close(back.mean[..., 1], b_tau[..., 1] / b_rho[..., 1])  # the clamp keeps the mean


@pytest.mark.parametrize("template", [("AvgPool",), ("AvgPool", 2)])
def test_avgpool_predict_equals_training_forward(template):
    shape = (4, 5, 2)
    layer = pool_layer(shape, template)
    rng = np.random.default_rng(4)
    batch = random_messages(rng, (3,) + shape)
    pred = layer.predict(batch)
    k = template[1] if len(template) > 1 else None
    for n in range(3):
        f = layer.forward(batch[n], 0)
        assert_close(pred.tau[n], f.tau, rtol=1e-13)
        assert_close(pred.rho[n], f.rho, rtol=1e-13)
        (f_mu, f_var), _, _ = pool_oracle(batch[n], None, k, uniform_weights)
        assert_close(pred.mean[n], f_mu)
        assert_close(pred.var[n], f_var)


def test_avgpool_predict_is_not_clamped():
    # SPEC 5.6: min_rho(1e-8) is a training-time clamp; prediction is the plain S1 forward.
    layer = pool_layer((2, 2, 1), ("AvgPool",))
    batch = Gaussian(np.full((1, 2, 2, 1), 2e-12), np.full((1, 2, 2, 1), 1e-12))
    pred = layer.predict(batch)
    # mean 2, var 4e12 / 16 = 2.5e11
    assert pred.mean[0, 0] == pytest.approx(2.0, rel=1e-12)
    assert pred.rho[0, 0] == pytest.approx(4e-12, rel=1e-12)
    assert layer.forward(batch[0], 0).rho[0] == MIN_RHO
