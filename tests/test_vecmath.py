"""The four- and eight-lane transcendental maps (glibc libmvec where available) and the tiled LeakyReLU
kernels built on them, against the scalar functions they replace."""

import math

import numpy as np
import pytest
from numba import njit

from factorgraph.kernels import leaky_cpu, scalar, vecmath

#: values whose results the maps must give exactly as libm (zeros, infinities, NaN, overflow and underflow)
SPECIAL = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 800.0, -800.0]
#: ordinary edge values (subnormal inputs, the ends of exp's range, erfc near underflow), within ulps
EDGES = [5e-324, 1e-310, 1.0, -1.0, 0.5, 709.7, -745.1, 26.5, -6.0, 27.2, -3.0]


@njit
def _scalar_map(name, x, out):
    for i in range(x.shape[0]):
        v = x[i]
        if name == "erfc":
            out[i] = math.erfc(v)
        elif name == "exp":
            out[i] = math.exp(v)
        elif name == "log":
            out[i] = math.log(v) if v >= 0 else math.nan
        else:
            out[i] = math.log1p(v) if v >= -1 else math.nan


def _inputs(name, rng):
    """Special values plus random ones over the ranges the kernels use (erfc: arguments where its value is
    normal; log: positive numbers over the whole float range)."""
    if name == "erfc":
        body = rng.uniform(-6, 26.5, 4000)
    elif name == "exp":
        body = rng.uniform(-745, 709, 4000)
    elif name == "log":
        body = 10.0 ** rng.uniform(-307, 307, 4000)
    else:
        body = np.concatenate([rng.uniform(-1, 3, 2000), 10.0 ** rng.uniform(-300, 300, 2000)])
    x = np.concatenate([np.array(SPECIAL), np.array(EDGES), body])
    return np.concatenate([x, np.zeros(-len(x) % 4)])


WIDE_MAPS = [(w, name) for w in sorted(vecmath.WIDTHS) for name in vecmath._FUNCTIONS]


