"""Convolution (SPEC 5.3, issue 5): im2col geometry, forward/backward against naive loop oracles, DSL shape
tracking and errors, and a small end-to-end CNN.

The oracles here share no helper with the code under test: patches are built with ``np.pad`` and explicit
loops, and the S1/S2 messages are written in their *moment* form (SPEC 4.1, 4.2)::

    message to summand k:  rho = coef2 / (var_r + rest_var),  tau = coef * (mu_r - rest_mu) / (var_r + rest_var)

where ``rest_*`` are the moments of all the *other* summands (plus the bias), summed explicitly, and
``coef`` / ``coef2`` are ``a_k`` / ``a_k^2`` for S1 and ``mu_ak`` / ``m2_ak`` for S2.  This equals the
natural-parameter form of the library multiplied through by ``var_r``.
"""

import time

import numpy as np
import pytest

from factorgraph import kernels
from factorgraph.equations import conv_output_size, patch_index
from factorgraph.gaussian import Gaussian
from layers import create_factor_graph

MIN_RHO = 1e-8


@pytest.fixture(autouse=True)
def _numpy_reference_path():
    prev = kernels.set_enabled(False)
    yield
    kernels.set_enabled(prev)


@pytest.fixture(params=[False, True], ids=["numpy", "kernels"])
def both_paths(request):
    """Run an oracle test on the NumPy reference path and on the compiled-kernel path."""
    kernels.set_enabled(request.param)
    return request.param


# --- independent oracles --------------------------------------------------------------------------


def pad_image(x, p, mode):
    """Pad the two spatial axes of (H, W, C) with zeros or by mirror (symmetric) reflection."""
    width = ((p, p), (p, p), (0, 0))
    if mode == "zeros":
        return np.pad(x, width, mode="constant", constant_values=0)
    return np.pad(x, width, mode="symmetric")


def naive_src(shape, k, stride, padding, mode):
    """(P, D) flat source index of each patch entry by explicit loops; -1 marks zero padding."""
    H, W, C = shape
    idx = np.arange(H * W * C).reshape(H, W, C)
    if mode == "zeros":
        padded = np.pad(idx, ((padding, padding), (padding, padding), (0, 0)), constant_values=-1)
    else:
        padded = np.pad(idx, ((padding, padding), (padding, padding), (0, 0)), mode="symmetric")
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    rows = []
    for oy in range(Ho):
        for ox in range(Wo):
            row = []
            for dy in range(k):
                for dx in range(k):
                    for c in range(C):
                        row.append(padded[oy * stride + dy, ox * stride + dx, c])
            rows.append(row)
    return np.array(rows, dtype=np.int64), (Ho, Wo)


def naive_conv(x, w_kkcf, b, stride, padding, mode):
    """Cross-correlation of a constant image (H, W, C) with a kernel (k, k, C, F) plus bias, by loops."""
    k, _, C, F = w_kkcf.shape
    xp = pad_image(x, padding, mode)
    Ho = (xp.shape[0] - k) // stride + 1
    Wo = (xp.shape[1] - k) // stride + 1
    out = np.zeros((Ho, Wo, F))
    for oy in range(Ho):
        for ox in range(Wo):
            for f in range(F):
                s = b[f]
                for dy in range(k):
                    for dx in range(k):
                        for c in range(C):
                            s += xp[oy * stride + dy, ox * stride + dx, c] * w_kkcf[dy, dx, c, f]
                out[oy, ox, f] = s
    return out


