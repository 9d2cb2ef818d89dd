"""The GPU chunk kernels (:mod:`factorgraph.kernels.chunk_cuda`) equal the CPU ones
(:mod:`factorgraph.kernels.chunk_cpu`, themselves checked against the NumPy equations in
``test_chunk_kernels.py``): the forward moments, ``g, h`` and the bias message, the weight sites and
marginals after the replacement (damping, step bound, expansion), the messages to the inputs with the edge
rule and ``min_rho``, and every count.

Without a GPU they run in Numba's CUDA simulator on NumPy arrays (tiny sizes); on a GPU machine
``FACTORGRAPH_REAL_GPU=1 pytest tests/test_chunk_cuda.py`` runs the same on the simulator's terms (NumPy
arrays copied in and out) and ``tests/test_gpu.py`` the layers on CuPy arrays.
"""

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from factorgraph import guards  # noqa: E402
from factorgraph.guards import ImproperMessageError  # noqa: E402
from factorgraph.kernels import chunk_cpu, sites_cpu  # noqa: E402

TOL = {np.float64: dict(rtol=1e-11, atol=1e-12), np.float32: dict(rtol=2e-5, atol=1e-5)}


@pytest.fixture(scope="module")
def cuda_mods():
    from factorgraph.kernels import chunk_cuda, sites_cuda

    return chunk_cuda, sites_cuda


def _site(rng, K, J, dtype):
    """A marginal ``q`` and one of its sites ``s`` (q's precision above the site's)."""
    s_t = rng.normal(0, 0.5, (K, J))
    s_r = rng.uniform(0, 2, (K, J))
    q_t = s_t + rng.normal(0, 1, (K, J))
    q_r = s_r + rng.uniform(0.5, 3, (K, J))
    return [a.astype(dtype) for a in (q_t, q_r, s_t, s_r)]


def _forward_messages(rng, U, J, dtype):
    """Forward moments, backward messages (U, J) and a bias cavity (J,)."""
    f_mu, f_var = rng.normal(0, 1, (U, J)), rng.uniform(0.2, 2, (U, J))
    r_t, r_r = rng.normal(0, 1, (U, J)), rng.uniform(0.1, 3, (U, J))
    c_mu, c_var = rng.normal(0, 0.3, J), rng.uniform(0.01, 0.3, J)
    f_var[:2, 0] = 0.001  # below the bias cavity's variance: the rest-variance clamp fires (twice in a column)
    return [a.astype(dtype) for a in (f_mu, f_var, r_t, r_r, c_mu, c_var)]


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[dtype])


