"""Numba CUDA kernels of the argmax and softmax backward messages: one thread per example (argmax) or
per logit (softmax), on device copies of the CPU per-class functions of
:mod:`factorgraph.kernels.signals_cpu` (same numbers, same guards)."""

# first: carries a NumPy shim for numba.cuda
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda  # noqa: E402, I001

from factorgraph.kernels import scalar, signals_cpu
from factorgraph.kernels.signals_cpu import A_U_FLOOR, GL_W, GL_X, S_CLAMP, S_IMPROPER, S_LOW, S_NONFINITE

_D = device_functions([scalar, signals_cpu], [
    "log_ndtr", "tail_moments", "shift_and_factor_log", "shift_and_factor", "argmax_pair_one", "_edge", "_q",
    "_panel", "_node",
    "softmax_one", "softmax_message_one", "_t", "softmax_setup", "softmax_logit", "log_ndtr_pair",
    "_pairwise", "argmax_probs_row"])
_pair, _logit, _probs_row = _D["argmax_pair_one"], _D["softmax_logit"], _D["argmax_probs_row"]


@cuda.jit
def _argmax_kernel(tau, rho, y, beta2, reg_var, regularize, out_t, out_r, counts):
    e = cuda.grid(1)
    n, C = tau.shape
    if e >= n:
        return
    yy = y[e]
    mu_y = tau[e, yy] / rho[e, yy]
    var_y = 1.0 / rho[e, yy]
    acc_t = 0.0
    acc_r = 0.0
    reg = 1.0 / reg_var if regularize else 0.0
    for i in range(C):
        if i == yy:
            continue
        ty, ry, ti, ri, f = _pair(mu_y, var_y, tau[e, i] / rho[e, i], 1.0 / rho[e, i], beta2)
        if f:
            cuda.atomic.add(counts, A_U_FLOOR, f)
        acc_t += ty
        acc_r += ry
        out_t[e, i] = ti - reg
        out_r[e, i] = ri + reg
    out_t[e, yy] = acc_t + reg
    out_r[e, yy] = acc_r + reg


@cuda.jit
def _softmax_kernel(tau, rho, y, xg, wg, out_t, out_r, counts):
    e, i = cuda.grid(2)
    n, C = tau.shape
    if e >= n or i >= C:
        return
    t, r, low, nonfin, improper, clamp = _logit(tau[e], rho[e], C, i, y[e], xg, wg)
    out_t[e, i] = t
    out_r[e, i] = r
    if low:
        cuda.atomic.add(counts, S_LOW, 1)
    if nonfin:
        cuda.atomic.add(counts, S_NONFINITE, 1)
    if improper:
        cuda.atomic.add(counts, S_IMPROPER, 1)
    if clamp:
        cuda.atomic.add(counts, S_CLAMP, 1)


@cuda.jit
def _argmax_probs_kernel(tau, rho, beta2, out):
    n = cuda.grid(1)
    if n < tau.shape[0]:
        _probs_row(tau[n], rho[n], beta2, out[n])


_GL = {}


def _gl_nodes():
    if "x" not in _GL:
        _GL["x"], _GL["w"] = cuda.to_device(GL_X), cuda.to_device(GL_W)
    return _GL["x"], _GL["w"]


def argmax_bwd(tau, rho, y, beta2, reg_var, regularize, out_t, out_r, counts):
    launch(_argmax_kernel, grid(tau.shape[0], 64), tau, rho, y, beta2, reg_var, regularize, out_t, out_r, counts)


def softmax_bwd(tau, rho, y, xg, wg, out_t, out_r, counts):
    """Same signature as the CPU kernel; ``xg``, ``wg`` (host Gauss-Legendre nodes) are replaced by cached
    device copies."""
    xg, wg = _gl_nodes()
    n, C = tau.shape
    threads = (8, 16)
    blocks = ((n + 7) // 8, (C + 15) // 16)
    launch(_softmax_kernel, (blocks, threads), tau, rho, y, xg, wg, out_t, out_r, counts)


def argmax_probs(tau, rho, beta2, out):
    launch(_argmax_probs_kernel, grid(tau.shape[0]), tau, rho, beta2, out)


KERNELS = {"argmax_bwd": _argmax_kernel, "softmax_bwd": _softmax_kernel, "argmax_probs": _argmax_probs_kernel}