def moments(tau, rho):
    tau, rho = np.asarray(tau, float), np.asarray(rho, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = np.where(rho > 0, tau / rho, 0.0)
        var = np.where(rho > 0, 1.0 / rho, np.inf)
    return mu, var


def clamp(tau, rho, m=MIN_RHO):
    """min_rho written out: keep the mean, raise rho to m."""
    mu, _ = moments(tau, rho)
    low = rho < m
    return np.where(low, mu * m, tau), np.where(low, m, rho)


def others(v, d):
    """Sum of v over all entries but d (explicitly, no 'total minus own')."""
    return np.delete(v, d).sum()


def oracle_const_conv(a, w_mu, w_var, c_mu, c_var, r_tau, r_rho):
    """S1 with constant patches a (P, D), kernel cavity (D, F), bias cavity (F,), backward r (P, F).

    Returns forward (mu, var) (P, F), kernel message (tau, rho) (D, F), bias message (tau, rho) (F,):
    the products over all positions of the per-position messages."""
    P, D = a.shape
    F = w_mu.shape[1]
    f_mu, f_var = np.zeros((P, F)), np.zeros((P, F))
    wt, wr = np.zeros((D, F)), np.zeros((D, F))
    ct, cr = np.zeros(F), np.zeros(F)
    for p in range(P):
        for f in range(F):
            terms_mu = a[p] * w_mu[:, f]
            terms_var = a[p] ** 2 * w_var[:, f]
            f_mu[p, f] = terms_mu.sum() + c_mu[f]
            f_var[p, f] = terms_var.sum() + c_var[f]
            if r_rho[p, f] == 0:
                continue  # G(0, 0) backward: every message is G(0, 0)
            mu_r, var_r = r_tau[p, f] / r_rho[p, f], 1.0 / r_rho[p, f]
            for d in range(D):
                rest_mu = others(terms_mu, d) + c_mu[f]
                rest_var = others(terms_var, d) + c_var[f]
                den = var_r + rest_var
                wr[d, f] += a[p, d] ** 2 / den
                wt[d, f] += a[p, d] * (mu_r - rest_mu) / den
            den = var_r + terms_var.sum()
            cr[f] += 1.0 / den
            ct[f] += (mu_r - terms_mu.sum()) / den
    return (f_mu, f_var), (wt, wr), (ct, cr)


def oracle_var_conv(a_mu, a_var, w_mu, w_var, c_mu, c_var, r_tau, r_rho):
    """S2 with patch marginals (P, D) (zero padding = point mass 0), kernel marginal (D, F), bias cavity (F,).

    Returns forward (mu, var), kernel message (tau, rho) (D, F) (product over positions), bias message
    (F,), and patch-entry messages (tau, rho) (P, D) (product over filters)."""
    P, D = a_mu.shape
    F = w_mu.shape[1]
    a_m2 = a_var + a_mu ** 2
    w_m2 = w_var + w_mu ** 2
    f_mu, f_var = np.zeros((P, F)), np.zeros((P, F))
    wt, wr = np.zeros((D, F)), np.zeros((D, F))
    ct, cr = np.zeros(F), np.zeros(F)
    at, ar = np.zeros((P, D)), np.zeros((P, D))
    for p in range(P):
        for f in range(F):
            terms_mu = a_mu[p] * w_mu[:, f]
            V = a_m2[p] * w_m2[:, f] - a_mu[p] ** 2 * w_mu[:, f] ** 2  # SPEC 4.2, literally
            f_mu[p, f] = terms_mu.sum() + c_mu[f]
            f_var[p, f] = V.sum() + c_var[f]
            if r_rho[p, f] == 0:
                continue
            mu_r, var_r = r_tau[p, f] / r_rho[p, f], 1.0 / r_rho[p, f]
            for d in range(D):
                rest_mu = others(terms_mu, d) + c_mu[f]
                den = var_r + others(V, d) + c_var[f]
                wr[d, f] += a_m2[p, d] / den
                wt[d, f] += a_mu[p, d] * (mu_r - rest_mu) / den
                ar[p, d] += w_m2[d, f] / den
                at[p, d] += w_mu[d, f] * (mu_r - rest_mu) / den
            den = var_r + V.sum()
            cr[f] += 1.0 / den
            ct[f] += (mu_r - terms_mu.sum()) / den
    return (f_mu, f_var), (wt, wr), (ct, cr), (at, ar)


def merge_copies(at, ar, src, n):
    """Message to each input pixel: explicit product over all its copies (zero padding dropped)."""
    tau, rho = np.zeros(n), np.zeros(n)
    P, D = src.shape
    for p in range(P):
        for d in range(D):
            s = src[p, d]
            if s >= 0:
                tau[s] += at[p, d]
                rho[s] += ar[p, d]
    return tau, rho


def assert_close(actual, expected, rtol=1e-9, what=""):
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    atol = 1e-11 * max(1.0, float(np.max(np.abs(expected)))) if expected.size else 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# --- 1. im2col geometry --------------------------------------------------------------------------

GEOMETRIES = [
    # (H, W, C), k, stride, padding
    ((5, 5, 1), 3, 1, 0),
    ((5, 7, 2), 3, 1, 1),
    ((6, 4, 3), 2, 1, 0),   # even kernel
    ((6, 4, 2), 2, 2, 0),   # even kernel, stride 2
    ((7, 5, 2), 3, 2, 0),   # odd kernel, stride 2, rectangular
    ((4, 6, 2), 2, 1, 1),   # even kernel with padding
    ((5, 3, 2), 3, 2, 2),   # padding 2, stride 2
    ((3, 4, 1), 4, 1, 2),   # kernel larger than the image but not the padded image
    ((4, 4, 2), 1, 1, 0),   # 1x1 kernel
]


@pytest.mark.parametrize("mode", ["zeros", "mirror"])
@pytest.mark.parametrize("shape,k,stride,padding", GEOMETRIES)
def test_patch_index_equals_naive_loops(shape, k, stride, padding, mode):
    src, out = patch_index(shape, k, stride, padding, mode)
    ref, ref_out = naive_src(shape, k, stride, padding, mode)
    assert tuple(out) == ref_out
    assert src.shape == ref.shape == (ref_out[0] * ref_out[1], k * k * shape[2])
    np.testing.assert_array_equal(src, ref)
    if mode == "mirror":
        assert (src >= 0).all()
    elif padding == 0:
        assert (src >= 0).all()
    else:
        assert (src == -1).any()


def test_mirror_padding_spec_example():
    # SPEC 5.3: [1, 2, 3] with p = 2 becomes [2, 1, 1, 2, 3, 3, 2]; as flat indices [1, 0, 0, 1, 2, 2, 1].
    src, out = patch_index((1, 3, 1), 1, 1, 2, "mirror")
    assert tuple(out) == (5, 7)
    values = np.array([1, 2, 3])[src[:, 0]].reshape(5, 7)
    for row in values:  # a single image row: every padded row is a copy of it
        np.testing.assert_array_equal(row, [2, 1, 1, 2, 3, 3, 2])
    # zero padding of the same row: the padded entries are -1
    src0, _ = patch_index((1, 3, 1), 1, 1, 2, "zeros")
    np.testing.assert_array_equal(src0[:, 0].reshape(5, 7)[2], [-1, -1, 0, 1, 2, -1, -1])
    assert (src0[:, 0].reshape(5, 7)[[0, 1, 3, 4]] == -1).all()


def test_patch_layout_is_dy_dx_c_row_major():
    # hand-written: 3x3 image with 2 channels, 2x2 kernel, first patch at the top-left corner
    src, _ = patch_index((3, 3, 2), 2, 1, 0, "zeros")
    flat = lambda y, x, c: (y * 3 + x) * 2 + c  # noqa: E731
    expect0 = [flat(dy, dx, c) for dy in range(2) for dx in range(2) for c in range(2)]
    np.testing.assert_array_equal(src[0], expect0)
    # position 1 is (oy=0, ox=1): row-major output positions
    np.testing.assert_array_equal(src[1], [e + 2 for e in expect0])
    np.testing.assert_array_equal(src[2], [e + 6 for e in expect0])


@pytest.mark.parametrize("n,k,stride,padding,expect", [
    (5, 3, 1, 0, 3), (5, 3, 1, 1, 5), (7, 3, 2, 0, 3), (6, 2, 2, 0, 3), (5, 3, 2, 2, 4), (3, 5, 1, 1, 1),
    (4, 4, 1, 0, 1),
])
def test_conv_output_size_values(n, k, stride, padding, expect):
    assert conv_output_size(n, k, stride, padding) == expect


@pytest.mark.parametrize("n,k,stride,padding", [
    (3, 5, 1, 0),   # kernel larger than input
    (4, 7, 1, 1),   # kernel larger than padded input
    (6, 3, 2, 0),   # (6 - 3) / 2 not an integer
    (5, 2, 2, 0),   # (5 - 2) / 2
    (5, 2, 3, 1),   # (5 + 2 - 2) / 3
    (5, 0, 1, 0),   # kernel 0
    (5, 3, 0, 0),   # stride 0
    (5, 3, 1, -1),  # negative padding
])
def test_conv_output_size_errors(n, k, stride, padding):
    with pytest.raises(ValueError):
        conv_output_size(n, k, stride, padding)
    with pytest.raises(ValueError):
        patch_index((n, n, 1), k, stride, padding)


def test_patch_index_rejects_unknown_mode():
    with pytest.raises(ValueError):
        patch_index((4, 4, 1), 3, 1, 1, "reflect")


# --- 2. forward of the constant-input conv and prediction -----------------------------------------

def _head():
    return [("Flatten",), ("Linear", 2), ("Regression", 0.1)]


FIRST_CONVS = [
    ((5, 6, 2), ("Conv", 3, 3)),
    ((5, 6, 2), ("Conv", 2, 3, {"padding": 1})),
    ((5, 6, 2), ("Conv", 2, 3, 1, {"padding_mode": "mirror"})),
    ((6, 4, 3), ("Conv", 2, 2, {"stride": 2})),
    ((7, 5, 1), ("Conv", 3, 3, {"stride": 2, "padding": 1, "padding_mode": "mirror"})),
    ((4, 5, 2), ("Conv", 2, 2, {"padding": 2})),
]


def _conv_params(t):
    opts = t[-1] if isinstance(t[-1], dict) else {}
    pos = [v for v in t[1:] if not isinstance(v, dict)]
    padding = pos[2] if len(pos) > 2 else opts.get("padding", 0)
    return pos[0], pos[1], opts.get("stride", 1), padding, opts.get("padding_mode", "zeros")


@pytest.mark.parametrize("shape,conv", FIRST_CONVS)
def test_first_conv_forward_and_predict_equal_naive_convolution(shape, conv, both_paths):
    F, k, stride, padding, mode = _conv_params(conv)
    C = shape[2]
    fg = create_factor_graph([shape, conv] + _head(), batch_size=2, seed=3)
    layer = fg.layers[0]
    assert layer.constant_input
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2,) + shape)
    Y = rng.normal(size=(2, 2))
    for i in range(2):  # make per-example messages non-trivial so cavities differ from the marginal
        fg.forward_pass(X[i], i)
        fg.backward_pass(Y[i], i)
    W, c = layer.params["W"], layer.params["c"]
    w_mu, w_var = moments(W.q.tau - W.msgs.tau[1], W.q.rho - W.msgs.rho[1])
    c_mu, c_var = moments(c.q.tau - c.msgs.tau[1], c.q.rho - c.msgs.rho[1])
    assert np.abs(W.msgs.rho[1]).max() > 0
    out = layer.forward(X[1], 1)
    mu = naive_conv(X[1], w_mu.reshape(k, k, C, F), c_mu, stride, padding, mode)
    var = naive_conv(X[1] ** 2, w_var.reshape(k, k, C, F), c_var, stride, padding, mode)
    assert out.shape == mu.shape == layer.output_shape_
    assert_close(out.mean, mu, what="forward mean")
    assert_close(out.var, var, what="forward var")

    fg.recompute_marginals()
    q_mu, q_var = moments(W.q.tau, W.q.rho)
    qc_mu, qc_var = moments(c.q.tau, c.q.rho)
    pred = layer.predict(X)
    assert pred.shape == (2,) + layer.output_shape_
    for n in range(2):
        assert_close(pred.mean[n], naive_conv(X[n], q_mu.reshape(k, k, C, F), qc_mu, stride, padding, mode))
        assert_close(pred.var[n], naive_conv(X[n] ** 2, q_var.reshape(k, k, C, F), qc_var, stride, padding, mode))


