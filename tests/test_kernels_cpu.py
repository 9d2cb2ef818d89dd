"""The compiled CPU kernels compute the NumPy reference (the equation library) element by element, to
``closeness.KTOL`` (1e-12 in float64, 1e-5 in float32) of the marginal each message forms."""

import contextlib

import numpy as np
import pytest

from factorgraph import equations as eq
from factorgraph import guards, kernels
from factorgraph.gaussian import Gaussian
from factorgraph.kernels import leaky_cpu, linear_cpu
from layers import create_factor_graph

from closeness import KTOL, assert_messages_close, assert_moments_close


def _rand_gauss(rng, shape, dtype, lo=0.2, hi=5.0):
    rho = rng.uniform(lo, hi, shape)
    mu = rng.normal(0, 2, shape)
    return Gaussian((mu * rho).astype(dtype), rho.astype(dtype))


@pytest.mark.parametrize("seed", range(5))
def test_linear_const_kernels_equal_s1(seed, dtype, record_cases):
    rng = np.random.default_rng(seed)
    K, J = 7, 4
    x = rng.normal(size=K).astype(dtype)
    x[2] = 0
    m_w, m_c = _rand_gauss(rng, (K, J), dtype, 0.1, 1), _rand_gauss(rng, J, dtype, 0.1, 1)
    q_w = Gaussian(m_w.tau + rng.normal(size=(K, J)).astype(dtype), m_w.rho + rng.uniform(1, 3, (K, J)).astype(dtype))
    q_c = Gaussian(m_c.tau + rng.normal(size=J).astype(dtype), m_c.rho + rng.uniform(1, 3, J).astype(dtype))
    r = _rand_gauss(rng, J, dtype, 0.5, 3)
    cav_w, cav_c = q_w / m_w, q_c / m_c
    ref_f = eq.s1_forward(x, cav_w, cav_c)
    ref_w = eq.s1_backward_to_b(x, cav_w, ref_f, r)
    ref_c = eq.s1_backward_to_bias(cav_c, ref_f, r)
    mu, var, counts = np.zeros(J, dtype), np.zeros(J, dtype), np.zeros(7, np.int64)
    qw, mw, qc, mc = q_w.copy(), m_w.copy(), q_c.copy(), m_c.copy()
    linear_cpu.linear_const_fwd(x, qw.tau, qw.rho, mw.tau, mw.rho, qc.tau, qc.rho, mc.tau, mc.rho, mu, var, counts)
    tol = KTOL[dtype]
    assert_moments_close(mu, var, ref_f.mean, ref_f.var, tol, "forward")
    linear_cpu.linear_const_bwd(x, qw.tau, qw.rho, mw.tau, mw.rho, qw.tau, qw.rho, qc.tau, qc.rho, mc.tau, mc.rho,
                                qc.tau, qc.rho, 1.0, mu, var, r.tau, r.rho, counts)
    assert_messages_close(mw.tau, mw.rho, ref_w.tau, ref_w.rho, tol, cav_w.tau, cav_w.rho, "weights")
    assert_messages_close(mc.tau, mc.rho, ref_c.tau, ref_c.rho, tol, cav_c.tau, cav_c.rho, "bias")
    # incremental marginal: q + new - old
    assert_messages_close(qw.tau, qw.rho, q_w.tau + ref_w.tau - m_w.tau, q_w.rho + ref_w.rho - m_w.rho, tol,
                          what="marginal")
    assert counts[linear_cpu.G_IMPROPER] == 0
    record_cases("kernel linear_const", 1)


@pytest.mark.parametrize("seed", range(5))
def test_linear_var_kernels_equal_s2(seed, dtype, record_cases):
    rng = np.random.default_rng(seed)
    K, J = 6, 5
    m_in, m_to_x = _rand_gauss(rng, K, dtype), _rand_gauss(rng, K, dtype, 0.0, 0.5)
    m_w, m_c = _rand_gauss(rng, (K, J), dtype, 0.1, 1), _rand_gauss(rng, J, dtype, 0.1, 1)
    q_w = Gaussian(m_w.tau + rng.normal(size=(K, J)).astype(dtype), m_w.rho + rng.uniform(1, 3, (K, J)).astype(dtype))
    q_c = Gaussian(m_c.tau + rng.normal(size=J).astype(dtype), m_c.rho + rng.uniform(1, 3, J).astype(dtype))
    r = _rand_gauss(rng, J, dtype, 0.5, 3)
    x_hat = (m_in * m_to_x).clamp_min_rho(1e-8)
    cav_c = q_c / m_c
    ref_f = eq.s2_forward(x_hat, q_w, cav_c)
    ref_x, ref_w = eq.s2_backward(x_hat, q_w, ref_f, r)
    ref_x = ref_x.clamp_min_rho(1e-8)
    counts = np.zeros(7, np.int64)
    x_mu, x_var, mu, var = (np.zeros(n, dtype) for n in (K, K, J, J))
    qw, mw, qc, mc = q_w.copy(), m_w.copy(), q_c.copy(), m_c.copy()
    linear_cpu.linear_var_fwd(m_in.tau, m_in.rho, m_to_x.tau, m_to_x.rho, qw.tau, qw.rho, qc.tau, qc.rho, mc.tau,
                              mc.rho, x_mu, x_var, mu, var, counts)
    tol = KTOL[dtype]
    assert_moments_close(mu, var, ref_f.mean, ref_f.var, tol, "forward")
    tx, rx = np.zeros(K, dtype), np.zeros(K, dtype)
    linear_cpu.linear_var_bwd(x_mu, x_var, qw.tau, qw.rho, mw.tau, mw.rho, qw.tau, qw.rho, qc.tau, qc.rho, mc.tau,
                              mc.rho, qc.tau, qc.rho, 1.0, mu, var,
                              r.tau, r.rho, tx, rx, counts)
    assert_messages_close(tx, rx, ref_x.tau, ref_x.rho, tol, m_in.tau, m_in.rho, "input")
    assert_messages_close(mw.tau, mw.rho, ref_w.tau, ref_w.rho, tol, q_w.tau, q_w.rho, "weights")
    record_cases("kernel linear_var", 1)