def _record(**counts):
    """Record the counts a chunk function returned, as the layer does (the CUDA ones return 0: their kernels
    added to :func:`guards.device_counts`)."""
    for name, n in counts.items():
        guards.record(name, int(np.sum(n)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("expansion, damping, kappa", [(0, 1.0, -1.0), (0, 0.5, 0.3), (1, 0.7, -1.0)])
def test_s1_chunk_cuda_equals_cpu(cuda_mods, dtype, expansion, damping, kappa):
    chunk_cuda = cuda_mods[0]
    rng = np.random.default_rng(5)
    U, K, J = 5, 7, 4
    x = rng.normal(size=(U, K)).astype(dtype)
    x[1, 2] = 0
    site = _site(rng, K, J, dtype)
    if expansion == 0:  # a round-off deficit (float64; float32 rounds it away): a zero-precision cavity, whose
        site[1][3, 1] = site[3][3, 1] * (1 - 1e-13)  # infinite variance the expanded message cannot take
    f_mu, f_var, r_t, r_r, c_mu, c_var = _forward_messages(rng, U, J, dtype)
    outs = []
    for mod in (chunk_cpu, chunk_cuda):
        guards.reset()
        q_t, q_r, s_t, s_r = (a.copy() for a in site)
        mu, var = np.empty((U, J), dtype), np.empty((U, J), dtype)
        inputs = mod.s1_inputs(x)
        counts = mod.s1_chunk_forward(inputs, q_t, q_r, s_t, s_r, 1e-9, mu, var)
        tau, rho = np.empty_like(mu), np.empty_like(var)
        mod.add_bias(mu, var, c_mu, c_var, tau, rho)
        g, h, tau_c, rho_c, clamps = mod.gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var)
        hits = mod.s1_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, 1e-9, damping, kappa, expansion)
        _record(s1_rest_variance_clamp=clamps, parallel_step_limit=hits)
        outs.append([mu, var, tau, rho, g, h, tau_c, rho_c, q_t, q_r, s_t, s_r, np.asarray(counts),
                     guards.get("s1_rest_variance_clamp"), guards.get("parallel_step_limit")])
    cpu, gpu = outs
    for n, (a, b) in enumerate(zip(gpu[:12], cpu[:12])):
        assert n < 4 or np.all(np.isfinite(b))  # the forward's variance is inf through a zero-precision cavity
        _close(a, b, dtype)
    np.testing.assert_array_equal(gpu[12], cpu[12])
    assert gpu[13:] == cpu[13:]
    assert cpu[13] >= 2  # the clamp fired
    if kappa > 0:
        assert cpu[14] > 0  # the bound limited some steps
    if dtype == np.float64 and expansion == 0:
        assert cpu[12][chunk_cpu.ROUNDOFF] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_s1_chunk_cuda_counts_bad_and_zero_cavities(cuda_mods, dtype):
    chunk_cuda = cuda_mods[0]
    rng = np.random.default_rng(6)
    q_t, q_r, s_t, s_r = _site(rng, 3, 2, dtype)
    q_r[0, 0] = s_r[0, 0] - 1.0  # beyond tolerance
    q_r[1, 1] = s_r[1, 1]  # zero precision
    x = rng.normal(size=(2, 3)).astype(dtype)
    counts = [mod.s1_chunk_forward(mod.s1_inputs(x), q_t, q_r, s_t, s_r, 1e-9, np.empty((2, 2), dtype),
                                   np.empty((2, 2), dtype)) for mod in (chunk_cpu, chunk_cuda)]
    np.testing.assert_array_equal(counts[1], counts[0])
    assert counts[0][chunk_cpu.BAD] == 1 and counts[0][chunk_cpu.ZERO] == 2  # the bad one is clamped to 0 too


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("damping, kappa", [(1.0, -1.0), (0.4, 0.5)])
def test_s2_chunk_cuda_equals_cpu(cuda_mods, dtype, damping, kappa):
    chunk_cuda = cuda_mods[0]
    rng = np.random.default_rng(7)
    U, K, J, B = 4, 6, 3, 9
    idx = np.array([7, 2, 0, 5])
    in_t, in_r = rng.normal(size=(U, K)).astype(dtype), rng.uniform(0.5, 2, (U, K)).astype(dtype)
    in_r[0, 1], in_t[0, 1] = 0, 0.3  # G(tau, 0) + a cache of zero precision: min_rho raises it
    mx_t, mx_r = rng.normal(size=(B, K)).astype(dtype), rng.uniform(0, 1, (B, K)).astype(dtype)
    mx_r[7, 1] = 0
    site = _site(rng, K, J, dtype)
    f_mu, f_var, r_t, r_r, c_mu, c_var = _forward_messages(rng, U, J, dtype)
    f_r = 1 / f_var
    f_r[2], r_r[2] = 1e-13, 1e-13  # example 2: nothing known downstream, the edge rule sends G(0, m)
    outs = []
    for mod in (chunk_cpu, chunk_cuda):
        guards.reset()
        q_t, q_r, s_t, s_r = (a.copy() for a in site)
        cache_t, cache_r = mx_t.copy(), mx_r.copy()
        t, r, mu, var = np.empty((4, U, K), dtype)
        low = mod.input_marginal(in_t, in_r, cache_t, cache_r, idx, dtype(1e-6), t, r, mu, var)
        inputs = mod.s2_inputs(mu, var)
        o_mu, o_var = np.empty((2, U, J), dtype)
        mod.s2_chunk_forward(inputs, q_t, q_r, o_mu, o_var)
        g, h, tau_c, rho_c, clamps = mod.gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var)
        ta, ra, hits = mod.s2_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, dtype(damping), dtype(kappa))
        out_t, out_r = np.empty((2, U, K), dtype)
        flats, low2 = mod.store_input_messages(ta, ra, f_r, r_r, dtype(1e-12), dtype(1e-6), out_t, out_r, cache_t,
                                               cache_r, idx)
        _record(min_rho_clamp=low, parallel_step_limit=hits, linear_all_tiny_precision=flats,
                s1_rest_variance_clamp=clamps)
        first = guards.get("min_rho_clamp")
        _record(min_rho_clamp=low2)
        outs.append([t, r, mu, var, o_mu, o_var, ta, ra, q_t, q_r, s_t, s_r, out_t, out_r, cache_t, cache_r,
                     first, guards.counts()])
    cpu, gpu = outs
    for a, b in zip(gpu[:16], cpu[:16]):
        assert np.all(np.isfinite(b))
        _close(a, b, dtype)
    assert gpu[16:] == cpu[16:]
    assert cpu[16] == 1 and cpu[17]["linear_all_tiny_precision"] == 1  # the clamp and the edge rule fired
    assert np.all(cpu[12][2] == 0) and np.all(cpu[13][2] == dtype(1e-6))
    if kappa > 0:
        assert cpu[17]["parallel_step_limit"] > 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sites_cuda_cavity_moments_equals_cpu(cuda_mods, dtype):
    sites_cuda = cuda_mods[1]
    rng = np.random.default_rng(8)
    q_t, q_r, s_t, s_r = (a.reshape(-1) for a in _site(rng, 4, 5, dtype))
    q_r[3] = s_r[3] - 1.0  # beyond tolerance
    q_r[5] = s_r[5] * (1 - 1e-13) if dtype == np.float64 else s_r[5]
    outs = []
    for run in ("cpu", "cuda"):
        out = [np.empty_like(q_t) for _ in range(4)]
        if run == "cpu":
            counts = np.array(sites_cpu.cavity_moments(q_t, q_r, s_t, s_r, 1e-9, *out))
        else:
            counts = np.zeros(2, np.int64)
            sites_cuda.cavity_moments(q_t, q_r, s_t, s_r, 1e-9, *out, counts)
        outs.append((out, counts))
    for a, b in zip(outs[1][0], outs[0][0]):
        _close(a, b, dtype)
    np.testing.assert_array_equal(outs[1][1], outs[0][1])
    assert outs[0][1][1] == 1