def test_hidden_conv_predict_equals_naive_s2_forward():
    fg = create_factor_graph([(6, 5, 2), ("Conv", 3, 3, {"padding": 1}), ("LeakyReLU", 0.1),
                              ("Conv", 2, 2, {"padding": 1, "padding_mode": "mirror"})] + _head(),
                             batch_size=1, seed=0)
    layer = fg.layers[2]
    assert not layer.constant_input
    rng = np.random.default_rng(1)
    m = Gaussian.from_mean_var(rng.normal(size=(3, 6, 5, 3)), rng.uniform(0.1, 2, size=(3, 6, 5, 3)))
    pred = layer.predict(m)
    src, _ = naive_src((6, 5, 3), 2, 1, 1, "mirror")
    W, c = layer.params["W"], layer.params["c"]
    w_mu, w_var = moments(W.q.tau, W.q.rho)
    c_mu, c_var = moments(c.q.tau, c.q.rho)
    for n in range(3):
        mu, var = m.mean[n].reshape(-1)[src], m.var[n].reshape(-1)[src]
        (f_mu, f_var), *_ = oracle_var_conv(mu, var, w_mu, w_var, c_mu, c_var,
                                            np.zeros((len(src), 2)), np.zeros((len(src), 2)))
        assert_close(pred.mean[n], f_mu.reshape(pred.shape[1:]))
        assert_close(pred.var[n], f_var.reshape(pred.shape[1:]))