def _leaky_inputs(rng, n, dtype):
    a = Gaussian.from_mean_var(rng.normal(0, 3, n), 10 ** rng.uniform(-3, 2, n))
    z = Gaussian.from_mean_var(rng.normal(0, 3, n), 10 ** rng.uniform(-3, 2, n))
    z.rho[: n // 10] = 0  # uniform backward messages: fallbacks must agree too
    z.tau[: n // 10] = 0
    return a.astype(dtype), z.astype(dtype)


@pytest.mark.parametrize("n, threaded", [(400, False), (2400, False), (2400, True)])
def test_leaky_kernels_equal_reference_and_count_the_same_guards(n, threaded, record_cases):
    """One thread, and all threads (inside ``kernels.threaded()``, from ``leaky_cpu.THREADS_MIN`` units).
    Of the 2400 random cases two backward messages (input N(2.6, 0.011) against a backward N(-2.1, 0.004):
    the tilted density sits 33 sigma out, where the log-cdf switches to its series) differ from the
    reference by 2e-9 of their own size, but by less than 1e-12 of the marginal they form with the input's
    message (``closeness``); the threaded kernel equals the serial one exactly."""
    rng = np.random.default_rng(7)
    a, z = _leaky_inputs(rng, n, np.float64)
    for name, ref_fn, kern, args, base in [
        ("moment_match", lambda: eq.leaky_forward_moment_match(a, 0.1), leaky_cpu.leaky_fwd_moment_match,
         (a.tau, a.rho, 0.1), None),
        ("forward", lambda: eq.leaky_forward_marginal(a, z, 0.1), leaky_cpu.leaky_fwd_marginal,
         (a.tau, a.rho, z.tau, z.rho, 0.1), z),
        ("backward", lambda: eq.leaky_backward_marginal(a, z, 0.1).clamp_min_rho(1e-8),
         leaky_cpu.leaky_bwd_marginal, (a.tau, a.rho, z.tau, z.rho, 0.1), a),
    ]:
        guards.reset()
        ref = ref_fn()
        ref_counts = guards.counts()
        out_t, out_r, counts = np.zeros(n), np.zeros(n), np.zeros(5, np.int64)
        with kernels.threaded() if threaded else contextlib.nullcontext():
            kern(*args, out_t, out_r, counts)
        assert_messages_close(out_t, out_r, ref.tau, ref.rho, KTOL[np.float64], *(
            (base.tau, base.rho) if base is not None else (0.0, 0.0)), what=name)
        if threaded:
            serial_t, serial_r = np.zeros(n), np.zeros(n)
            kern(*args, serial_t, serial_r, np.zeros(5, np.int64))
            np.testing.assert_array_equal(out_t, serial_t)
            np.testing.assert_array_equal(out_r, serial_r)
        for k, gname in enumerate(leaky_cpu.GUARD_NAMES):
            assert counts[k] == ref_counts.get(gname, 0), (name, gname)
        record_cases(f"kernel leaky {name}", n)


@pytest.mark.parametrize("units, chunk, threaded", [(300, 5, False), (700, 6, True), (84, 40, True)])
def test_leaky_chunk_kernels_equal_the_flat_kernels_on_gathered_rows(units, chunk, threaded, dtype):
    """``leaky_*_marginal_slots`` (the chunk's fresh messages stored in, and the other messages read from, the
    slots' rows of per-slot caches inside the kernel) give exactly what the flat kernels give on gathered
    copies, count the same guards, write the fresh messages to the chunk's rows of the store and nothing
    else; threaded they cut each row into parts (700 units in parts of 64, 84 units in halves)."""
    rng = np.random.default_rng(units)
    slots = 3 * chunk
    rows = rng.permutation(slots)[:chunk]
    a, z = (g.reshape(3, chunk, units) for g in _leaky_inputs(rng, 3 * chunk * units, np.float64))
    cache_a = Gaussian(a.tau.reshape(slots, units).astype(dtype), a.rho.reshape(slots, units).astype(dtype))
    cache_z = Gaussian(z.tau.reshape(slots, units).astype(dtype), z.rho.reshape(slots, units).astype(dtype))
    fresh_a, fresh_z = a[0].astype(dtype), z[1].astype(dtype)
    for backward, slot_fn, flat_fn in (
            (False, leaky_cpu.leaky_fwd_marginal_slots, leaky_cpu.leaky_fwd_marginal),
            (True, leaky_cpu.leaky_bwd_marginal_slots, leaky_cpu.leaky_bwd_marginal)):
        fresh = fresh_z if backward else fresh_a
        store, other = (cache_z.copy(), cache_a.copy()) if backward else (cache_a.copy(), cache_z.copy())
        gathered = other[rows]
        want_t, want_r, want_c = *np.empty((2, chunk, units), dtype), np.zeros(5, int)
        args = (gathered, fresh) if backward else (fresh, gathered)
        with kernels.threaded() if threaded else contextlib.nullcontext():
            flat_fn(*(v.reshape(-1) for g in args for v in (g.tau, g.rho)), 0.1, want_t.reshape(-1),
                    want_r.reshape(-1), want_c)
            out_t, out_r, counts = np.empty_like(want_t), np.empty_like(want_r), np.zeros(5, int)
            slot_fn(fresh.tau.reshape(-1), fresh.rho.reshape(-1), store.tau.reshape(-1), store.rho.reshape(-1),
                    other.tau.reshape(-1), other.rho.reshape(-1), rows, 0.1, out_t.reshape(-1), out_r.reshape(-1),
                    counts)
        np.testing.assert_array_equal(out_t, want_t)
        np.testing.assert_array_equal(out_r, want_r)
        np.testing.assert_array_equal(counts, want_c)
        assert counts.sum() > 0  # guards fired: the count comparison is not vacuous
        expect = (cache_z if backward else cache_a).copy()
        expect[rows] = fresh
        np.testing.assert_array_equal(store.tau, expect.tau)
        np.testing.assert_array_equal(store.rho, expect.rho)
        np.testing.assert_array_equal(other.tau, (cache_a if backward else cache_z).tau)


@pytest.mark.parametrize("idx, takes", [
    ([5, 2, 0], True), (np.arange(8)[::-1], True), ([5, 2, 5], False), ([5, -1], False), ([5, 8], False),
    (np.array([5.0, 2.0]), False)])
def test_leaky_chunk_kernels_take_distinct_slots_of_the_batch_only(idx, takes):
    """``LeakyReLU._chunk_kernel`` (by the compiled ``leaky_cpu.distinct_rows``): an integer index array of
    distinct slots in ``[0, batch_size)`` goes to the ``*_slots`` kernels; a repeated slot (two threads
    would write its cache row), a negative or too large one, or float indices take the NumPy path."""
    from layers.leaky_relu import LeakyReLU

    layer = LeakyReLU(0.1)
    layer.build((6,), 8, dtype=np.float64, rng=np.random.default_rng(0), constant_input=False)
    idx = np.asarray(idx)
    assert layer._chunk_kernel(idx) is takes
    if idx.dtype.kind == "i":
        assert leaky_cpu.distinct_rows(idx, 8) is takes
    assert not layer._chunk_kernel(list(range(3)))


def test_leaky_layer_rejects_a_chunk_of_the_wrong_shape_before_touching_its_caches():
    from layers.leaky_relu import LeakyReLU

    layer = LeakyReLU(0.1)
    layer.build((6,), 8, dtype=np.float64, rng=np.random.default_rng(0), constant_input=False)
    idx = np.array([5, 2, 0])
    good = Gaussian.from_mean_var(np.ones((3, 6)), np.ones((3, 6)))
    layer.forward_chunk(good, idx, 0)
    layer.backward_chunk(good, idx, 0, 1.0, 0)
    before = (layer.m_in.copy(), layer.m_back.copy())
    for shape in ((3, 5), (6,)):
        bad = Gaussian.from_mean_var(np.ones(shape), np.ones(shape))
        with pytest.raises(ValueError, match="chunk of 3 slots"):
            layer.forward_chunk(bad, idx, 0)
        with pytest.raises(ValueError, match="chunk of 3 slots"):
            layer.backward_chunk(bad, idx, 0, 1.0, 0)
    for was, now in zip(before, (layer.m_in, layer.m_back)):
        np.testing.assert_array_equal(was.tau, now.tau)
        np.testing.assert_array_equal(was.rho, now.rho)


@pytest.mark.parametrize("templates", [
    [(3,), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 2), ("Regression", 0.05)],
    [(2, 3, 1), ("Flatten",), ("Linear", 5), ("LeakyReLU", 0.2), ("Linear", 3), ("Argmax", True)],
    # a global AvgPool sends back messages with a transposed memory layout: the kernels must not lose them
    [(6, 6, 1), ("Conv", 3, 3), ("LeakyReLU", 0.1), ("AvgPool",), ("Linear", 2), ("Regression", 0.1)],
    [(6, 6, 1), ("Conv", 3, 3, {"padding": 1}), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 2, 2),
     ("LeakyReLU", 0.1), ("Flatten",), ("Linear", 2), ("Regression", 0.1)],
])
def test_graph_with_kernels_equals_graph_without(templates, dtype):
    rng = np.random.default_rng(0)
    n = 12
    shape = templates[0]
    X = rng.normal(size=(n,) + shape)
    if templates[-1][0] == "Regression":
        Xf = X.reshape(n, -1)
        Y = np.stack([np.sin(Xf[:, 0]), Xf[:, 1] * Xf[:, 2]], axis=1)
    else:
        Y = rng.integers(0, 3, n)
    if dtype == np.float32 and len(shape) == 3 and templates[1][0] == "Conv":
        pytest.skip("float32 CNNs: the NumPy reference LeakyReLU loses its digits in float32 where the kernels "
                    "compute in float64, and training amplifies the difference")
    preds = []
    # float32 message passing amplifies rounding differences (the kernels compute internally in
    # float64), so float32 is compared after a short run
    n_fit, its = (n, 2) if dtype == np.float64 else (3, 1)
    for flag in (True, False):
        prev = kernels.set_enabled(flag)
        try:
            fg = create_factor_graph(templates, batch_size=n, seed=4, dtype=dtype)
            fg.train_batch(X[:n_fit], Y[:n_fit], its)
            out = fg.predict(X)
        finally:
            kernels.set_enabled(prev)
        preds.append(out[0] if isinstance(out, tuple) else out)
    tol = dict(rtol=1e-7, atol=1e-9) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(preds[0], preds[1], **tol)