def test_device_counts_are_read_once_and_an_improper_division_raises():
    """:func:`guards.device_counts`: kernels add to one array per names; :func:`guards.flush` reads it into the
    counters, zeroes it, and raises on an improper division (which the CPU refuses at once)."""
    guards.reset()
    counts = guards.device_counts(("min_rho_clamp", "parallel_step_limit"), np)
    assert guards.device_counts(("min_rho_clamp", "parallel_step_limit"), np) is counts
    counts += [3, 0]
    assert guards.counts() == {"min_rho_clamp": 3} and not counts.any()
    guards.device_counts(("strict_division_roundoff", "improper_division"), np)[:] = [1, 2]
    with pytest.raises(ImproperMessageError, match="2 element"):
        guards.flush()
    assert guards.counts() == {"min_rho_clamp": 3, "strict_division_roundoff": 1, "improper_division": 2}
    guards.flush()  # read once: nothing left to raise on
    guards.reset()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sites_cuda_marginal_checks_equal_cpu(cuda_mods, dtype):
    """The after-sweep check of several marginals at once equals the compiled CPU check of each: finite and
    proper, the count of means beyond the limit and the largest shift (``-inf`` where none is)."""
    sites_cuda = cuda_mods[1]
    rng = np.random.default_rng(9)
    tensors = []
    for case in range(3):
        p_t, p_r = rng.normal(0, 1, 12).astype(dtype), rng.uniform(1, 4, 12).astype(dtype)
        q_t, q_r = p_t + rng.normal(0, 0.1, 12).astype(dtype), p_r + rng.uniform(0, 1, 12).astype(dtype)
        if case == 1:
            q_t[[2, 7]] = 40 * q_r[[2, 7]]  # two means far from the prior's
        if case == 2:
            q_r[5] = 0  # improper
        tensors.append((q_t, q_r, p_t, p_r))
    got = sites_cuda.marginal_checks(tensors, 3.0)
    want = [sites_cpu.marginal_check(*arrays, 3.0) for arrays in tensors]
    assert [g[:2] for g in got] == [w[:2] for w in want] == [(True, 0), (True, 2), (False, 0)]
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-12 if dtype == np.float64 else 1e-6)