# --- 3. a convolution equals the linear layer on explicitly unfolded patches ----------------------

class Recorder:
    """Wraps a conv layer's forward/backward to record its inputs and pre-call state."""

    def __init__(self, layer):
        self.layer, self.log = layer, {}
        self._f, self._b = layer.forward, layer.backward
        layer.forward, layer.backward = self.forward, self.backward

    def forward(self, m_in, i):
        L, W, c = self.layer, self.layer.params["W"], self.layer.params["c"]
        self.log = {
            "i": i,
            "m_in": np.array(m_in, copy=True) if isinstance(m_in, np.ndarray) else m_in.copy(),
            "Wq": W.q.copy(), "Wm": W.msgs[i].copy(), "cq": c.q.copy(), "cm": c.msgs[i].copy(),
        }
        if not L.constant_input:
            self.log["m_to_x"] = L.m_to_x[i].copy()
        out = self._f(m_in, i)
        self.log["out"] = out.copy()
        return out

    def backward(self, m_out, i):
        assert i == self.log["i"]
        self.log["m_out"] = m_out.copy()
        ret = self._b(m_out, i)
        self.log["ret"] = None if ret is None else ret.copy()
        return ret


def check_conv_against_patch_oracle(layer, log):
    """Compare everything the layer computed and stored for the recorded pass with the naive oracle."""
    F, k, s, p, mode = layer.filters, layer.k, layer.stride, layer.padding, layer.padding_mode
    shape = layer.input_shape
    i = log["i"]
    src, (Ho, Wo) = naive_src(shape, k, s, p, mode)
    P, D = src.shape
    r_tau = log["m_out"].tau.reshape(Ho, Wo, F).reshape(P, F)
    r_rho = log["m_out"].rho.reshape(Ho, Wo, F).reshape(P, F)
    Wq, Wm, cq, cm = log["Wq"], log["Wm"], log["cq"], log["cm"]
    c_mu, c_var = moments(cq.tau - cm.tau, cq.rho - cm.rho)  # bias: always its cavity
    W, c = layer.params["W"], layer.params["c"]
    if layer.constant_input:
        x = np.asarray(log["m_in"]).reshape(-1)
        a = np.where(src >= 0, x[np.maximum(src, 0)], 0.0)
        w_mu, w_var = moments(Wq.tau - Wm.tau, Wq.rho - Wm.rho)  # kernel cavity
        (f_mu, f_var), (wt, wr), (ct, cr) = oracle_const_conv(a, w_mu, w_var, c_mu, c_var, r_tau, r_rho)
        assert log["ret"] is None
    else:
        m_in, m_to_x = log["m_in"], log["m_to_x"]
        xt, xr = clamp(m_in.tau + m_to_x.tau, m_in.rho + m_to_x.rho)  # input marginal, min_rho
        x_mu, x_var = (v.reshape(-1) for v in moments(xt, xr))
        a_mu = np.where(src >= 0, x_mu[np.maximum(src, 0)], 0.0)
        a_var = np.where(src >= 0, x_var[np.maximum(src, 0)], 0.0)  # zero padding: point mass at 0
        w_mu, w_var = moments(Wq.tau, Wq.rho)  # kernel marginal
        (f_mu, f_var), (wt, wr), (ct, cr), (at, ar) = oracle_var_conv(
            a_mu, a_var, w_mu, w_var, c_mu, c_var, r_tau, r_rho)
        n = int(np.prod(shape))
        xt, xr = merge_copies(at, ar, src, n)
        xt, xr = clamp(xt, xr)
        assert_close(layer.m_to_x.tau[i].reshape(-1), xt, what="m_to_x tau")
        assert_close(layer.m_to_x.rho[i].reshape(-1), xr, what="m_to_x rho")
        assert_close(log["ret"].tau.reshape(-1), xt, what="returned input message tau")
        assert_close(log["ret"].rho.reshape(-1), xr, what="returned input message rho")
    out = log["out"]
    assert out.shape == (Ho, Wo, F)
    assert_close(out.mean.reshape(P, F), f_mu, what="forward mean")
    assert_close(out.var.reshape(P, F), f_var, what="forward var")
    assert_close(W.msgs.tau[i], wt, what="kernel message tau")
    assert_close(W.msgs.rho[i], wr, what="kernel message rho")
    assert_close(c.msgs.tau[i], ct, what="bias message tau")
    assert_close(c.msgs.rho[i], cr, what="bias message rho")
    # the marginal is updated incrementally: q <- q - old + new
    assert_close(W.q.rho, Wq.rho - Wm.rho + wr, what="kernel marginal rho")
    assert_close(c.q.tau, cq.tau - cm.tau + ct, what="bias marginal tau")