def _logit_messages(rng, n, C, dtype=np.float64):
    mu = rng.normal(0, 3, (n, C))
    var = 10 ** rng.uniform(-4, 2, (n, C))
    mu[0] = 0.0  # ties
    mu[1, 0] = 300.0  # a dominant logit
    var[2] = 1e-8  # tiny variances
    return Gaussian.from_mean_var(mu, var).astype(dtype), rng.integers(0, C, n)


@pytest.mark.parametrize("regularize", [False, True])
def test_argmax_kernel_equals_reference(regularize, record_cases):
    from factorgraph.kernels import signals_cpu

    rng = np.random.default_rng(11)
    m, y = _logit_messages(rng, 300, 10)
    guards.reset()
    ref = eq.argmax_backward(m, y, 0.3, regularize)
    ref_counts = guards.counts()
    out_t, out_r, counts = np.zeros(m.shape), np.zeros(m.shape), np.zeros(1, np.int64)
    signals_cpu.argmax_bwd(m.tau, m.rho, y, 0.3, 0.1, regularize, out_t, out_r, counts)
    # relative to the marginal the message forms with the logit's forward message (``closeness``)
    assert_messages_close(out_t, out_r, ref.tau, ref.rho, KTOL[np.float64], m.tau, m.rho, "argmax")
    assert counts[0] == ref_counts.get("truncation_u_floor", 0)
    record_cases("kernel argmax_backward", 300)


