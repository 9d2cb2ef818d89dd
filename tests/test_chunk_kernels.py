"""The fused chunk kernels (:mod:`factorgraph.kernels.chunk_cpu`) against the NumPy equations they
replace: one chunk's forward and backward through a :class:`layers.linear.Linear` or
:class:`layers.conv.Conv` layer with the kernels on and off, from the same state, give the same output
message, messages to the inputs, weight and bias marginals, site messages and guard counts (to the order
of the sums: 1e-10 in float64, 1e-4 in float32), serial and on all threads, with partial blocks of rows;
edge cases take the NumPy form or raise before any change."""

import contextlib
import sys

import numpy as np
import pytest

from factorgraph import guards, kernels
from factorgraph.gaussian import Gaussian
from factorgraph.guards import ImproperMessageError
from factorgraph.kernels import chunk_cpu, patches_cpu
from layers.conv import Conv
from layers.linear import Linear

U, K, J, B, SITE = 7, 150, 120, 5, 2  # K * J above chunk_cpu.THREADS_MIN: threaded parts, a partial block


def _layer(constant, dtype, seed=0):
    """A built layer with messages in every slot (the site's included) and the exact marginal."""
    rng = np.random.default_rng(seed)
    layer = Linear(J)
    layer.build((K,), B, dtype=dtype, rng=np.random.default_rng(1), constant_input=constant)
    for slots in layer.params.values():
        shape = slots.shape
        for i in range(B):
            slots.msgs.tau[i] = rng.normal(0, 1, shape)
            slots.msgs.rho[i] = rng.uniform(0.1, 3, shape)
        slots.used = B
        slots.recompute()
    if not constant:
        layer.m_to_x.tau[:] = rng.normal(0, 1, (B, K))
        layer.m_to_x.rho[:] = rng.uniform(0.1, 2, (B, K))
        layer.m_to_x.tau[1] = layer.m_to_x.rho[1] = 0  # nothing sent back to example 1 yet
    return layer


def _inputs(constant, dtype, seed=5):
    rng = np.random.default_rng(seed)
    if constant:
        x = rng.normal(0, 1, (U, K)).astype(dtype)
        x[:, :3] = 0  # zero coefficients
    else:
        x = Gaussian(rng.normal(0, 1, (U, K)), rng.uniform(0.5, 4, (U, K))).astype(dtype)
        x.tau[1], x.rho[1] = 1e-10, 1e-9  # example 1 nearly unknown: input marginals raised to min_rho
    r = Gaussian(rng.normal(0, 2, (U, J)), rng.uniform(0, 3, (U, J))).astype(dtype)
    r.rho[0, :5] = 0  # uniform backward messages
    if not constant:  # example 1: nothing known either way (SPEC 4.3 edge rule); 2: min_rho on its messages
        r.rho[1:3] = 0
    return x, r


def _chunk(layer, x, r, idx, damping, expansion):
    out = layer.forward_chunk(x, idx, SITE)
    to_x = layer.backward_chunk(r, idx, SITE, damping, expansion)
    return out, to_x


def _run(compiled, constant, dtype, damping, max_step, expansion, threaded, monkeypatch, layer=None):
    monkeypatch.setattr(kernels, "_ENABLED", compiled)
    layer = _layer(constant, dtype) if layer is None else layer
    for slots in layer.params.values():
        slots.max_step = max_step
    x, r = _inputs(constant, dtype)
    idx = np.arange(U) % B
    guards.reset()
    with kernels.threaded(blas_threads=1) if threaded else contextlib.nullcontext():
        out, to_x = _chunk(layer, x, r, idx, damping, expansion)
    return layer, out, to_x, guards.counts()


def _close(a, b, dtype):
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for u, v in ((a.tau, b.tau), (a.rho, b.rho)):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * (np.abs(v).max() + 1e-300))


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("s1_chunk_forward", "s1_chunk_backward", "s2_chunk_forward", "s2_chunk_backward"):
            fn = getattr(chunk_cpu, name)
            monkeypatch.setattr(chunk_cpu, name, self._wrap(name, fn))

    def _wrap(self, name, fn):
        def call(*args):
            self.calls.append(name)
            return fn(*args)
        return call


