"""Numba CUDA kernels of the LeakyReLU factor: one thread per unit, on device copies of the CPU
per-element functions of :mod:`factorgraph.kernels.leaky_cpu` (same numbers, same guards)."""

# first: it carries a NumPy shim numba.cuda needs
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda  # noqa: E402, I001

from factorgraph.kernels import leaky_cpu, scalar
from factorgraph.kernels.leaky_cpu import L_BWD_CLAMP, L_BWD_FALLBACK, L_FWD_FALLBACK, L_MIN_RHO, L_U_FLOOR

_D = device_functions([scalar, leaky_cpu], [
    "log_ndtr", "tail_moments", "shift_and_factor_log", "shift_and_factor", "shift_and_factor_from",
    "block52_prep_fast", "block52_prep_exact", "block52_prep", "erfc_log_weight_ok", "block52_log_weight",
    "block52_parts", "floored_moments",
    "block52_moments", "mixture_exponent", "mixture_with", "mixture", "moment_match_t", "moment_match_args",
    "moment_match_from", "moment_match_one", "fwd_needs_fallback", "fwd_from_mixture", "fwd_marginal_one",
    "bwd_from_mixture", "bwd_marginal_one"])
_mm, _fwd, _bwd = _D["moment_match_one"], _D["fwd_marginal_one"], _D["bwd_marginal_one"]


@cuda.jit
def _moment_match_kernel(a_t, a_r, slope, out_t, out_r, counts):
    n = cuda.grid(1)
    if n < a_t.shape[0]:
        t, r, f = _mm(a_t[n], a_r[n], slope)
        out_t[n] = t
        out_r[n] = r
        if f:
            cuda.atomic.add(counts, L_U_FLOOR, f)


@cuda.jit(device=True, inline=True)
def _fwd_unit(a_t, a_r, z_t, z_r, i, j, slope, out_t, out_r, counts):
    """Training forward of the unit with input ``a[i]`` and backward message ``z[j]`` into ``out[i]``."""
    t, r, fb, f = _fwd(a_t[i], a_r[i], z_t[j], z_r[j], slope)
    out_t[i] = t
    out_r[i] = r
    if fb:
        cuda.atomic.add(counts, L_FWD_FALLBACK, 1)
    if f:
        cuda.atomic.add(counts, L_U_FLOOR, f)


@cuda.jit(device=True, inline=True)
def _bwd_unit(a_t, a_r, z_t, z_r, i, j, slope, out_t, out_r, counts):
    """Backward message of the unit with input ``a[i]`` and backward message ``z[j]`` into ``out[j]``."""
    t, r, c, fb, f, low = _bwd(a_t[i], a_r[i], z_t[j], z_r[j], slope)
    out_t[j] = t
    out_r[j] = r
    if c:
        cuda.atomic.add(counts, L_BWD_CLAMP, 1)
    if fb:
        cuda.atomic.add(counts, L_BWD_FALLBACK, 1)
    if f:
        cuda.atomic.add(counts, L_U_FLOOR, f)
    if low:
        cuda.atomic.add(counts, L_MIN_RHO, 1)


@cuda.jit
def _fwd_marginal_kernel(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    n = cuda.grid(1)
    if n < a_t.shape[0]:
        _fwd_unit(a_t, a_r, z_t, z_r, n, n, slope, out_t, out_r, counts)


@cuda.jit
def _bwd_marginal_kernel(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    n = cuda.grid(1)
    if n < a_t.shape[0]:
        _bwd_unit(a_t, a_r, z_t, z_r, n, n, slope, out_t, out_r, counts)


@cuda.jit(device=True, inline=True)
def _slot(rows, units, n):
    """Flat index of element ``n`` of a chunk's (c, units) messages in its slot's row of a (slots, units)
    cache."""
    return rows[n // units] * units + n % units


@cuda.jit
def _fwd_slots_kernel(a_t, a_r, ca_t, ca_r, cz_t, cz_r, rows, units, slope, out_t, out_r, counts):
    n = cuda.grid(1)
    if n < a_t.shape[0]:
        s = _slot(rows, units, n)
        ca_t[s] = a_t[n]
        ca_r[s] = a_r[n]
        _fwd_unit(a_t, a_r, cz_t, cz_r, n, s, slope, out_t, out_r, counts)


@cuda.jit
def _bwd_slots_kernel(z_t, z_r, cz_t, cz_r, ca_t, ca_r, rows, units, slope, out_t, out_r, counts):
    n = cuda.grid(1)
    if n < z_t.shape[0]:
        s = _slot(rows, units, n)
        cz_t[s] = z_t[n]
        cz_r[s] = z_r[n]
        _bwd_unit(ca_t, ca_r, z_t, z_r, s, n, slope, out_t, out_r, counts)


def leaky_fwd_moment_match(a_t, a_r, slope, out_t, out_r, counts):
    launch(_moment_match_kernel, grid(a_t.shape[0]), a_t, a_r, slope, out_t, out_r, counts)


def leaky_fwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    launch(_fwd_marginal_kernel, grid(a_t.shape[0]), a_t, a_r, z_t, z_r, slope, out_t, out_r, counts)


def leaky_bwd_marginal(a_t, a_r, z_t, z_r, slope, out_t, out_r, counts):
    launch(_bwd_marginal_kernel, grid(a_t.shape[0]), a_t, a_r, z_t, z_r, slope, out_t, out_r, counts)


def leaky_fwd_marginal_slots(a_t, a_r, cache_a_t, cache_a_r, cache_z_t, cache_z_r, rows, slope, out_t, out_r,
                             counts):
    """As :func:`factorgraph.kernels.leaky_cpu.leaky_fwd_marginal_slots` (``rows`` a device array)."""
    launch(_fwd_slots_kernel, grid(a_t.shape[0]), a_t, a_r, cache_a_t, cache_a_r, cache_z_t, cache_z_r, rows,
           a_t.shape[0] // rows.shape[0], slope, out_t, out_r, counts)


def leaky_bwd_marginal_slots(z_t, z_r, cache_z_t, cache_z_r, cache_a_t, cache_a_r, rows, slope, out_t, out_r,
                             counts):
    """As :func:`factorgraph.kernels.leaky_cpu.leaky_bwd_marginal_slots` (``rows`` a device array)."""
    launch(_bwd_slots_kernel, grid(z_t.shape[0]), z_t, z_r, cache_z_t, cache_z_r, cache_a_t, cache_a_r, rows,
           z_t.shape[0] // rows.shape[0], slope, out_t, out_r, counts)


KERNELS = {"leaky_moment_match": _moment_match_kernel, "leaky_fwd_marginal": _fwd_marginal_kernel,
           "leaky_bwd_marginal": _bwd_marginal_kernel, "leaky_fwd_marginal_slots": _fwd_slots_kernel,
           "leaky_bwd_marginal_slots": _bwd_slots_kernel}