def test_softmax_kernel_equals_reference_relative_to_the_marginal(record_cases):
    """The message is the difference of two nearly equal precisions where the likelihood says little,
    so the comparison is relative to the marginal precision rho_fwd + |rho_msg| (the kernel follows the
    reference's arithmetic; remaining differences are rounding of that subtraction)."""
    from factorgraph.equations.softmax import softmax_backward
    from factorgraph.kernels import signals_cpu

    rng = np.random.default_rng(12)
    m, y = _logit_messages(rng, 200, 10)
    guards.reset()
    ref = softmax_backward(m, y)
    ref_counts = guards.counts()
    out_t, out_r, counts = np.zeros(m.shape), np.zeros(m.shape), np.zeros(4, np.int64)
    signals_cpu.softmax_bwd(m.tau, m.rho, y, signals_cpu.GL_X, signals_cpu.GL_W, out_t, out_r, counts)
    assert_messages_close(out_t, out_r, ref.tau, ref.rho, KTOL[np.float64], m.tau, m.rho, "softmax")
    for k, name in enumerate(signals_cpu.SOFTMAX_GUARDS):
        assert counts[k] == ref_counts.get(name, 0), name
    record_cases("kernel softmax_backward", 200 * 10)


@pytest.mark.parametrize("n, threaded", [(300, False), (700, False), (700, True)])
def test_argmax_probs_kernel_equals_reference(n, threaded, record_cases):
    rng = np.random.default_rng(13)
    m, _ = _logit_messages(rng, n, 10)
    ref = eq.argmax_probs(m, 0.3)
    with kernels.threaded() if threaded else contextlib.nullcontext():
        got = kernels.argmax_probs(m, 0.3)
    np.testing.assert_allclose(got, ref, rtol=KTOL[np.float64], atol=1e-300)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)
    record_cases("kernel argmax_probs", n)


