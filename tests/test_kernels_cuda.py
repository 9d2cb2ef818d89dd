"""The Numba CUDA kernels equal the CPU kernels / NumPy reference.

Without a GPU they run in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set by conftest.py before
numba.cuda is imported); on a GPU machine run ``FACTORGRAPH_REAL_GPU=1 pytest tests/test_kernels_cuda.py``.
Host arrays are passed directly (the simulator works on them; on a real GPU Numba copies them in and out).
Sizes are tiny because the simulator interprets every thread in Python.
"""

import os

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from factorgraph import equations as eq  # noqa: E402
from factorgraph.gaussian import Gaussian  # noqa: E402
from factorgraph.kernels import leaky_cpu, linear_cpu, patches_cpu  # noqa: E402

from closeness import KTOL, assert_messages_close  # noqa: E402

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}
#: the simulator runs Python's math and agrees to rounding; a real GPU's libdevice exp/log/erfc differ in the
#: last bits, which the truncation and tolerant-division cancellations amplify
SIGNAL_RTOL = 1e-8 if os.environ.get("FACTORGRAPH_REAL_GPU") == "1" else 1e-12


@pytest.fixture(scope="module")
def cuda_mods():
    from factorgraph.kernels import leaky_cuda, linear_cuda, patches_cuda, signals_cuda

    return linear_cuda, leaky_cuda, patches_cuda, signals_cuda


def _weights(rng, K, J, dtype):
    m_t = rng.normal(0, 0.3, (K, J)).astype(dtype)
    m_r = rng.uniform(0, 1, (K, J)).astype(dtype)
    q_t = (m_t + rng.normal(0, 1, (K, J))).astype(dtype)
    q_r = (m_r + rng.uniform(1, 3, (K, J))).astype(dtype)
    return q_t, q_r, m_t, m_r