@pytest.mark.parametrize("shape", [(K, J), (40, 10)])  # blocks of ROWS rows; one block (a small layer)
@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("damping, max_step", [(1.0, None), (0.5, 0.2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("constant, expansion", [(True, 0), (True, 1), (False, 0), (False, 1)])
def test_fused_chunk_equals_the_numpy_equations(constant, expansion, dtype, damping, max_step, threaded,
                                                shape, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "K", shape[0])
    monkeypatch.setattr(sys.modules[__name__], "J", shape[1])
    spy = _Spy(monkeypatch)
    ref = _run(False, constant, dtype, damping, max_step, expansion, threaded, monkeypatch)
    assert spy.calls == []
    got = _run(True, constant, dtype, damping, max_step, expansion, threaded, monkeypatch)
    kind = "s1" if constant else "s2"
    fused_backward = constant or expansion == 0  # S2 to first order keeps the NumPy form
    assert spy.calls == [f"{kind}_chunk_forward"] + ([f"{kind}_chunk_backward"] if fused_backward else [])
    (la, out_a, to_a, counts_a), (lb, out_b, to_b, counts_b) = ref, got
    _close(out_b, out_a, dtype)
    if not constant:
        _close(to_b, to_a, dtype)
        _close(lb.m_to_x, la.m_to_x, dtype)
    for name in ("W", "c"):
        sa, sb = la.params[name], lb.params[name]
        _close(sb.q, sa.q, dtype)
        _close(sb.msgs[SITE], sa.msgs[SITE], dtype)
        np.testing.assert_array_equal(sb.msgs.tau[SITE + 1:], sa.msgs.tau[SITE + 1:])
        assert sb.used == sa.used
    assert counts_b == counts_a
    if not constant:
        assert counts_a["linear_all_tiny_precision"] == 1 and counts_a["min_rho_clamp"] > K
    if max_step is not None:
        assert counts_a.get("parallel_step_limit", 0) > 0  # the bound is exercised


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("constant", [True, False])
@pytest.mark.parametrize("uses, fwd_rows, weight_rows", [(70, 29, 29), (200, chunk_cpu.ROWS, 10)])
def test_fused_chunk_of_many_examples_equals_the_numpy_equations(constant, dtype, uses, fwd_rows, weight_rows,
                                                                 monkeypatch):
    """Larger chunks take other blocks of weight rows (``chunk_cpu._block_rows``): the same checks for
    chunks of 70 and 200 examples, whose blocks split the threads' parts unevenly."""
    monkeypatch.setattr(sys.modules[__name__], "U", uses)
    assert chunk_cpu._block_rows(K, J, uses, False) == fwd_rows
    assert chunk_cpu._block_rows(K, J, uses, True) == weight_rows
    assert chunk_cpu._block_rows(K, J, 7, True) == chunk_cpu._block_rows(K, J, 7, False) == chunk_cpu.ROWS
    test_fused_chunk_equals_the_numpy_equations(constant, 0, dtype, 0.5, 0.2, True, (K, J), monkeypatch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_bias_equals_the_numpy_steps(dtype):
    """``chunk_cpu.add_bias`` (the fused forward's last pass) gives NumPy's numbers bit for bit: ``mu +
    c_mu``, ``var + c_var`` broadcast over the chunk's rows, ``tau = mu / var``, ``rho = 1 / var``."""
    rng = np.random.default_rng(4)
    mu, var = rng.normal(0, 3, (7, 13)).astype(dtype), rng.uniform(1e-3, 5, (7, 13)).astype(dtype)
    c_mu, c_var = rng.normal(0, 1, 13).astype(dtype), rng.uniform(1e-3, 1, 13).astype(dtype)
    want_mu, want_var = mu + c_mu, var + c_var
    tau, rho = np.empty_like(mu), np.empty_like(var)
    chunk_cpu.add_bias(mu, var, c_mu, c_var, tau, rho)
    for got, want in ((mu, want_mu), (var, want_var), (tau, want_mu / want_var), (rho, 1 / want_var)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_thread_parts_cover_every_row_once():
    """The threaded kernels' parts tile the weights' rows, one per thread at most, as equal as whole rows
    allow (784 rows on two threads: 392 each)."""
    for K_, threads in ((150, 2), (64, 2), (65, 2), (784, 2), (1000, 3), (7, 4), (1, 4)):
        size = chunk_cpu._parts(K_, threads)
        parts = [(p * size, min(K_, (p + 1) * size)) for p in range((K_ + size - 1) // size)]
        assert parts[0][0] == 0 and parts[-1][1] == K_ and len(parts) <= threads
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        lengths = [b - a for a, b in parts]
        assert max(lengths) - min(lengths) < threads
    assert chunk_cpu._parts(784, 2) == 392


def test_a_uniform_cavity_takes_the_numpy_form(monkeypatch):
    """A weight whose cavity has zero precision (no prior there) needs the zero-coefficient rule (its input
    is 0 in every example): the fused forward sees it, changes nothing, and the NumPy equations run the
    chunk."""
    spy = _Spy(monkeypatch)
    results = []
    for compiled in (False, True):
        layer = _layer(True, np.float64)
        W = layer.params["W"]
        W.msgs.tau[B, 1, :4] = 0  # no prior on these weights: their cavity of the site is uniform
        W.msgs.rho[B, 1, :4] = 0
        for i in range(B):
            if i != SITE:
                W.msgs.tau[i, 1, :4] = W.msgs.rho[i, 1, :4] = 0
        W.recompute()
        results.append(_run(compiled, True, np.float64, 1.0, None, 0, False, monkeypatch, layer))
    assert spy.calls == ["s1_chunk_forward"]
    (la, out_a, _, counts_a), (lb, out_b, _, counts_b) = results
    assert np.isfinite(out_a.rho).all() and np.isfinite(la.params["W"].q.tau).all()
    _close(out_b, out_a, np.float64)
    _close(lb.params["W"].q, la.params["W"].q, np.float64)
    np.testing.assert_array_equal(la.params["W"].q.rho[1, :4], 0)  # zero inputs: still uniform
    assert counts_b == counts_a


def test_an_improper_cavity_raises_before_any_change(monkeypatch):
    monkeypatch.setattr(kernels, "_ENABLED", True)
    layer = _layer(True, np.float64)
    W = layer.params["W"]
    W.msgs.rho[SITE, 3, 3] = W.q.rho[3, 3] * 2  # the site claims more precision than the marginal holds
    before = {k: v.copy() for k, v in W.state().items()}
    x, _ = _inputs(True, np.float64)
    with pytest.raises(ImproperMessageError, match="negative precision"):
        layer.forward_chunk(x, np.arange(U) % B, SITE)
    for k, v in W.state().items():
        np.testing.assert_array_equal(v, before[k])


def test_deferred_slots_and_single_examples_keep_the_numpy_form(monkeypatch):
    monkeypatch.setattr(kernels, "_ENABLED", True)
    layer = _layer(True, np.float64)
    W = layer.params["W"]
    assert W.fused_site(SITE) is not None
    W.defer(0.5)
    assert W.fused_site(SITE) is None
    W.commit()
    x, _ = _inputs(True, np.float64)
    assert layer._fused(x[0], SITE) is None  # one example (1-D): the per-example path
    assert layer._fused(x.astype(np.float32), SITE) is None  # another dtype than the weights'
    monkeypatch.setattr(kernels, "_ENABLED", False)
    assert W.fused_site(SITE) is None


# --- convolutions: many uses (patch rows) of a small kernel ------------------------------------------

IMG, N_CHUNK = (12, 12, 3), 6  # 6 * 144 patch rows: three whole blocks of chunk_cpu.USES and a partial one


def _conv(constant, dtype, seed=0):
    rng = np.random.default_rng(seed)
    layer = Conv(4, 3, padding=1)
    layer.build(IMG, B, dtype=dtype, rng=np.random.default_rng(1), constant_input=constant)
    for slots in layer.params.values():
        for i in range(B):
            slots.msgs.tau[i] = rng.normal(0, 1, slots.shape)
            slots.msgs.rho[i] = rng.uniform(0.1, 3, slots.shape)
        slots.used = B
        slots.recompute()
    if not constant:
        layer.m_to_x.tau[:] = rng.normal(0, 1, (B,) + IMG)
        layer.m_to_x.rho[:] = rng.uniform(0.1, 2, (B,) + IMG)
    return layer


def _conv_run(compiled, constant, dtype, expansion, threaded, monkeypatch):
    monkeypatch.setattr(kernels, "_ENABLED", compiled)
    layer = _conv(constant, dtype)
    rng = np.random.default_rng(9)
    shape = (N_CHUNK,) + IMG
    x = (rng.normal(0, 1, shape).astype(dtype) if constant
         else Gaussian(rng.normal(0, 1, shape), rng.uniform(0.5, 4, shape)).astype(dtype))
    out_shape = (N_CHUNK, 12, 12, 4)
    r = Gaussian(rng.normal(0, 2, out_shape), rng.uniform(0, 3, out_shape)).astype(dtype)
    r.rho[0, :2] = 0
    idx = np.arange(N_CHUNK) % B
    guards.reset()
    with kernels.threaded(blas_threads=1) if threaded else contextlib.nullcontext():
        out = layer.forward_chunk(x, idx, SITE)
        to_x = layer.backward_chunk(r, idx, SITE, 0.5, expansion)
    return layer, out, to_x, guards.counts()


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("constant, expansion", [(True, 0), (False, 0), (False, 1)])
def test_fused_conv_chunk_equals_the_numpy_equations(constant, expansion, dtype, threaded, monkeypatch):
    calls = []
    for name in ("uses_forward", "s1_uses_backward", "s2_uses_backward"):
        fn = getattr(chunk_cpu, name)
        monkeypatch.setattr(chunk_cpu, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    used_threads = []
    real = kernels.use_threads
    monkeypatch.setattr(chunk_cpu, "use_threads", lambda n, m: used_threads.append(real(n, m)) or real(n, m))
    (la, out_a, to_a, counts_a) = _conv_run(False, constant, dtype, expansion, threaded, monkeypatch)
    assert calls == []
    (lb, out_b, to_b, counts_b) = _conv_run(True, constant, dtype, expansion, threaded, monkeypatch)
    backward = [] if expansion else ["s1_uses_backward" if constant else "s2_uses_backward"]
    assert calls == ["uses_forward"] + backward
    assert used_threads and all(t == threaded for t in used_threads)
    _close(out_b, out_a, dtype)
    if not constant:
        _close(to_b, to_a, dtype)
        _close(lb.m_to_x, la.m_to_x, dtype)
    for name in ("W", "c"):
        _close(lb.params[name].q, la.params[name].q, dtype)
        _close(lb.params[name].msgs[SITE], la.params[name].msgs[SITE], dtype)
    assert counts_b == counts_a


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_uses_kernels_equal_the_gemm_equations_and_count_the_bias_clamps(dtype, threaded, monkeypatch):
    """The uses kernels on their own, with forward variances below the bias cavity's in some rows (the
    bias's rest-variance clamp) and uniform backward messages: S1 and S2 weight messages to order 0,
    messages to the inputs and the bias message equal the equations', and the clamps are counted alike."""
    from factorgraph.equations import s1_backward_to_b_gemm, s1_backward_to_bias, s2_backward_gemm

    monkeypatch.setattr(chunk_cpu, "THREADS_MIN", 1)
    rng = np.random.default_rng(4)
    U_, K_, J_ = 700, 9, 5
    a = rng.normal(size=(U_, K_)).astype(dtype)
    qa = Gaussian(rng.normal(size=(U_, K_)), rng.uniform(0.5, 4, (U_, K_))).astype(dtype)
    qa = qa.with_moments()
    wb = Gaussian(rng.normal(size=(K_, J_)), rng.uniform(0.5, 4, (K_, J_))).astype(dtype).with_moments()
    c = Gaussian(rng.normal(size=J_), rng.uniform(0.5, 2, J_)).astype(dtype).with_moments()
    f = Gaussian.from_mean_var(rng.normal(size=(U_, J_)), rng.uniform(0.1, 3, (U_, J_))).astype(dtype)
    f = f.with_moments()
    r = Gaussian(rng.normal(size=(U_, J_)), rng.uniform(0, 2, (U_, J_))).astype(dtype)
    r.rho[:3] = 0
    with kernels.threaded() if threaded else contextlib.nullcontext():
        s1 = chunk_cpu.s1_uses_backward(a, f.mean, f.var, r.tau, r.rho, wb.mean, c.mean, c.var)
        s2 = chunk_cpu.s2_uses_backward(qa.mean, qa.var, f.mean, f.var, r.tau, r.rho, wb.mean, wb.var, c.mean,
                                        c.var)
    guards.reset()
    to_c = s1_backward_to_bias(c, f, r)
    clamps = guards.get("s1_rest_variance_clamp")
    assert 0 < clamps < U_ * J_ and s1[4] == clamps and s2[6] == clamps
    to_w1 = s1_backward_to_b_gemm(a, wb, f, r, 0)
    to_a, to_w2 = s2_backward_gemm(qa, wb, f, r, 0)
    for got, want in ((s1[0:2], to_w1), (s1[2:4], to_c), (s2[0:2], to_a), (s2[2:4], to_w2), (s2[4:6], to_c)):
        _close(Gaussian(*got), want, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("img, L, threaded, size", [
    ((12, 12, 3), 7, False, None), ((12, 12, 3), 7, True, None), ((12, 12, 3), 7, True, 256),
    ((30, 30, 1), 2, True, None), ((30, 30, 1), 2, True, 256)])
def test_s2_uses_backward_with_fold_equals_the_fold_of_its_patch_messages(img, L, threaded, size, dtype,
                                                                          monkeypatch):
    """With ``fold`` the S2 uses kernel returns the messages to the images: bit for bit what
    ``patches_cpu.fold`` makes of the messages to the patches it returns without, with the same weight and
    bias messages and clamps.  Zero padding (entries outside the image); on threads, examples cut by part
    boundaries (7 x 144 patch rows in parts of 512, or of 256: three cuts) and examples longer than a part
    (2 x 900 rows in parts of 1024, one cut; in parts of 256 an example spans four parts: folded
    afterwards)."""
    from factorgraph.equations import patch_index

    monkeypatch.setattr(chunk_cpu, "THREADS_MIN", 1)
    if size is not None:
        monkeypatch.setattr(chunk_cpu, "_uses_size", lambda U: size)
    rng = np.random.default_rng(L)
    src, _ = patch_index(img, 3, 1, 1, "zeros")
    (P, K), J, n = src.shape, 4, int(np.prod(img))
    U = L * P
    qa = Gaussian(rng.normal(size=(U, K)), rng.uniform(0.5, 4, (U, K))).astype(dtype).with_moments()
    wb = Gaussian(rng.normal(size=(K, J)), rng.uniform(0.5, 4, (K, J))).astype(dtype).with_moments()
    c = Gaussian(rng.normal(size=J), rng.uniform(0.5, 2, J)).astype(dtype).with_moments()
    f = Gaussian.from_mean_var(rng.normal(size=(U, J)), rng.uniform(0.1, 3, (U, J))).astype(dtype)
    f = f.with_moments()
    r = Gaussian(rng.normal(size=(U, J)), rng.uniform(0, 2, (U, J))).astype(dtype)
    args = (qa.mean, qa.var, f.mean, f.var, r.tau, r.rho, wb.mean, wb.var, c.mean, c.var)
    with kernels.threaded() if threaded else contextlib.nullcontext():
        plain = chunk_cpu.s2_uses_backward(*args)
        folded = chunk_cpu.s2_uses_backward(*args, fold=(src, n))
        with pytest.raises(ValueError, match="whole examples"):
            chunk_cpu.s2_uses_backward(*(a[:U - 1] if a.shape[0] == U else a for a in args), fold=(src, n))
    want_t, want_r = np.zeros((L, n), dtype), np.zeros((L, n), dtype)
    patches_cpu.fold(plain[0].reshape(L, -1), plain[1].reshape(L, -1), (src,), want_t, want_r)
    np.testing.assert_array_equal(folded[0], want_t)
    np.testing.assert_array_equal(folded[1], want_r)
    for got, want in zip(folded[2:], plain[2:]):
        np.testing.assert_array_equal(got, want)
    assert (src < 0).any() and np.all(want_r > 0)


def test_threaded_gather_and_fold_equal_the_serial_kernels(monkeypatch):
    """The examples of im2col and of the fold on all threads give the serial kernels' arrays bit for bit."""
    from factorgraph.equations import fold_plan, patch_index

    rng = np.random.default_rng(2)
    src, _ = patch_index(IMG, 3, 1, 1, "zeros")
    L, n = 7, int(np.prod(IMG))
    values = rng.normal(size=(L, n))
    msg_t, msg_r = rng.normal(size=(L, src.size)), rng.uniform(0, 1, (L, src.size))
    offsets, entries = fold_plan(src, n)
    results = []
    for threaded, minimum in ((False, patches_cpu.THREADS_MIN), (True, 1)):
        monkeypatch.setattr(patches_cpu, "THREADS_MIN", minimum)
        with kernels.threaded() if threaded else contextlib.nullcontext():
            out = np.full((L,) + src.shape, np.nan)
            patches_cpu.gather(values, src, 0.0, out)
            out_t, out_r = np.zeros((L, n)), np.zeros((L, n))
            patches_cpu.fold(msg_t, msg_r, (src, offsets, entries), out_t, out_r)
        results.append((out, out_t, out_r))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.isnan(results[0][0]).any()