def test_leaky_prediction_kernel_equals_reference():
    rng = np.random.default_rng(14)
    m = Gaussian.from_mean_var(rng.normal(0, 3, (50, 4, 4)), 10 ** rng.uniform(-3, 2, (50, 4, 4)))
    ref = eq.leaky_forward_moment_match(m, 0.1)
    got = kernels.leaky_moment_match(m, 0.1)
    assert_messages_close(got.tau, got.rho, ref.tau, ref.rho, KTOL[np.float64], what="moment match")


@pytest.mark.parametrize("damp", [1.0, 0.6])
def test_inplace_s1_rows_equal_the_general_loop_on_edge_lanes(damp, dtype, record_cases):
    """The sequential schedule's one-division, vectorised S1 rows (``a is q``) send the same messages and
    count the same guards as the general loop (``a`` a separate pending change) and the reference
    ``s1_backward_to_b``, including zero inputs, cavities with rho = 0, round-off and improper cavities,
    clamped rests, an infinite forward variance and a uniform backward message."""
    rng = np.random.default_rng(11)
    K, J = 40, 24
    x = rng.normal(0, 2, K).astype(dtype)
    x[::9] = 0
    m = _rand_gauss(rng, (K, J), dtype, 0.05, 2)
    q = Gaussian(m.tau + rng.normal(size=(K, J)).astype(dtype), m.rho + 10 ** rng.uniform(-4, 1, (K, J)).astype(dtype))
    q.rho[::5, ::3] = m.rho[::5, ::3]                       # uniform cavity (rho exactly 0)
    q.rho[1::7, ::4] = m.rho[1::7, ::4] * (1 - 1e-14)       # round-off below zero
    q.rho[3, 5] = m.rho[3, 5] - 1.0                         # improper: counted, not raised here
    f_mu = rng.normal(size=J).astype(dtype)
    f_var = (10 ** rng.uniform(-3, 1, J)).astype(dtype)     # small variances: many clamped rests
    f_var[2] = np.inf
    r = _rand_gauss(rng, J, dtype, 0.1, 3)
    r.rho[4], r.tau[4] = 0, 0                               # a uniform backward message
    fast, slow = (q.copy(), m.copy(), np.zeros(7, np.int64)), (q.copy(), m.copy(), np.zeros(7, np.int64))
    linear_cpu._s1_rows(x, fast[0].tau, fast[0].rho, fast[1].tau, fast[1].rho, fast[0].tau, fast[0].rho, damp,
                        f_mu, f_var, r.tau, r.rho, fast[2])
    pend = q.copy()
    linear_cpu._s1_rows(x, slow[0].tau, slow[0].rho, slow[1].tau, slow[1].rho, pend.tau, pend.rho, damp,
                        f_mu, f_var, r.tau, r.rho, slow[2])
    for got, want in [(fast[1].tau, slow[1].tau), (fast[1].rho, slow[1].rho), (fast[0].tau, pend.tau),
                      (fast[0].rho, pend.rho)]:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(slow[0].tau, q.tau)          # the general loop leaves q alone
    np.testing.assert_array_equal(fast[2], slow[2])
    assert fast[2][linear_cpu.G_IMPROPER] == 1
    assert fast[2][linear_cpu.G_ROUNDOFF] > 0 or dtype == np.float32  # 1 - 1e-14 is 1 in float32
    assert fast[2][linear_cpu.G_S1_REST] > 0
    # and the reference equation on the lanes with a proper cavity
    ok = (q.rho - m.rho) > 0
    cav = Gaussian(np.where(ok, q.tau - m.tau, 0), np.where(ok, q.rho - m.rho, 1))
    ref = eq.s1_backward_to_b(x, cav, Gaussian.from_mean_var(f_mu, f_var), r)
    want_t, want_r = m.tau + damp * (ref.tau - m.tau), m.rho + damp * (ref.rho - m.rho)
    sel = ok & np.isfinite(want_t)
    assert_messages_close(fast[1].tau[sel], fast[1].rho[sel], want_t[sel], want_r[sel], KTOL[dtype], cav.tau[sel],
                          cav.rho[sel], "weights")
    record_cases("kernel linear_const inplace rows", K * J)