def _copy(*arrays):
    return [a.copy() for a in arrays]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_const_cuda_equals_cpu(cuda_mods, dtype, record_cases):
    lin_cuda = cuda_mods[0]
    rng = np.random.default_rng(1)
    K, J = 5, 4
    x = rng.normal(size=K).astype(dtype)
    x[1] = 0
    W = _weights(rng, K, J, dtype)
    C = [a[0] for a in _weights(rng, 1, J, dtype)]
    r_t, r_r = rng.normal(size=J).astype(dtype), rng.uniform(0.1, 2, J).astype(dtype)
    outs = []
    for mod in ("cpu", "cuda"):
        w, c = _copy(*W), _copy(*C)
        mu, var, counts = np.zeros(J, dtype), np.zeros(J, dtype), np.zeros(7, np.int64)
        if mod == "cpu":
            linear_cpu.linear_const_fwd(x, *w, *c, mu, var, counts)
            linear_cpu.linear_const_bwd(x, *w, w[0], w[1], *c, c[0], c[1], 1.0, mu, var, r_t, r_r, counts)
        else:
            lin_cuda.linear_const_fwd(x, *w, *c, mu, var, counts)
            lin_cuda.linear_const_bwd(x, *w, w[0], w[1], *c, c[0], c[1], 1.0, mu, var, r_t, r_r, counts)
        outs.append([mu, var] + w + c + [counts])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    record_cases("cuda linear_const", 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_linear_var_cuda_equals_cpu(cuda_mods, dtype, record_cases):
    lin_cuda = cuda_mods[0]
    rng = np.random.default_rng(2)
    K, J = 4, 3
    in_t, in_r = rng.normal(size=K).astype(dtype), rng.uniform(0.2, 2, K).astype(dtype)
    mx_t, mx_r = rng.normal(0, .2, K).astype(dtype), rng.uniform(0, .5, K).astype(dtype)
    W = _weights(rng, K, J, dtype)
    C = [a[0] for a in _weights(rng, 1, J, dtype)]
    r_t, r_r = rng.normal(size=J).astype(dtype), rng.uniform(0.1, 2, J).astype(dtype)
    outs = []
    for mod in ("cpu", "cuda"):
        w, c = _copy(*W), _copy(*C)
        x_mu, x_var, tx, rx = (np.zeros(K, dtype) for _ in range(4))
        mu, var, counts = np.zeros(J, dtype), np.zeros(J, dtype), np.zeros(7, np.int64)
        if mod == "cpu":
            linear_cpu.linear_var_fwd(in_t, in_r, mx_t, mx_r, w[0], w[1], *c, x_mu, x_var, mu, var, counts)
            linear_cpu.linear_var_bwd(x_mu, x_var, *w, w[0], w[1], *c, c[0], c[1], 1.0, mu, var, r_t, r_r, tx, rx,
                                      counts)
        else:
            lin_cuda.linear_var_fwd(in_t, in_r, mx_t, mx_r, w[0], w[1], *c, x_mu, x_var, mu, var, counts)
            lin_cuda.linear_var_bwd(x_mu, x_var, *w, w[0], w[1], *c, c[0], c[1], 1.0, mu, var, r_t, r_r, tx, rx,
                                    counts)
        outs.append([x_mu, x_var, mu, var, tx, rx] + w + c + [counts])
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    record_cases("cuda linear_var", 1)


def test_leaky_cuda_equals_cpu_and_counts_guards(cuda_mods, record_cases):
    leaky_cuda = cuda_mods[1]
    rng = np.random.default_rng(3)
    n = 64
    a = Gaussian.from_mean_var(rng.normal(0, 3, n), 10 ** rng.uniform(-2, 1, n))
    z = Gaussian.from_mean_var(rng.normal(0, 3, n), 10 ** rng.uniform(-2, 1, n))
    z.tau[:6], z.rho[:6] = 0, 0
    z.tau[6:9], z.rho[6:9] = -1e-9, 1e-9  # backward fallback region
    for name in ("leaky_fwd_moment_match", "leaky_fwd_marginal", "leaky_bwd_marginal"):
        args = (a.tau, a.rho, 0.1) if name == "leaky_fwd_moment_match" else (a.tau, a.rho, z.tau, z.rho, 0.1)
        res = []
        for mod in (leaky_cpu, leaky_cuda):
            out_t, out_r, counts = np.zeros(n), np.zeros(n), np.zeros(5, np.int64)
            getattr(mod, name)(*args, out_t, out_r, counts)
            res.append((out_t, out_r, counts))
        np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_array_equal(res[0][2], res[1][2])
        record_cases(f"cuda {name}", n)
    # the guards did fire in this draw, so the counter comparison above is not vacuous
    assert res[1][2][leaky_cpu.L_BWD_FALLBACK] > 0


def test_leaky_chunk_kernels_cuda_equal_cpu(cuda_mods, record_cases):
    """The chunk kernels that read and write per-slot cache rows (``leaky_*_marginal_slots``): outputs,
    guard counts and the cache rows written as on the CPU."""
    leaky_cuda = cuda_mods[1]
    rng = np.random.default_rng(5)
    slots, chunk, units = 5, 3, 8
    rows = np.array([4, 0, 2])

    def msgs(shape):
        return Gaussian.from_mean_var(rng.normal(0, 3, shape), 10 ** rng.uniform(-2, 1, shape))

    cache_a, cache_z, fresh = msgs((slots, units)), msgs((slots, units)), msgs((chunk, units))
    cache_z.tau[0, :3], cache_z.rho[0, :3] = 0, 0  # uniform backward messages: the forward falls back
    for name in ("leaky_fwd_marginal_slots", "leaky_bwd_marginal_slots"):
        res = []
        for mod in (leaky_cpu, leaky_cuda):
            store, other = (cache_z.copy(), cache_a.copy()) if "bwd" in name else (cache_a.copy(), cache_z.copy())
            out_t, out_r, counts = np.zeros(chunk * units), np.zeros(chunk * units), np.zeros(5, np.int64)
            getattr(mod, name)(fresh.tau.reshape(-1), fresh.rho.reshape(-1), store.tau.reshape(-1),
                               store.rho.reshape(-1), other.tau.reshape(-1), other.rho.reshape(-1), rows, 0.1, out_t,
                               out_r, counts)
            res.append((out_t, out_r, counts, store))
        np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_array_equal(res[0][2], res[1][2])
        np.testing.assert_array_equal(res[0][3].tau, res[1][3].tau)
        np.testing.assert_array_equal(res[0][3].rho, res[1][3].rho)
        np.testing.assert_array_equal(res[1][3].tau[rows], fresh.tau)
        assert res[1][2].sum() > 0
        record_cases(f"cuda {name}", chunk * units)


def test_patch_kernels_cuda_equal_cpu_and_reference(cuda_mods, record_cases):
    patches_cuda = cuda_mods[2]
    rng = np.random.default_rng(4)
    P, D, F = 6, 5, 3
    A = rng.normal(size=(P, D))
    A[0, 1] = 0
    b = Gaussian.from_mean_var(rng.normal(size=(D, F)), rng.uniform(.2, 1, (D, F)))
    a = Gaussian.from_mean_var(rng.normal(size=(P, D)), rng.uniform(.2, 1, (P, D)))
    f = eq.s2_forward(a, b)
    r = Gaussian(rng.normal(size=(P, F)), rng.uniform(.1, 2, (P, F)))
    ref_a, ref_b = eq.s2_backward(a, b, f, r)
    outs = {}
    for name, mod in (("cpu", patches_cpu), ("cuda", patches_cuda)):
        ta, ra, tb, rb = np.zeros((P, D)), np.zeros((P, D)), np.zeros((D, F)), np.zeros((D, F))
        mod.s2_patches_bwd(a.mean, a.var, b.mean, b.var, f.mean, f.var, r.tau, r.rho, ta, ra, tb, rb,
                           np.zeros(1, np.int64))
        outs[name] = (ta, ra, tb, rb)
    for name, got in outs.items():
        assert_messages_close(got[0], got[1], ref_a.tau, ref_a.rho, KTOL[np.float64], a.tau, a.rho, f"{name} to a")
        assert_messages_close(got[2], got[3], ref_b.tau, ref_b.rho, KTOL[np.float64], b.tau, b.rho, f"{name} to b")
    fs = eq.s1_forward(A, b)
    ref_s1 = eq.s1_backward_to_b(A, b, fs, r)
    t, rr = np.zeros((D, F)), np.zeros((D, F))
    patches_cuda.s1_patches_bwd(A, b.mean, b.var, fs.mean, fs.var, r.tau, r.rho, t, rr, np.zeros(1, np.int64))
    assert_messages_close(t, rr, ref_s1.tau, ref_s1.rho, KTOL[np.float64], b.tau, b.rho, "cuda S1 to b")
    record_cases("cuda patches", 1)


@pytest.mark.parametrize("geometry", [((4, 5, 2), 3, 1, 1, "zeros"), ((6, 4, 1), 2, 2, 0, "zeros"),
                                      ((4, 4, 2), 3, 1, 2, "mirror")])
def test_gather_and_fold_kernels_equal_the_reference(cuda_mods, geometry, dtype):
    """im2col gather (zero padding -> point mass at 0) and the deterministic fold, CPU and CUDA kernels,
    with a leading example axis, equal ``gather_messages`` / ``gather_constants`` / ``fold_messages``."""
    patches_cuda = cuda_mods[2]
    shape, k, stride, pad, mode = geometry
    rng = np.random.default_rng(5)
    src, _ = eq.patch_index(shape, k, stride, pad, mode)
    L, n = 3, int(np.prod(shape))
    img = Gaussian(rng.normal(size=(L,) + shape), rng.uniform(0.1, 2, (L,) + shape)).astype(dtype)
    ref_g = eq.gather_messages(img, src)
    ref_c = eq.gather_constants(img.tau, src)
    msg = Gaussian(rng.normal(size=(L,) + src.shape), rng.uniform(0, 1, (L,) + src.shape)).astype(dtype)
    ref_f = eq.fold_messages(msg, src, shape)
    offsets, entries = eq.fold_plan(src, n)
    for mod in (patches_cpu, patches_cuda):
        for values, pad_value, want in [(img.tau, 0.0, ref_g.tau), (img.rho, np.inf, ref_g.rho),
                                        (img.tau, 0.0, ref_c)]:
            out = np.full((L,) + src.shape, np.nan, dtype)
            mod.gather(values.reshape(L, n), src, dtype(pad_value), out)
            np.testing.assert_array_equal(out, want)
        out_t, out_r = np.zeros((L, n), dtype), np.zeros((L, n), dtype)
        mod.fold(msg.tau.reshape(L, -1), msg.rho.reshape(L, -1), (src, offsets, entries), out_t, out_r)
        # a sum in another order: relative to the sum of the magnitudes folded
        magnitude = eq.fold_messages(Gaussian(np.abs(msg.tau), msg.rho), src, shape).tau
        assert_messages_close(out_t.reshape((L,) + shape), out_r.reshape((L,) + shape), ref_f.tau, ref_f.rho,
                              KTOL[dtype], magnitude, what=mod.__name__)


def test_signal_kernels_cuda_equal_cpu(cuda_mods, record_cases):
    from factorgraph.kernels import signals_cpu

    signals_cuda = cuda_mods[3]
    rng = np.random.default_rng(6)
    n, C = 3, 4
    m = Gaussian.from_mean_var(rng.normal(0, 2, (n, C)), 10 ** rng.uniform(-2, 1, (n, C)))
    y = rng.integers(0, C, n)
    for name, args in (("argmax_bwd", (0.3, 0.1, True)), ("softmax_bwd", (signals_cpu.GL_X, signals_cpu.GL_W))):
        res = []
        for mod in (signals_cpu, signals_cuda):
            out_t, out_r, counts = np.zeros((n, C)), np.zeros((n, C)), np.zeros(4, np.int64)
            getattr(mod, name)(m.tau, m.rho, y, *args, out_t, out_r, counts)
            res.append((out_t, out_r, counts))
        np.testing.assert_allclose(res[0][0], res[1][0], rtol=SIGNAL_RTOL, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(res[0][1], res[1][1], rtol=SIGNAL_RTOL, atol=1e-14, err_msg=name)
        np.testing.assert_array_equal(res[0][2], res[1][2])
        record_cases(f"cuda {name}", n * C)
    out_cpu, out_gpu = np.zeros((n, C)), np.zeros((n, C))
    signals_cpu.argmax_probs(m.tau, m.rho, 0.3, out_cpu)
    signals_cuda.argmax_probs(m.tau, m.rho, 0.3, out_gpu)
    np.testing.assert_allclose(out_gpu, out_cpu, rtol=SIGNAL_RTOL)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_cuda_equals_cpu(dtype, record_cases):
    """Max-pool prediction, training forward (with the argmax probabilities) and backward (with the
    guard counts) on the CUDA kernels equal the CPU kernels."""
    from factorgraph.kernels import pool_cpu, pool_cuda

    rng = np.random.default_rng(7)
    shape, out_shape = (2, 5, 4, 2), (2, 2, 2, 2)  # an incomplete border row of windows
    m = Gaussian.from_mean_var(rng.normal(0, 2, shape), 10 ** rng.uniform(-3, 1, shape)).astype(dtype)
    m.rho[0, 0, 0, 0] = 1e-9  # below MIN_CAVITY_PRECISION
    r = Gaussian(rng.normal(0, 1, out_shape), rng.uniform(0, 3, out_shape)).astype(dtype)
    outs = []
    for mod in (pool_cpu, pool_cuda):
        pred = [np.zeros(out_shape, dtype) for _ in range(2)]
        mod.maxpool_predict(m.tau, m.rho, 2, 0.3, *pred)
        f = [np.zeros(out_shape, dtype) for _ in range(2)]
        P = np.zeros(shape, dtype)
        mod.maxpool_fwd(m.tau, m.rho, 2, 0.3, *f, P)
        b, counts = [np.zeros(shape, dtype) for _ in range(2)], np.zeros(2, np.int64)
        mod.maxpool_bwd(m.tau, m.rho, P, *f, r.tau, r.rho, 2, *b, counts)
        outs.append((pred, f, P, b, counts))
    rtol = SIGNAL_RTOL if dtype == np.float64 else KTOL[dtype]
    (pred0, f0, P0, b0, c0), (pred1, f1, P1, b1, c1) = outs
    assert_messages_close(*pred1, *pred0, rtol, what="maxpool predict")
    assert_messages_close(*f1, *f0, rtol, what="maxpool forward")
    np.testing.assert_allclose(P1, P0, rtol=rtol, atol=0)
    assert_messages_close(*b1, *b0, rtol, m.tau, m.rho, what="maxpool backward")
    np.testing.assert_array_equal(c1, c0)
    assert c0[pool_cpu.P_SMALL] == 1
    record_cases("cuda maxpool", 3 * 8)


@pytest.mark.parametrize("damping, kappa", [(1.0, -1.0), (0.4, -1.0), (1.0, 0.5), (0.6, 1.5)])
def test_site_replacement_cuda_equals_cpu(dtype, damping, kappa, record_cases):
    """``sites_cuda.replace_site`` against ``sites_cpu.replace_site``: the same marginal, site message and
    count of bounded weights (zero-precision marginals and uniform new messages included)."""
    from factorgraph.kernels import sites_cpu, sites_cuda

    rng = np.random.default_rng(21)
    n = 300
    q_t, q_r = rng.normal(0, 3, n).astype(dtype), (10 ** rng.uniform(-2, 2, n)).astype(dtype)
    s_t, s_r = rng.normal(0, 1, n).astype(dtype), rng.uniform(0, 1, n).astype(dtype)
    new_t, new_r = rng.normal(0, 30, n).astype(dtype), (10 ** rng.uniform(-3, 2, n)).astype(dtype)
    q_r[:5], new_r[5:10], new_t[5:10] = 0, 0, 0
    cpu, gpu = _copy(q_t, q_r, s_t, s_r), _copy(q_t, q_r, s_t, s_r)
    scalars = (dtype(damping), dtype(kappa))
    n_cpu = sites_cpu.replace_site(*cpu, new_t, new_r, *scalars)
    counts = np.zeros(1, np.int64)
    sites_cuda.replace_site(*gpu, new_t, new_r, *scalars, counts)
    assert counts[0] == n_cpu and (n_cpu > 0) == (kappa > 0)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, **TOL[dtype])
    record_cases("cuda replace_site", n)
