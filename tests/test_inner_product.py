"""Oracle tests for scalar rule S2, the inner product of two Gaussian variables (SPEC 4.2).

Forward: against a fixed-seed Monte Carlo simulation of ``z = sum_k a_k b_k + c`` with ``a``, ``b``,
``c`` drawn independently from their Gaussians (statistical tolerance: 5 standard errors), and against
the closed form ``mu_z = sum mu_a mu_b + mu_c``, ``var_z = sum (m2_a m2_b - mu_a^2 mu_b^2) + var_c``
evaluated naively in exact arithmetic (``tests/oracles_linear.py``).

Backward: against SPEC 4.2 written in moment form with explicit sums over the other terms (see
:func:`oracles_linear.s2_backward`).  As for S1, the library is handed the stored forward message and
must form ``var_z - V_k``; each element's tolerance is ``RTOL[dtype]`` times the error scale that the
rounding of its inputs causes in a correct implementation, with the amplification
``kappa = var_z / (var_r + rest_var)``:

* ``|d rho| <= RTOL * rho * (1 + kappa)``
* ``|d tau| <= RTOL * (1 + kappa) * |mu_other| (|mu_r| + |mu_z| + |mu_a mu_b|) / (var_r + rest_var)``

summed over outputs for the message to ``a`` (a product over outputs) and over uses when reduced.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles_linear as orc
from conftest import RTOL
from factorgraph import Gaussian
from factorgraph.equations import s2_backward, s2_forward

N_CASES = 210

HYP = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

NO_FP_ERRORS = dict(divide="raise", invalid="raise", over="raise", under="ignore")


def _loguniform(rng, lo, hi, size=None):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _lead_shape(rng, i):
    """One example (K,), a batch (n, K), or a batch of patch matrices (n, P, K)."""
    kind = i % 3
    if kind == 0:
        return ()
    if kind == 1:
        return (int(rng.integers(1, 4)),)
    return (int(rng.integers(1, 3)), int(rng.integers(1, 4)))


def _nat(mu, var, dtype):
    return (mu / var).astype(dtype), (1.0 / var).astype(dtype)


def _random_case(rng, dtype, lead, var_range=(0.05, 5.0), mean_scale=1.5, rho_r_range=(1e-2, 1e2),
                 bias=True, K=None, J=None):
    K = int(rng.integers(1, 6)) if K is None else K
    J = int(rng.integers(1, 4)) if J is None else J
    c = {}
    c["tau_a"], c["rho_a"] = _nat(rng.normal(0, mean_scale, lead + (K,)),
                                  _loguniform(rng, *var_range, lead + (K,)), dtype)
    c["tau_b"], c["rho_b"] = _nat(rng.normal(0, mean_scale, (K, J)),
                                  _loguniform(rng, *var_range, (K, J)), dtype)
    if bias:
        c["tau_c"], c["rho_c"] = _nat(rng.normal(0, mean_scale, J), _loguniform(rng, *var_range, J),
                                      dtype)
    else:
        c["tau_c"] = c["rho_c"] = None
    rho_r = _loguniform(rng, *rho_r_range, lead + (J,))
    c["tau_r"] = (rng.normal(0, 3 * mean_scale, lead + (J,)) * rho_r).astype(dtype)
    c["rho_r"] = rho_r.astype(dtype)
    return c


def _g(tau, rho):
    return Gaussian(np.asarray(tau), np.asarray(rho))


def _mom(tau, rho):
    tau = np.asarray(tau, np.float64)
    rho = np.asarray(rho, np.float64)
    return tau / rho, 1.0 / rho


def _assert_scaled(got, expected, scale, rtol, what, context=None):
    got = np.asarray(got, np.float64)
    expected = np.asarray(expected, np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite output"
    err = np.abs(got - expected)
    bad = err > rtol * scale
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(rtol * scale, 1e-300), 0)), bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} element(s) outside tolerance; worst at {i}: got {got[i]!r}, "
            f"expected {expected[i]!r}, allowed {rtol * scale[i]!r}; context {context}"
        )


def _check(msg, tau, rho, tscale, rscale, dtype, what, context=None):
    assert msg.tau.dtype == dtype and msg.rho.dtype == dtype, f"{what}: dtype {msg.tau.dtype}"
    _assert_scaled(msg.rho, rho, rscale, RTOL[dtype], what + " rho", context)
    _assert_scaled(msg.tau, tau, tscale, RTOL[dtype], what + " tau", context)


def _forward_message(c, dtype):
    mu, var = orc.s2_forward(c["tau_a"], c["rho_a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
    mu, var = orc.to_float(mu), orc.to_float(var)
    return Gaussian((mu / var).astype(dtype), (1.0 / var).astype(dtype)), mu, var


def _expected_backward(c, dtype):
    """Oracle messages (to_a (..., K), to_b unreduced (..., K, J)), their error scales, and m_z."""
    (ta, ra), (tb, rb), denom = orc.s2_backward(c["tau_a"], c["rho_a"], c["tau_b"], c["rho_b"],
                                                c["tau_r"], c["rho_r"], c["tau_c"], c["rho_c"])
    m_z, mu_z, var_z = _forward_message(c, dtype)
    mu_a, var_a = _mom(c["tau_a"], c["rho_a"])
    mu_b, var_b = _mom(c["tau_b"], c["rho_b"])
    mu_r, _ = _mom(c["tau_r"], c["rho_r"])
    mu_a, var_a = mu_a[..., :, None], var_a[..., :, None]
    kappa = var_z[..., None, :] / denom
    resid_scale = (np.abs(mu_r[..., None, :]) + np.abs(mu_z[..., None, :]) + np.abs(mu_a * mu_b)) / denom
    exp = {
        "ta": orc.to_float(ta), "ra": orc.to_float(ra),
        "tb": orc.to_float(tb), "rb": orc.to_float(rb),
        # per-use error scales (see module docstring); the message to a sums them over outputs j
        "ta_s": (np.abs(mu_b) * resid_scale * (1 + kappa)).sum(axis=-1),
        "ra_s": ((var_b + mu_b ** 2) / denom * (1 + kappa)).sum(axis=-1),
        "tb_s": np.abs(mu_a) * resid_scale * (1 + kappa),
        "rb_s": (var_a + mu_a ** 2) / denom * (1 + kappa),
        "kappa": kappa,
    }
    return exp, m_z


def _call(c, m_z, reduce):
    return s2_backward(_g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"]), m_z,
                       _g(c["tau_r"], c["rho_r"]), reduce=reduce)


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
def test_s2_forward_matches_exact_closed_form(dtype, record_cases):
    rng = np.random.default_rng(21)
    for i in range(N_CASES):
        lead = _lead_shape(rng, i)
        c = _random_case(rng, dtype, lead, bias=bool(i % 2), mean_scale=[0.3, 1.5, 20.0][i % 3])
        m_c = _g(c["tau_c"], c["rho_c"]) if c["tau_c"] is not None else None
        out = s2_forward(_g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"]), m_c)
        mu, var = orc.s2_forward(c["tau_a"], c["rho_a"], c["tau_b"], c["rho_b"], c["tau_c"], c["rho_c"])
        mu, var = orc.to_float(mu), orc.to_float(var)
        mu_a, _ = _mom(c["tau_a"], c["rho_a"])
        mu_b, _ = _mom(c["tau_b"], c["rho_b"])
        mscale = np.abs(mu_a) @ np.abs(mu_b)
        if m_c is not None:
            mscale = mscale + np.abs(_mom(c["tau_c"], c["rho_c"])[0])
        assert out.shape == lead + (c["tau_b"].shape[1],)
        _check(out, mu / var, 1.0 / var, np.abs(mu / var) + mscale / var, 1.0 / var, dtype,
               "s2_forward", context=(i, lead))
    record_cases("s2_forward", N_CASES)


MC_SETTINGS = [
    # (mu_a, var_a, mu_b, var_b, bias): all three parts of V_k are O(1)
    dict(K=4, J=3, lead=(), mean_scale=1.0, var_range=(0.5, 2.0), seed=31),
    # means dominate
    dict(K=3, J=2, lead=(), mean_scale=3.0, var_range=(0.05, 0.5), seed=32),
    # variances dominate, batch of two examples
    dict(K=5, J=2, lead=(2,), mean_scale=0.2, var_range=(1.0, 4.0), seed=33),
]


@pytest.mark.parametrize("setting", MC_SETTINGS, ids=["balanced", "means", "variances-batched"])
def test_s2_forward_matches_monte_carlo(dtype, setting, record_cases):
    """Draw a, b, c independently; compare mean and variance of z within 5 standard errors."""
    rng = np.random.default_rng(setting["seed"])
    c = _random_case(rng, dtype, setting["lead"], var_range=setting["var_range"],
                     mean_scale=setting["mean_scale"], K=setting["K"], J=setting["J"])
    out = s2_forward(_g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"]), _g(c["tau_c"], c["rho_c"]))
    mu_a, var_a = _mom(c["tau_a"], c["rho_a"])
    mu_b, var_b = _mom(c["tau_b"], c["rho_b"])
    mu_c, var_c = _mom(c["tau_c"], c["rho_c"])
    n_samples = 200_000
    K, J = mu_b.shape
    checked = 0
    for idx in np.ndindex(*setting["lead"]):
        a = mu_a[idx] + np.sqrt(var_a[idx]) * rng.standard_normal((n_samples, K))
        b = mu_b + np.sqrt(var_b) * rng.standard_normal((n_samples, K, J))
        cc = mu_c + np.sqrt(var_c) * rng.standard_normal((n_samples, J))
        z = np.einsum("nk,nkj->nj", a, b) + cc
        zbar = z.mean(axis=0)
        dev = z - zbar
        s2 = (dev ** 2).mean(axis=0)
        m4 = (dev ** 4).mean(axis=0)
        mean_lib = np.asarray(out.mean[idx], np.float64)
        var_lib = np.asarray(out.var[idx], np.float64)
        se_mean = np.sqrt(s2 / n_samples)
        se_var = np.sqrt((m4 - s2 ** 2) / n_samples)
        # float32 adds its own rounding, far below the statistical tolerance
        assert np.all(np.abs(zbar - mean_lib) <= 5 * se_mean), (zbar, mean_lib, se_mean)
        assert np.all(np.abs(s2 - var_lib) <= 5 * se_var), (s2, var_lib, se_var)
        # the tolerance is tight enough to see the smallest part of V_k
        smallest_part = np.min(var_a[idx][:, None] * var_b)
        assert 5 * se_var.max() < 0.5 * smallest_part * K or setting["mean_scale"] > 1
        checked += 1
    record_cases("s2_forward", checked)


def test_s2_forward_hand_computed():
    # z = a b + c, a ~ N(2, 1), b ~ N(-1, 3), c ~ N(0.5, 0.25):
    # mean 2 * -1 + 0.5 = -1.5; var = m2a m2b - mua^2 mub^2 + var_c = 5 * 4 - 4 + 0.25 = 16.25
    q_a = Gaussian.from_mean_var(np.array([2.0]), np.array([1.0]))
    q_b = Gaussian.from_mean_var(np.array([[-1.0]]), np.array([[3.0]]))
    m_c = Gaussian.from_mean_var(np.array([0.5]), np.array([0.25]))
    out = s2_forward(q_a, q_b, m_c)
    np.testing.assert_allclose(out.rho, [1 / 16.25], rtol=1e-15)
    np.testing.assert_allclose(out.tau, [-1.5 / 16.25], rtol=1e-15)


# ------------------------------------------------------------------------------------------------
# backward
# ------------------------------------------------------------------------------------------------
def test_s2_backward_matches_moment_form(dtype, record_cases):
    rng = np.random.default_rng(22)
    kappas = []
    for i in range(N_CASES):
        lead = _lead_shape(rng, i)
        c = _random_case(rng, dtype, lead, bias=bool(i % 4))
        exp, m_z = _expected_backward(c, dtype)
        kappas.append(exp["kappa"].ravel())
        to_a, to_b = _call(c, m_z, reduce=False)
        _check(to_a, exp["ta"], exp["ra"], exp["ta_s"], exp["ra_s"], dtype, "s2_backward to_a",
               context=(i, lead))
        _check(to_b, exp["tb"], exp["rb"], exp["tb_s"], exp["rb_s"], dtype, "s2_backward to_b",
               context=(i, lead))
    assert np.median(np.concatenate(kappas)) < 3
    record_cases("s2_backward", N_CASES)


def test_s2_backward_reduce_multiplies_weight_messages_over_uses(dtype, record_cases):
    rng = np.random.default_rng(23)
    for i in range(N_CASES):
        lead = _lead_shape(rng, i) or (1,)
        c = _random_case(rng, dtype, lead, bias=True)
        exp, m_z = _expected_backward(c, dtype)
        to_a, to_b = _call(c, m_z, reduce=True)
        K, J = c["tau_b"].shape
        assert to_b.shape == (K, J) and to_a.shape == lead + (K,)
        tb, rb, tbs, rbs = (np.zeros((K, J)) for _ in range(4))
        for idx in np.ndindex(*lead):
            tb += exp["tb"][idx]
            rb += exp["rb"][idx]
            tbs += exp["tb_s"][idx]
            rbs += exp["rb_s"][idx]
        _check(to_b, tb, rb, tbs, rbs, dtype, "s2_backward to_b reduce", context=(i, lead))
        # reduce concerns only the weights: the input messages are per example either way
        _check(to_a, exp["ta"], exp["ra"], exp["ta_s"], exp["ra_s"], dtype, "s2_backward to_a reduce",
               context=(i, lead))
    record_cases("s2_backward", N_CASES)


def test_s2_backward_edge_regimes_match_moment_form(record_cases):
    """Tiny and huge precisions, large |mean|, negative backward means (float64)."""
    dtype = np.float64
    rng = np.random.default_rng(24)
    regimes = [
        dict(var_range=(1e5, 1e8), mean_scale=1e2, rho_r_range=(1e-12, 1e-8)),   # vague marginals
        dict(var_range=(1e-10, 1e-8), mean_scale=1.0, rho_r_range=(1e6, 1e10)),  # sharp marginals
        dict(var_range=(0.5, 2.0), mean_scale=1e4, rho_r_range=(1e-6, 1e-2)),    # large means
        dict(var_range=(0.1, 10.0), mean_scale=1.0, rho_r_range=(1e-14, 1e-10)),  # almost no info back
        dict(var_range=(0.1, 10.0), mean_scale=1.0, rho_r_range=(1e8, 1e12)),    # sharp info back
    ]
    n = 0
    for r, kw in enumerate(regimes):
        for i in range(12):
            c = _random_case(rng, dtype, _lead_shape(rng, i), **kw)
            if i % 2:
                c["tau_r"] = -np.abs(c["tau_r"]) - c["rho_r"] * kw["mean_scale"] * 30
            exp, m_z = _expected_backward(c, dtype)
            to_a, to_b = _call(c, m_z, reduce=False)
            _check(to_a, exp["ta"], exp["ra"], exp["ta_s"], exp["ra_s"], dtype, "s2 edge to_a",
                   context=(r, i))
            _check(to_b, exp["tb"], exp["rb"], exp["tb_s"], exp["rb_s"], dtype, "s2 edge to_b",
                   context=(r, i))
            n += 1
    record_cases("s2_backward", n)


def test_s2_backward_hand_computed():
    # z = a1 b1 + a2 b2 + c (one output).  a1 ~ N(1, 1), a2 ~ N(2, 0.5), b1 ~ N(-1, 2), b2 ~ N(0.5, 1),
    # c ~ N(0, 1); r ~ N(3, 0.25).
    # V_1 = (2)(3) - 1 * 1 = 5, V_2 = (4.5)(1.25) - 4 * 0.25 = 4.625, mu_z = -1 + 1 + 0 = 0,
    # var_z = 5 + 4.625 + 1 = 10.625.
    # message to b1: rest var 4.625 + 1, rest mean 1; var = (0.25 + 5.625) / m2_a1 = 5.875 / 2,
    #                mean = mu_a1 (3 - 1) / m2_a1 = 1
    # message to a1: var = 5.875 / m2_b1 = 5.875 / 3, mean = mu_b1 (3 - 1) / m2_b1 = -2 / 3
    q_a = Gaussian.from_mean_var(np.array([1.0, 2.0]), np.array([1.0, 0.5]))
    q_b = Gaussian.from_mean_var(np.array([[-1.0], [0.5]]), np.array([[2.0], [1.0]]))
    m_z = Gaussian.from_mean_var(np.array([0.0]), np.array([10.625]))
    r = Gaussian.from_mean_var(np.array([3.0]), np.array([0.25]))
    to_a, to_b = s2_backward(q_a, q_b, m_z, r, reduce=False)
    np.testing.assert_allclose(to_b.rho[0, 0], 2 / 5.875, rtol=1e-14)
    np.testing.assert_allclose(to_b.tau[0, 0], 1 * 2 / 5.875, rtol=1e-14)
    np.testing.assert_allclose(to_a.rho[0], 3 / 5.875, rtol=1e-14)
    np.testing.assert_allclose(to_a.tau[0], (-2 / 3) * 3 / 5.875, rtol=1e-14)


@pytest.mark.parametrize("lead", [(), (3,), (2, 2)])
def test_s2_backward_uniform_backward_message_gives_uniform_exactly(dtype, lead):
    rng = np.random.default_rng(25)
    c = _random_case(rng, dtype, lead, bias=True)
    q_a, q_b, m_c = _g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"]), _g(c["tau_c"], c["rho_c"])
    with np.errstate(all="raise"):
        m_z = s2_forward(q_a, q_b, m_c)
        r = Gaussian.uniform(m_z.shape, dtype)
        for reduce in (False, True):
            to_a, to_b = s2_backward(q_a, q_b, m_z, r, reduce=reduce)
            for g in (to_a, to_b):
                assert g.tau.dtype == dtype
                assert np.all(g.tau == 0) and np.all(g.rho == 0)


def test_s2_backward_rho_r_to_zero_converges_to_uniform(record_cases):
    rng = np.random.default_rng(26)
    c = _random_case(rng, np.float64, (2,), bias=True)
    mu_r = np.array([[4.0, -3.0, 1.0]])[:, : c["tau_b"].shape[1]] * np.ones(c["tau_r"].shape)
    prev = None
    n = 0
    with np.errstate(all="raise"):
        for e in range(1, 301, 9):
            c["rho_r"] = np.full(mu_r.shape, 10.0 ** -e)
            c["tau_r"] = mu_r * c["rho_r"]
            exp, m_z = _expected_backward(c, np.float64)
            to_a, to_b = _call(c, m_z, reduce=False)
            _check(to_b, exp["tb"], exp["rb"], exp["tb_s"], exp["rb_s"], np.float64, "s2 limit to_b", e)
            _check(to_a, exp["ta"], exp["ra"], exp["ta_s"], exp["ra_s"], np.float64, "s2 limit to_a", e)
            if prev is not None:
                assert np.all(to_b.rho <= prev[1].rho) and np.all(to_a.rho <= prev[0].rho)
            prev = (to_a, to_b)
            n += 1
        assert np.all(prev[1].rho < 1e-290) and np.all(prev[0].rho < 1e-290)
        to_a, to_b = _call(dict(c, tau_r=0 * mu_r, rho_r=0 * mu_r), m_z, reduce=True)
        assert np.all(to_a.tau == 0) and np.all(to_a.rho == 0)
        assert np.all(to_b.tau == 0) and np.all(to_b.rho == 0)
    record_cases("s2_backward", n)


def test_s2_backward_swapping_operands_swaps_messages(dtype, record_cases):
    """For one output z = sum_k a_k b_k + c, exchanging a and b exchanges the two messages."""
    rng = np.random.default_rng(27)
    n = 0
    for i in range(60):
        c = _random_case(rng, dtype, (), J=1, bias=bool(i % 2))
        q_a, q_b = _g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"])
        m_z, _, _ = _forward_message(c, dtype)
        r = _g(c["tau_r"], c["rho_r"])
        to_a, to_b = s2_backward(q_a, q_b, m_z, r, reduce=False)
        # swapped: the inputs are the old weights, the weight column holds the old inputs
        q_a2 = Gaussian(q_b.tau[:, 0].copy(), q_b.rho[:, 0].copy())
        q_b2 = Gaussian(q_a.tau[:, None].copy(), q_a.rho[:, None].copy())
        to_a2, to_b2 = s2_backward(q_a2, q_b2, m_z, r, reduce=False)
        # the two evaluations differ only in the order of commutative operations
        rtol = 64 * np.finfo(dtype).eps
        exp, _ = _expected_backward(c, dtype)
        np.testing.assert_allclose(to_a2.rho, to_b.rho[:, 0], rtol=rtol)
        np.testing.assert_allclose(to_a2.tau, to_b.tau[:, 0], rtol=rtol, atol=rtol * exp["tb_s"].max())
        np.testing.assert_allclose(to_b2.rho[:, 0], to_a.rho, rtol=rtol)
        np.testing.assert_allclose(to_b2.tau[:, 0], to_a.tau, rtol=rtol, atol=rtol * exp["ta_s"].max())
        n += 1
    record_cases("s2_backward", n)


def test_s2_backward_swap_symmetry_in_a_batch():
    """Batched version: example n's input vector against a single weight column, swapped per example."""
    rng = np.random.default_rng(28)
    c = _random_case(rng, np.float64, (4,), J=1)
    q_a, q_b = _g(c["tau_a"], c["rho_a"]), _g(c["tau_b"], c["rho_b"])
    m_z, _, _ = _forward_message(c, np.float64)
    r = _g(c["tau_r"], c["rho_r"])
    to_a, to_b = s2_backward(q_a, q_b, m_z, r, reduce=False)
    for n in range(4):
        to_a2, to_b2 = s2_backward(
            Gaussian(q_b.tau[:, 0].copy(), q_b.rho[:, 0].copy()),
            Gaussian(q_a.tau[n][:, None].copy(), q_a.rho[n][:, None].copy()),
            m_z[n], r[n], reduce=False)
        np.testing.assert_allclose(to_a2.rho, to_b.rho[n, :, 0], rtol=1e-13)
        np.testing.assert_allclose(to_a2.tau, to_b.tau[n, :, 0], rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(to_b2.rho[:, 0], to_a.rho[n], rtol=1e-13)
        np.testing.assert_allclose(to_b2.tau[:, 0], to_a.tau[n], rtol=1e-13, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# properties (hypothesis)
# ------------------------------------------------------------------------------------------------
_prec = st.floats(1e-8, 1e8)
_mean = st.floats(-1e3, 1e3)


@st.composite
def _s2_inputs(draw, rho_r=st.floats(0.0, 1e8)):
    K = draw(st.integers(1, 4))
    J = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))

    def arr(el, shape):
        size = int(np.prod(shape))
        return np.array(draw(st.lists(el, min_size=size, max_size=size))).reshape(shape)

    rho_a, mu_a = arr(_prec, (n, K)), arr(_mean, (n, K))
    rho_b, mu_b = arr(_prec, (K, J)), arr(_mean, (K, J))
    rho_c, mu_c = arr(_prec, (J,)), arr(_mean, (J,))
    rr, mr = arr(rho_r, (n, J)), arr(_mean, (n, J))
    return (Gaussian(mu_a * rho_a, rho_a), Gaussian(mu_b * rho_b, rho_b), Gaussian(mu_c * rho_c, rho_c),
            Gaussian(mr * rr, rr))