def test_leaky_moment_match_kernel_on_named_tails():
    """The one-erfc moment matching equals the reference at t = mu / sigma in the body, at the series
    switch (|t| = 20), deep in both tails and for tiny and huge variances, for several slopes."""
    t = np.array([0.0, 1e-12, -0.3, 2.5, -7.0, 19.99, -19.99, 20.01, -20.01, 37.0, -37.0, 300.0, -300.0, 1e4, -1e4])
    for var in (1e-12, 1.0, 1e8):
        a = Gaussian.from_mean_var(t * np.sqrt(var), np.full(t.shape, var))
        for slope in (0.01, 0.1, 0.5):
            guards.reset()
            ref = eq.leaky_forward_moment_match(a, slope)
            out_t, out_r, counts = np.zeros(t.size), np.zeros(t.size), np.zeros(5, np.int64)
            leaky_cpu.leaky_fwd_moment_match(a.tau, a.rho, slope, out_t, out_r, counts)
            assert_messages_close(out_t, out_r, ref.tau, ref.rho, KTOL[np.float64], what=f"var {var} slope {slope}")
            assert counts[leaky_cpu.L_U_FLOOR] == guards.counts().get("truncation_u_floor", 0)


@pytest.mark.parametrize("damp", [1.0, 0.6])
def test_inplace_s2_rows_equal_the_pending_loop_and_the_reference(damp, dtype, record_cases):
    """The sequential schedule's vectorised S2 rows (``a is q``, sums over j reordered) send the same
    messages and count the same clamps as the pending-change loop, and both equal ``s2_backward``,
    including weights with a uniform marginal (rho = 0) and clamped rests."""
    rng = np.random.default_rng(12)
    K, J = 30, 20
    x_mu, x_var = rng.normal(0, 2, K).astype(dtype), (10 ** rng.uniform(-3, 1, K)).astype(dtype)
    q = _rand_gauss(rng, (K, J), dtype, 0.05, 5)
    q.tau[::7, ::3], q.rho[::7, ::3] = 0, 0
    m = _rand_gauss(rng, (K, J), dtype, 0.01, 0.04)
    f = Gaussian.from_mean_var(rng.normal(size=J), 10 ** rng.uniform(-2, 1, J)).astype(dtype)
    r = _rand_gauss(rng, J, dtype, 0.1, 3)
    outs = []
    for inplace in (True, False):
        qq, mm, pend = q.copy(), m.copy(), q.copy()
        tx, rx = np.zeros(K, dtype), np.zeros(K, dtype)
        a = qq if inplace else pend
        sink = (None, None) if inplace else (pend.tau, pend.rho)  # None: into q, the vectorised specialisation
        n = linear_cpu._s2_rows_into(x_mu, x_var, qq.tau, qq.rho, mm.tau, mm.rho, *sink, damp, f.mean, f.var, r.tau,
                                     r.rho, tx, rx)
        outs.append((a, mm, tx, rx, n))
    tol = KTOL[dtype]
    for u, v in zip(outs[0][:4], outs[1][:4]):
        for x, y in ((u.tau, v.tau), (u.rho, v.rho)) if isinstance(u, Gaussian) else ((u, v),):
            np.testing.assert_allclose(x, y, rtol=tol, atol=0)  # the same sums in another order
    assert outs[0][4] == outs[1][4]
    x = Gaussian.from_mean_var(x_mu, x_var)
    to_x, to_w = eq.s2_backward(x, q, f, r)
    assert_messages_close(outs[0][1].tau, outs[0][1].rho, m.tau + damp * (to_w.tau - m.tau),
                          m.rho + damp * (to_w.rho - m.rho), tol, q.tau, q.rho, "weights")
    assert_messages_close(outs[0][2], outs[0][3], to_x.tau, to_x.rho, tol, x.tau, x.rho, "input")
    record_cases("kernel linear_var inplace rows", K * J)


