"""Numba CUDA kernels of max pooling (prediction, training forward and backward): one thread per output
window, on device copies of the per-window functions of :mod:`factorgraph.kernels.pool_cpu` (same
numbers, same guards)."""

# first: carries a NumPy shim for numba.cuda
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda, float64  # noqa: E402, I001

from factorgraph.kernels import pool_cpu, scalar, signals_cpu
from factorgraph.kernels.pool_cpu import GUARD_NAMES, P_CLAMP, P_SMALL  # noqa: F401  (the CPU module's API)

_D = device_functions([scalar, signals_cpu, pool_cpu], [
    "log_ndtr", "tail_moments", "shift_and_factor_log", "shift_and_factor", "log_ndtr_pair",
    "_pairwise", "argmax_probs_row", "window_moments", "pool_window", "window_fwd", "window_out", "pixel_bwd",
    "window_bwd"])
_window_fwd, _window_bwd = _D["window_fwd"], _D["window_bwd"]
#: largest window (k * k) of the kernels (per-thread scratch); larger windows take the generic path
MAX_POOL_WINDOW = 64


@cuda.jit(device=True)
def _window_index(g, h, w, C):
    """(n, i, j, c) of thread ``g`` over output windows (N, h, w, C)."""
    c = g % C
    rest = g // C
    j = rest % w
    rest //= w
    return rest // h, rest % h, j, c


@cuda.jit
def _fwd_kernel(tau, rho, k, beta2, out_t, out_r, P, keep_p):
    g = cuda.grid(1)
    if g < out_t.size:
        n, i, j, c = _window_index(g, out_t.shape[1], out_t.shape[2], out_t.shape[3])
        wt = cuda.local.array(MAX_POOL_WINDOW, float64)
        wr = cuda.local.array(MAX_POOL_WINDOW, float64)
        p = cuda.local.array(MAX_POOL_WINDOW, float64)
        _window_fwd(tau, rho, n, i, j, c, k, beta2, wt, wr, p, out_t, out_r, P, keep_p)


@cuda.jit
def _bwd_kernel(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, counts):
    g = cuda.grid(1)
    if g < f_t.size:
        n, i, j, c = _window_index(g, f_t.shape[1], f_t.shape[2], f_t.shape[3])
        small, clamp = _window_bwd(tau, rho, P, f_t, f_r, r_t, r_r, n, i, j, c, k, out_t, out_r)
        if small:
            cuda.atomic.add(counts, P_SMALL, small)
        if clamp:
            cuda.atomic.add(counts, P_CLAMP, clamp)


_NO_P = {}


def maxpool_predict(tau, rho, k, beta2, out_t, out_r):
    """:func:`factorgraph.kernels.pool_cpu.maxpool_predict` on device arrays (``k * k <= MAX_POOL_WINDOW``).
    The unused probabilities argument is a separate one-element array: an argument aliasing ``out_t``
    would be copied back over it where Numba copies arguments (host arrays, the simulator)."""
    no_p = _NO_P.get(out_t.dtype)
    if no_p is None:
        no_p = _NO_P[out_t.dtype] = cuda.device_array((1, 1, 1, 1), out_t.dtype)
    launch(_fwd_kernel, grid(out_t.size), tau, rho, k, beta2, out_t, out_r, no_p, False)


def maxpool_fwd(tau, rho, k, beta2, out_t, out_r, P):
    """:func:`factorgraph.kernels.pool_cpu.maxpool_fwd` on device arrays."""
    launch(_fwd_kernel, grid(out_t.size), tau, rho, k, beta2, out_t, out_r, P, True)


def maxpool_bwd(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, counts):
    """:func:`factorgraph.kernels.pool_cpu.maxpool_bwd` on device arrays (the counts stay on the device)."""
    launch(_bwd_kernel, grid(f_t.size), tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, counts)


KERNELS = {"maxpool_fwd": _fwd_kernel, "maxpool_bwd": _bwd_kernel}