CONFIGS = [
    # input shape, first conv, hidden conv
    ((7, 5, 2), ("Conv", 3, 3, {"padding": 1}), ("Conv", 2, 3, {"stride": 2})),
    ((6, 4, 2), ("Conv", 3, 2), ("Conv", 2, 3, {"padding": 1, "padding_mode": "mirror"})),
    ((5, 6, 1), ("Conv", 2, 3, {"padding": 2, "padding_mode": "mirror"}), ("Conv", 3, 2, {"padding": 1})),
    ((6, 6, 3), ("Conv", 2, 2, {"stride": 2}), ("Conv", 2, 3, {"padding": 1, "stride": 2})),
    ((6, 4, 2), ("Conv", 3, 3, {"padding": 1}), ("Conv", 2, 2, {"stride": 2})),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_conv_equals_linear_on_unfolded_patches(cfg, seed, both_paths):
    shape, conv1, conv2 = CONFIGS[cfg]
    templates = [shape, conv1, ("LeakyReLU", 0.1), conv2, ("LeakyReLU", 0.1), ("Flatten",), ("Linear", 2),
                 ("Regression", 0.1)]
    fg = create_factor_graph(templates, batch_size=3, seed=seed)
    first, hidden = fg.layers[0], fg.layers[2]
    assert first.constant_input and not hidden.constant_input
    rec1, rec2 = Recorder(first), Recorder(hidden)
    rng = np.random.default_rng(100 + seed)
    X = rng.normal(size=(3,) + shape)
    Y = rng.normal(size=(3, 2))
    for _ in range(2):
        for i in range(3):
            fg.forward_pass(X[i], i)
            fg.backward_pass(Y[i], i)
        fg.recompute_marginals()
    # the recorded pass: slot 1, second visit (non-trivial cavities and stored input messages)
    fg.forward_pass(X[1], 1)
    fg.backward_pass(Y[1], 1)
    assert np.abs(rec2.log["m_to_x"].rho).max() > 0
    check_conv_against_patch_oracle(first, rec1.log)
    check_conv_against_patch_oracle(hidden, rec2.log)


@pytest.mark.parametrize("conv", [
    ("Conv", 3, 3, {"padding": 1}),
    ("Conv", 2, 2, {"stride": 2}),
    ("Conv", 2, 2, {"padding": 2, "padding_mode": "mirror", "stride": 2}),
    ("Conv", 2, 4, {"padding": 1}),
])
def test_hidden_conv_isolated_with_hand_made_messages(conv, both_paths):
    """Hidden conv driven directly: random input, random stored m_to_x, some G(0, 0) backward messages."""
    shape = (6, 6, 2)
    fg = create_factor_graph([(6, 6, 1), ("Conv", 2, 1), conv, ("Flatten",), ("Linear", 1), ("Regression", 1.0)],
                             batch_size=2, seed=5)
    layer = fg.layers[1]
    assert layer.input_shape == shape and not layer.constant_input
    rec = Recorder(layer)
    rng = np.random.default_rng(11)
    layer.m_to_x[1] = Gaussian(rng.normal(size=shape), rng.uniform(0.0, 2.0, size=shape))
    m_in = Gaussian.from_mean_var(rng.normal(size=shape), rng.uniform(0.2, 3.0, size=shape))
    out = layer.forward(m_in, 1)
    r_mu = rng.normal(size=out.shape)
    r_rho = rng.uniform(0.1, 5, size=out.shape) * (rng.uniform(size=out.shape) > 0.3)
    layer.backward(Gaussian(r_mu * r_rho, r_rho), 1)
    check_conv_against_patch_oracle(layer, rec.log)


def test_hidden_conv_uninformative_backward_gives_clamped_flat_input_messages(both_paths):
    fg = create_factor_graph([(5, 5, 1), ("Conv", 2, 1), ("Conv", 2, 3, {"padding": 1}), ("Flatten",),
                              ("Linear", 1), ("Regression", 1.0)], batch_size=1, seed=0)
    layer = fg.layers[1]
    rng = np.random.default_rng(0)
    m_in = Gaussian.from_mean_var(rng.normal(size=(5, 5, 2)), np.ones((5, 5, 2)))
    out = layer.forward(m_in, 0)
    to_x = layer.backward(Gaussian.uniform(out.shape), 0)
    np.testing.assert_array_equal(to_x.tau, 0)
    np.testing.assert_array_equal(to_x.rho, MIN_RHO)
    np.testing.assert_array_equal(layer.params["W"].msgs.rho[0], 0)
    np.testing.assert_array_equal(layer.params["c"].msgs.rho[0], 0)


CONFIG_T = [(6, 4, 2), ("Conv", 3, 3, {"padding": 1}), ("LeakyReLU", 0.1), ("Conv", 2, 2, {"stride": 2}),
            ("Flatten",), ("Linear", 2), ("Regression", 0.1)]


def test_reset_batch_caches_clears_input_messages():
    fg = create_factor_graph(CONFIG_T, batch_size=2, seed=0)
    X = np.random.default_rng(0).normal(size=(2, 6, 4, 2))
    fg.train_batch(X, np.zeros((2, 2)), 1)
    hidden = fg.layers[2]
    assert np.abs(hidden.m_to_x.rho).min() > 0
    hidden.reset_batch_caches()
    assert not hidden.m_to_x.rho.any() and not hidden.m_to_x.tau.any()


# --- 4. DSL --------------------------------------------------------------------------------------

def test_dsl_tracks_conv_and_pool_shapes():
    fg = create_factor_graph([
        (11, 9, 2),
        ("Conv", 4, 3),                                    # (9, 7, 4)
        ("LeakyReLU", 0.1),
        ("MaxPool", 2),                                    # (4, 3, 4)
        ("Conv", 5, 2, {"padding": 1}),                    # (5, 4, 5)
        ("LeakyReLU", 0.1),
        ("AvgPool", 2),                                    # (2, 2, 5)
        ("Conv", 3, 3, 2, {"padding_mode": "mirror"}),  # (4, 4, 3)
        ("AvgPool",),                                      # (3,)
        ("Linear", 4),
        ("Regression", 0.1),
    ], batch_size=1, seed=0)
    shapes = [layer.output_shape_ for layer in fg.layers]
    assert shapes == [(9, 7, 4), (9, 7, 4), (4, 3, 4), (5, 4, 5), (5, 4, 5), (2, 2, 5), (4, 4, 3), (3,), (4,),
                      (4,)]
    assert [layer.constant_input for layer in fg.layers[:4]] == [True, False, False, False]
    assert fg.layers[0].params["W"].q.shape == (3 * 3 * 2, 4)
    assert fg.layers[3].params["W"].q.shape == (2 * 2 * 4, 5)
    assert fg.layers[3].params["c"].q.shape == (5,)
    fg2 = create_factor_graph([(6, 4, 3), ("Conv", 2, 3), ("Flatten",), ("Linear", 1), ("Regression", 1.0)], 1)
    assert [layer.output_shape_ for layer in fg2.layers] == [(4, 2, 2), (16,), (1,), (1,)]
    assert fg2.layers[2].params["W"].q.shape == (16, 1)


R = ("Regression", 0.1)
TAIL = [("Flatten",), ("Linear", 1), R]
BAD = [
    ("kernel larger than input", [(4, 4, 1), ("Conv", 2, 5)] + TAIL, 1),
    ("kernel larger than hidden input", [(6, 6, 1), ("Conv", 2, 3), ("LeakyReLU", 0.1), ("Conv", 2, 5)] + TAIL, 3),
    ("non-integer output size", [(5, 5, 1), ("Conv", 2, 2, {"stride": 2})] + TAIL, 1),
    ("non-integer output, hidden", [(7, 7, 1), ("Conv", 2, 3), ("LeakyReLU", 0.1), ("Conv", 2, 2, {"stride": 2})]
     + TAIL, 3),
    ("Conv after 1-D input", [(16,), ("Conv", 2, 3), ("Linear", 1), R], 1),
    ("Conv after Flatten", [(4, 4, 1), ("Flatten",), ("Conv", 2, 3), ("Linear", 1), R], 2),
    ("Conv after Linear", [(4,), ("Linear", 4), ("Conv", 2, 1), R], 2),
    ("bad padding_mode", [(4, 4, 1), ("Conv", 2, 3), ("LeakyReLU", 0.1), ("Conv", 2, 1, {"padding_mode": "wrap"})]
     + TAIL, 3),
    ("negative padding", [(4, 4, 1), ("Conv", 2, 3, -1)] + TAIL, 1),
    ("negative padding option", [(4, 4, 1), ("Conv", 2, 3, {"padding": -2})] + TAIL, 1),
    ("zero filters", [(4, 4, 1), ("Conv", 0, 3)] + TAIL, 1),
    ("zero kernel", [(4, 4, 1), ("Conv", 2, 0)] + TAIL, 1),
    ("zero stride", [(4, 4, 1), ("Conv", 2, 3, {"stride": 0})] + TAIL, 1),
    ("unknown conv option", [(4, 4, 1), ("Conv", 2, 3, {"dilation": 2})] + TAIL, 1),
    ("MaxPool window larger than input", [(4, 4, 1), ("Conv", 2, 3), ("MaxPool", 3)] + TAIL, 2),
    ("MaxPool window 0", [(4, 4, 1), ("Conv", 2, 3), ("MaxPool", 0)] + TAIL, 2),
    ("MaxPool after Flatten", [(4, 4, 1), ("Conv", 2, 3), ("Flatten",), ("MaxPool", 2), ("Linear", 1), R], 3),
    ("AvgPool before the first weighted layer", [(4, 4, 1), ("AvgPool",), ("Linear", 1), R], 1),
    ("windowed AvgPool before the first weighted layer", [(4, 4, 1), ("AvgPool", 2)] + TAIL, 1),
    ("AvgPool window larger than input", [(4, 4, 1), ("Conv", 2, 3), ("AvgPool", 3)] + TAIL, 2),
    ("Linear on conv output without Flatten", [(4, 4, 1), ("Conv", 2, 3), ("Linear", 1), R], 2),
]


@pytest.mark.parametrize("what,templates,k", BAD, ids=[b[0] for b in BAD])
def test_dsl_errors_name_the_template(what, templates, k):
    with pytest.raises(ValueError, match=rf"template {k}\b"):
        create_factor_graph(templates, batch_size=1)


# --- 5. end to end on sklearn digits ------------------------------------------------------------

DIGITS_CNN = [(8, 8, 1), ("Conv", 4, 3), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Flatten",), ("Linear", 10),
              ("Regression", 0.01)]


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    X = (d.images / 16.0).reshape(-1, 8, 8, 1)
    y = d.target
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    return X[perm[:100]], y[perm[:100]], X[perm[100:600]], y[perm[100:600]]


def test_tiny_cnn_learns_digits(digits, both_paths):
    Xtr, ytr, Xte, yte = digits
    start = time.perf_counter()
    fg = create_factor_graph(DIGITS_CNN, batch_size=100, seed=0)
    untrained = (fg.predict_proba(Xte).argmax(1) == yte).mean()
    fg.train_batch(Xtr, np.eye(10)[ytr], num_training_its=3)
    proba = fg.predict_proba(Xte)
    acc = (proba.argmax(1) == yte).mean()
    elapsed = time.perf_counter() - start
    assert proba.shape == (500, 10)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-9)
    assert untrained < 0.3, untrained
    assert acc > 0.5, acc
    if not both_paths:  # the kernel path may include a one-off Numba compilation on a cold cache
        assert elapsed < 10, elapsed