def test_float32_kernels_equal_the_reference_on_the_same_inputs(record_cases):
    """Float32 LeakyReLU, argmax and softmax kernels against the float64 reference evaluated on the very
    float32 inputs they received, to 1e-5 of the marginal (the float32 NumPy reference itself rounds
    every intermediate to float32 and is the less accurate of the two)."""
    from factorgraph.equations.softmax import softmax_backward
    from factorgraph.kernels import signals_cpu

    rng = np.random.default_rng(21)
    n = 1200
    a32, z32 = (g.astype(np.float32) for g in _leaky_inputs(rng, n, np.float64))
    a, z = a32.astype(np.float64), z32.astype(np.float64)
    tol = KTOL[np.float32]
    for name, ref, kern, args, base in [
        ("moment_match", eq.leaky_forward_moment_match(a, 0.1), leaky_cpu.leaky_fwd_moment_match,
         (a32.tau, a32.rho, 0.1), None),
        ("forward", eq.leaky_forward_marginal(a, z, 0.1), leaky_cpu.leaky_fwd_marginal,
         (a32.tau, a32.rho, z32.tau, z32.rho, 0.1), z),
        ("backward", eq.leaky_backward_marginal(a, z, 0.1).clamp_min_rho(1e-8), leaky_cpu.leaky_bwd_marginal,
         (a32.tau, a32.rho, z32.tau, z32.rho, 0.1), a),
    ]:
        out_t, out_r = np.zeros(n, np.float32), np.zeros(n, np.float32)
        kern(*args, out_t, out_r, np.zeros(5, np.int64))
        assert_messages_close(out_t, out_r, ref.tau, ref.rho, tol,
                              *((base.tau, base.rho) if base is not None else (0.0, 0.0)), what=name)
    m32, y = _logit_messages(rng, 300, 10, np.float32)
    m = m32.astype(np.float64)
    out_t, out_r = np.zeros(m.shape, np.float32), np.zeros(m.shape, np.float32)
    signals_cpu.argmax_bwd(m32.tau, m32.rho, y, 0.3, 0.1, False, out_t, out_r, np.zeros(1, np.int64))
    ref = eq.argmax_backward(m, y, 0.3, False)
    assert_messages_close(out_t, out_r, ref.tau, ref.rho, tol, m.tau, m.rho, "argmax")
    out_t, out_r = np.zeros(m.shape, np.float32), np.zeros(m.shape, np.float32)
    signals_cpu.softmax_bwd(m32.tau, m32.rho, y, signals_cpu.GL_X, signals_cpu.GL_W, out_t, out_r,
                            np.zeros(4, np.int64))
    ref = softmax_backward(m, y)
    assert_messages_close(out_t, out_r, ref.tau, ref.rho, tol, m.tau, m.rho, "softmax")
    np.testing.assert_allclose(kernels.argmax_probs(m32, 0.3), eq.argmax_probs(m, 0.3), rtol=tol, atol=1e-30)
    record_cases("kernel float32 signals and leaky", 3 * n + 2 * 3000)