@HYP
@given(_s2_inputs())
def test_s2_backward_uniform_in_uniform_out_property(dtype, record_cases, inp):
    q_a, q_b, m_c, _ = (g.astype(dtype) for g in inp)
    with np.errstate(**NO_FP_ERRORS):
        m_z = s2_forward(q_a, q_b, m_c)
        to_a, to_b = s2_backward(q_a, q_b, m_z, Gaussian.uniform(m_z.shape, dtype), reduce=True)
    for g in (to_a, to_b):
        assert g.tau.dtype == dtype
        assert np.all(g.tau == 0) and np.all(g.rho == 0)
    record_cases("s2_backward", 1)


@HYP
@given(_s2_inputs())
def test_s2_outputs_are_finite_and_proper_over_wide_ranges(inp):
    q_a, q_b, m_c, r = inp
    with np.errstate(**NO_FP_ERRORS):
        m_z = s2_forward(q_a, q_b, m_c)
        to_a, to_b = s2_backward(q_a, q_b, m_z, r, reduce=True)
    for g in (m_z, to_a, to_b):
        assert np.all(np.isfinite(g.tau)) and np.all(np.isfinite(g.rho)) and np.all(g.rho >= 0)
    # D >= 1: no message is sharper than m2(other) * rho_r summed over its uses
    m2a = q_a.var + q_a.mean ** 2
    m2b = q_b.var + q_b.mean ** 2
    assert np.all(to_b.rho <= (m2a[:, :, None] * r.rho[:, None, :]).sum(axis=0) * (1 + 1e-12))
    assert np.all(to_a.rho <= (m2b[None] * r.rho[:, None, :]).sum(axis=-1) * (1 + 1e-12))