@pytest.mark.parametrize("width, name", WIDE_MAPS, ids=[f"{n}-{w}lanes" for w, n in WIDE_MAPS])
@pytest.mark.parametrize("tail", [0, 4], ids=["n%8=0", "n%8=4"])
def test_vector_maps_equal_the_scalar_functions(width, name, tail):
    """Every width this machine has (four lanes; eight where ``vecmath.WIDE``), with and without a last
    group of four: where libm's result is special (NaN, +-inf, 0: also overflow and underflow) exactly
    that; elsewhere within 4 eps relative, erfc within 1e-13 relative where its value is below 1e-170
    (arguments beyond 20)."""
    vec = vecmath.WIDTHS[width][name]
    x = _inputs(name, np.random.default_rng(3))
    x = np.concatenate([x, np.zeros((tail - len(x)) % 8)])
    assert len(x) % 8 == tail
    got, want = np.empty_like(x), np.empty_like(x)
    with np.errstate(all="ignore"):
        njit(lambda x, out: vec(x, out, x.shape[0]))(x, got)
        _scalar_map(name, x, want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    ok = np.isfinite(want) & (want != 0)
    special = ~ok
    special[:len(SPECIAL)] |= ~np.isfinite(x[:len(SPECIAL)])  # NaN and infinite inputs always
    assert same[special].all(), [(x[i], got[i], want[i]) for i in np.flatnonzero(special & ~same)]
    rel = np.abs(got[ok] - want[ok]) / np.abs(want[ok])
    far = (x[ok] > 20) if name == "erfc" else np.zeros(ok.sum(), bool)
    assert rel[~far].max() <= 4 * np.finfo(float).eps, rel[~far].max()
    assert rel.max() <= 1e-13


@pytest.mark.parametrize("name, fn", list(vecmath._FUNCTIONS.items()))
def test_scalar_fallback_maps_equal_the_scalar_functions_exactly(name, fn):
    """Where libmvec is missing the maps are built from the scalar functions: bit for bit the same."""
    fallback = vecmath._map(vecmath._scalar4(fn))
    x = _inputs(name, np.random.default_rng(5))
    if name in ("log", "log1p"):
        x = np.abs(x)
    got, want = np.empty_like(x), np.empty_like(x)
    with np.errstate(all="ignore"):
        njit(lambda x, out: fallback(x, out, x.shape[0]))(x, got)
        _scalar_map(name, x, want)
    np.testing.assert_array_equal(got, want)


def test_vector_maps_use_libmvec_where_the_machine_has_it():
    """On an x86-64 Linux machine with AVX2 and glibc >= 2.35 the maps call libmvec, eight lanes at a time
    where the CPU also has AVX-512; elsewhere they fall back to the scalar functions (the equality test
    above holds either way)."""
    import ctypes.util

    import llvmlite.binding as llb

    avx2 = "+avx2" in llb.get_host_cpu_features().flatten().split(",")
    has = False
    if avx2 and ctypes.util.find_library("mvec"):
        try:
            ctypes.CDLL(ctypes.util.find_library("mvec"))._ZGVdN4v_erfc  # noqa: B018
            has = True
        except (OSError, AttributeError):
            has = False
    assert vecmath.AVAILABLE == has
    avx512 = "+avx512f" in llb.get_host_cpu_features().flatten().split(",")
    wide = False
    if has and avx512:
        try:
            ctypes.CDLL(ctypes.util.find_library("mvec"))._ZGVeN8v_erfc  # noqa: B018
            wide = True
        except (OSError, AttributeError):
            wide = False
    assert vecmath.WIDE == wide
    assert sorted(vecmath.WIDTHS) == ([4, 8] if wide else [4])
    assert vecmath.erfc_map is vecmath.WIDTHS[8 if wide else 4]["erfc"]


@njit
def _per_unit(backward, a_t, a_r, z_t, z_r, slope, out_t, out_r):
    acc = np.zeros(4, np.int64)
    for n in range(a_t.shape[0]):
        ta, ra, tz, rz = np.float64(a_t[n]), np.float64(a_r[n]), np.float64(z_t[n]), np.float64(z_r[n])
        if backward:
            out_t[n], out_r[n], c, fb, f, low = leaky_cpu.bwd_marginal_one(ta, ra, tz, rz, slope)
            acc[0] += c
            acc[1] += fb
            acc[2] += f
            acc[3] += low
        else:
            out_t[n], out_r[n], fb, f = leaky_cpu.fwd_marginal_one(ta, ra, tz, rz, slope)
            acc[0] += fb
            acc[1] += f
    return acc


def _hard_inputs(rng, n):
    """Ordinary units plus the named hard ones: truncation points deep in the tails (below -3, where the
    tail moments serve, and below -35, where erfc underflows), zero precisions, tiny and huge
    variances, huge means."""
    mu_a, var_a = rng.normal(0, 1, n), 10 ** rng.uniform(-1, 1, n)
    mu_z, var_z = rng.normal(0, 1, n), 10 ** rng.uniform(-1, 1.5, n)
    k = n // 16
    mu_a[:k], var_a[:k], mu_z[:k], var_z[:k] = 2.6, 0.011, -2.1, 0.004  # ~33 sigma out
    mu_a[k:2 * k], var_a[k:2 * k] = -40.0, 1.0  # t around -40: the log-cdf series
    mu_z[2 * k:3 * k], var_z[2 * k:3 * k] = 1e6, 1e-8  # huge mean, tiny variance
    a_t, a_r = mu_a / var_a, 1 / var_a
    z_t, z_r = mu_z / var_z, 1 / var_z
    z_t[3 * k:4 * k] = z_r[3 * k:4 * k] = 0.0  # uniform backward messages
    a_r[4 * k:4 * k + 3] = 1e-12  # nearly uniform inputs
    return a_t, a_r, z_t, z_r


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("n", [1, 203, 3 * leaky_cpu.TILE])
def test_tiled_leaky_kernel_equals_the_per_unit_functions(backward, n):
    """The tiled kernel (four lanes per transcendental call) against ``fwd_marginal_one`` /
    ``bwd_marginal_one`` unit by unit (scalar libm): messages to 1e-12 of the marginal they form, the same
    guard counts, for sizes that leave partial tiles and padded lanes."""
    rng = np.random.default_rng(11 + n)
    a_t, a_r, z_t, z_r = _hard_inputs(rng, max(n, 8))
    a_t, a_r, z_t, z_r = a_t[:n], a_r[:n], z_t[:n], z_r[:n]
    got_t, got_r, want_t, want_r = (np.empty(n) for _ in range(4))
    with np.errstate(all="ignore"):
        got = leaky_cpu._marginal_serial(backward, a_t, a_r, z_t, z_r, 0.1, got_t, got_r)
        want = _per_unit(backward, a_t, a_r, z_t, z_r, 0.1, want_t, want_r)
    np.testing.assert_array_equal(got, want)
    base_r = np.abs(a_r if backward else z_r)
    base_t = np.abs(a_t if backward else z_t)
    scale_r = np.abs(want_r) + base_r
    assert np.all(np.abs(got_r - want_r) <= 1e-12 * scale_r)
    assert np.all(np.abs(got_t - want_t) <= 1e-12 * (np.abs(want_t) + base_t + np.sqrt(scale_r)))


@njit
def _preps(tau1, rho1, tau2, rho2, fast, exact, oks):
    for n in range(tau1.shape[0]):
        fast[n, 0], fast[n, 1], fast[n, 2], fast[n, 3], oks[n] = scalar.block52_prep_fast(
            tau1[n], rho1[n], tau2[n], rho2[n])
        exact[n, 0], exact[n, 1], exact[n, 2], exact[n, 3] = scalar.block52_prep_exact(
            tau1[n], rho1[n], tau2[n], rho2[n])


def _prep_cases(rng, n):
    """Precisions 1e-12 .. 1e12 with means up to 1e6 (the fast form's range), then precisions whose product
    or sum leaves it (1e-300 and 1e-200 pairs, 1e160 pairs, 1e295), then a zero and a NaN precision."""
    rho1, rho2 = 10 ** rng.uniform(-12, 12, n), 10 ** rng.uniform(-12, 12, n)
    tau1, tau2 = rng.normal(0, 1e3, n) * rho1, rng.normal(0, 1e3, n) * rho2
    odd = np.array([[1.0, 1e-300, 1.0, 1.0], [1.0, 1e-200, 1.0, 1e-200], [1.0, 1e160, 2.0, 1e160],
                    [3.0, 1e295, 1.0, 1.0], [0.0, 0.0, 1.0, 2.0], [1.0, 2.0, 0.0, 0.0],
                    [1.0, np.nan, 1.0, 1.0]])
    return [np.concatenate([x, odd[:, k]]) for k, x in enumerate((tau1, rho1, tau2, rho2))], len(odd)


def test_fast_prep_agrees_with_the_exact_one_and_hands_over_outside_its_range():
    """``block52_prep_fast`` (two divisions) against ``block52_prep_exact`` (four): ``t`` and ``sigma_m``
    bit for bit, ``h`` within 1e-13 and ``quad`` (both the log-weight's terms) within 1e-12 (its difference
    of means rounds differently); ``ok`` is False exactly for the
    precisions out of its range, where ``block52_prep`` returns the exact form's numbers."""
    (tau1, rho1, tau2, rho2), k = _prep_cases(np.random.default_rng(5), 2000)
    n = len(tau1)
    fast, exact, oks = np.empty((n, 4)), np.empty((n, 4)), np.empty(n, np.bool_)
    _preps(tau1, rho1, tau2, rho2, fast, exact, oks)
    assert oks[:-k].all() and oks[-3:].all() and not oks[-k:-3].any()  # zeros, NaN: both forms' flat block
    np.testing.assert_array_equal(fast[oks, :2], exact[oks, :2])
    np.testing.assert_allclose(fast[oks, 2], exact[oks, 2], rtol=1e-13)
    np.testing.assert_allclose(fast[oks, 3], exact[oks, 3], rtol=1e-12, atol=1e-13)  # mu1 - mu2 cancels
    combined = np.array([scalar.block52_prep(*args) for args in zip(tau1, rho1, tau2, rho2)])
    np.testing.assert_array_equal(combined[~oks], exact[~oks])
    np.testing.assert_array_equal(combined[oks], fast[oks])


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_tiled_leaky_kernel_takes_the_exact_prep_for_precisions_out_of_the_fast_range(backward):
    """Units whose precision products underflow or overflow (1e-200 against 1e-200 with means -+1e100,
    1e200 against 1e200, 1e300 against 1e10, 1e146 against 1e144) between ordinary ones in one tile: the
    tiled kernel recomputes them by ``block52_prep`` as the per-unit functions do, so it gives their
    messages and guard counts.  Most of them fall back either way; for the last the backward's message
    has precision 1e144, where the two-division form's numbers (a NaN log-weight) make it fall back."""
    rng = np.random.default_rng(3)
    n = leaky_cpu.TILE
    a_t, a_r, z_t, z_r = _hard_inputs(rng, n)
    odd = ((1e100, 1e-200, -1e100, 1e-200), (0.3, 1e200, 0.2, 1e200), (0.3, 1e300, 0.2, 1e10),
           (3e7, 1e146, 1e50, 1e144))
    for i, (ma, ra, mz, rz) in zip((5, 17, 40, 41), odd):
        a_t[i], a_r[i], z_t[i], z_r[i] = ma * ra, ra, mz * rz, rz
    got_t, got_r, want_t, want_r = (np.empty(n) for _ in range(4))
    with np.errstate(all="ignore"):
        got = leaky_cpu._marginal_serial(backward, a_t, a_r, z_t, z_r, 0.1, got_t, got_r)
        want = _per_unit(backward, a_t, a_r, z_t, z_r, 0.1, want_t, want_r)
    np.testing.assert_array_equal(got, want)
    for g, w in ((got_t, want_t), (got_r, want_r)):
        assert np.array_equal(np.isfinite(g), np.isfinite(w))
        ok = np.isfinite(w)
        np.testing.assert_allclose(g[ok], w[ok], rtol=1e-12, atol=1e-300)


@njit
def _per_unit_moment_match(a_t, a_r, slope, out_t, out_r):
    floors = 0
    for n in range(a_t.shape[0]):
        out_t[n], out_r[n], f = leaky_cpu.moment_match_one(np.float64(a_t[n]), np.float64(a_r[n]), slope)
        floors += f
    return floors


@pytest.mark.parametrize("n", [1, 203])
def test_tiled_moment_match_equals_the_per_unit_function(n):
    """Prediction's moment matching, tiled, against ``moment_match_one`` unit by unit: standardised means
    from -40 to 40 (both sides' tails, where the u-floor fires), tiny and huge variances."""
    rng = np.random.default_rng(n)
    mu = np.concatenate([np.linspace(-40, 40, 101), rng.normal(0, 2, max(n, 1))])[:n]
    var = 10.0 ** rng.uniform(-8, 4, n)
    a_t, a_r = mu / np.sqrt(var), 1 / var  # t = mu / sqrt(var) spans the tails
    got_t, got_r, want_t, want_r = (np.empty(n) for _ in range(4))
    assert leaky_cpu._moment_match_serial(a_t, a_r, 0.1, got_t, got_r) == _per_unit_moment_match(
        a_t, a_r, 0.1, want_t, want_r)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-13)
    assert np.all(np.abs(got_t - want_t) <= 1e-13 * (np.abs(want_t) + np.sqrt(want_r)))