@pytest.mark.parametrize("k, threaded", [(2, False), (3, False), (2, True)])
def test_maxpool_prediction_kernel_equals_the_layer_reference(k, threaded, dtype, record_cases):
    """The fused max-pool prediction (argmax weights and weighted sum per window) equals the layer's
    NumPy path (windows, ``argmax_probs``, ``s1_reduce_forward``), including incomplete border windows,
    ties and tiny variances."""
    from layers.pool import MaxPool

    rng = np.random.default_rng(31 + k)
    N = 40 if threaded else 3
    shape = (N, 7, 8, 3)
    m = Gaussian.from_mean_var(rng.normal(0, 2, shape), 10 ** rng.uniform(-4, 1, shape))
    m.tau[0, :2, :2, 0] = 0.0  # a tie
    layer = MaxPool(k)
    layer.input_shape = shape[1:]
    m = m.astype(dtype)
    prev = kernels.set_enabled(False)
    try:
        ref = layer.predict(m)
    finally:
        kernels.set_enabled(prev)
    with kernels.threaded() if threaded else contextlib.nullcontext():
        got = kernels.maxpool_predict(m, k, layer.noise)
    assert got.shape == ref.shape == (N, 7 // k, 8 // k, 3)
    assert_messages_close(got.tau, got.rho, ref.tau, ref.rho, KTOL[dtype], what="maxpool")
    record_cases("kernel maxpool predict", got.tau.size)


def _pool_training(layer, m, r, on, threaded):
    """Training forward and backward of a max-pool layer with the kernels ``on`` or off (its NumPy path);
    the guard counts the pair added."""
    prev = kernels.set_enabled(on)
    before = guards.counts()
    try:
        with kernels.threaded() if threaded else contextlib.nullcontext():
            if m.tau.ndim == 3:
                f = layer.forward(m, 0)
                b = layer.backward(r, 0)
            else:
                f = layer.forward_chunk(m, np.arange(m.shape[0]), 0)
                b = layer.backward_chunk(r, np.arange(m.shape[0]), 0, None, None)
        layer.flush_guards()
    finally:
        kernels.set_enabled(prev)
    after = guards.counts()
    return f, b, {k: after.get(k, 0) - before.get(k, 0) for k in ("s1_small_cavity", "s1_rest_variance_clamp")}


@pytest.mark.parametrize("k, lead, threaded", [(2, (3,), False), (3, (2,), False), (2, (), False), (2, (40,), True)])
def test_maxpool_training_kernels_equal_the_layer_reference(k, lead, threaded, dtype, record_cases):
    """The fused max-pool training kernels (forward with the argmax probabilities kept, S1 backward to
    every pixel) equal the layer's NumPy path (windows, ``argmax_probs``, ``s1_reduce_forward`` /
    ``s1_reduce_backward``, scatter), one image or a chunk, with incomplete border windows (their pixels
    get G(0, 0)), a tie, tiny and huge variances (a cavity precision below ``MIN_CAVITY_PRECISION``: the
    same small-cavity guard count), a uniform backward message and the threaded path."""
    from layers.pool import MaxPool

    rng = np.random.default_rng(41 + k + len(lead))
    shape = lead + (7, 8, 3)
    m = Gaussian.from_mean_var(rng.normal(0, 2, shape), 10 ** rng.uniform(-4, 1, shape))
    img = m if lead else m.reshape((1,) + shape)
    img.tau[0, :2, :2, 0] = 0.0  # a tie
    img.rho[0, 2, 2, 1] = 1e-9  # variance 1e9: below MIN_CAVITY_PRECISION
    layer = MaxPool(k)
    layer.build(shape[-3:], 4, dtype=dtype, rng=rng, constant_input=False)
    out_shape = lead + layer.output_shape_
    r = Gaussian(rng.normal(0, 1, out_shape), rng.uniform(0, 3, out_shape))
    r.tau.reshape(-1)[:2] = 0.0
    r.rho.reshape(-1)[:2] = 0.0  # uniform backward messages
    m, r = m.astype(dtype), r.astype(dtype)
    f_ref, b_ref, g_ref = _pool_training(layer, m, r, False, False)
    f, b, g = _pool_training(layer, m, r, True, threaded)
    assert f.shape == f_ref.shape == out_shape and b.shape == b_ref.shape == shape
    assert_messages_close(f.tau, f.rho, f_ref.tau, f_ref.rho, KTOL[dtype], what="maxpool forward")
    assert_messages_close(b.tau, b.rho, b_ref.tau, b_ref.rho, KTOL[dtype], m.tau, m.rho, what="maxpool backward")
    # the rest-variance floor fires only on round-off (rest = var_s - p^2 var >= 0 exactly), where two
    # evaluation orders may disagree; the small-cavity count depends on the inputs alone
    assert g["s1_small_cavity"] == g_ref["s1_small_cavity"] >= 1
    outside = np.ones(shape[-3:], bool)
    outside[:7 // k * k, :8 // k * k] = False
    img_b = b.reshape((-1,) + shape[-3:])
    assert outside.any() and not img_b.tau[:, outside].any() and not img_b.rho[:, outside].any()
    record_cases("kernel maxpool training", b.tau.size)


def test_argmax_probs_fall_back_to_log_space_where_the_products_underflow():
    """1100 tied candidates: every product is 2^-1099 = 0 in float64, so the row is redone in log space
    and gives the reference's uniform probabilities; a row beside it takes the direct products."""
    rng = np.random.default_rng(5)
    C = 1100
    mu = np.zeros((2, C))
    mu[1] = rng.normal(0, 30, C)
    m = Gaussian.from_mean_var(mu, np.ones((2, C)))
    got = kernels.argmax_probs(m, 0.3)
    ref = eq.argmax_probs(m, 0.3)
    np.testing.assert_allclose(got[0], 1.0 / C, rtol=1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-300)


def test_threaded_limits_blas_threads_and_restores_them():
    """``threaded(blas_threads=1)`` (the batched sweeps) sets every BLAS pool to one thread and restores it."""
    from threadpoolctl import threadpool_info

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas()
    for _ in range(2):  # the second time through the cached controller
        with kernels.threaded(blas_threads=1):
            assert blas() and all(n == 1 for n in blas())
        assert blas() == before
    with pytest.raises(ZeroDivisionError):  # a sweep that fails restores them too
        with kernels.threaded(blas_threads=1):
            raise ZeroDivisionError
    assert blas() == before


@pytest.mark.parametrize("order", ["Shuffled()", "Parallel(4, 0.5, max_step=1.0)"])
@pytest.mark.parametrize("name", ["mlp-regression", "mlp-softmax", "cnn"])
def test_layers_on_kernels_count_the_same_guards_as_the_reference(name, order, monkeypatch):
    """Training and prediction through the layers: the compiled kernels' guard counts (kept in per-layer
    arrays and flushed into :mod:`factorgraph.guards` after every call) equal those of the NumPy reference.
    (The flush once zeroed the CPU counter array before reading it, and every kernel count was lost.)"""
    import schedules
    from test_gpu import NETS, _data

    templates = NETS[name]
    X, Y = _data(templates)
    counts = []
    for compiled in (True, False):
        monkeypatch.setattr(kernels, "_ENABLED", compiled)
        guards.reset()
        fg = create_factor_graph(templates, batch_size=16, seed=3)
        fg.train_batch(X, Y, 2, order=eval(order, vars(schedules)))
        fg.predict(X)
        counts.append(guards.counts())
    assert counts[0] == counts[1]
    assert counts[0].get("leaky_backward_clamp", 0) > 0  # the case exercises the kernels' counters
