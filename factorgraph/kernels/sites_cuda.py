"""Numba CUDA kernels of the weight sites of :class:`factorgraph.factor.WeightSlots`: the replacement, one
thread per weight on the device copy of :func:`factorgraph.kernels.sites_cpu.step_one` (the same numbers and
the same ``parallel_step_limit`` count as :func:`factorgraph.kernels.sites_cpu.replace_site`), and the
cavity with its moments (:func:`factorgraph.kernels.sites_cpu.cavity_moments`, counts on the device)."""

# first: it carries a NumPy shim numba.cuda needs
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda  # noqa: E402, I001

import math

import numpy as np

from factorgraph.kernels import moments_cpu, sites_cpu

_D = device_functions([sites_cpu, moments_cpu], ["step_one", "replace_one", "cavity_one", "moments_one"])
_replace_one, _cavity_one, _moments_one = _D["replace_one"], _D["cavity_one"], _D["moments_one"]


@cuda.jit
def _replace_kernel(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts):
    j = cuda.grid(1)
    if j < q_t.shape[0]:
        if _replace_one(q_t, q_r, s_t, s_r, j, new_t[j], new_r[j], damping, kappa, damping != 1.0,
                        kappa > 0):
            cuda.atomic.add(counts, 0, 1)


@cuda.jit(device=True, inline=True)
def cavity_counted(q_t, q_r, s_t, s_r, j, rtol, zero, one, inf, counts):
    """Element ``j`` of the strict division ``q / s``: ``(tau, rho, mean, var)``, adding a round-off
    deficit to ``counts[0]`` and one beyond it to ``counts[1]``."""
    t, d, rounded, beyond = _cavity_one(q_t[j], q_r[j], s_t[j], s_r[j], rtol, zero)
    if rounded:
        cuda.atomic.add(counts, 0, 1)
    if beyond:
        cuda.atomic.add(counts, 1, 1)
    mu, var = _moments_one(t, d, zero, one, inf)
    return t, d, mu, var


@cuda.jit
def _cavity_kernel(q_t, q_r, s_t, s_r, rtol, zero, one, inf, out_t, out_r, out_mu, out_var, counts):
    j = cuda.grid(1)
    if j < q_t.shape[0]:
        t, d, mu, var = cavity_counted(q_t, q_r, s_t, s_r, j, rtol, zero, one, inf, counts)
        out_t[j] = t
        out_r[j] = d
        out_mu[j] = mu
        out_var[j] = var


@cuda.jit
def _check_kernel(q_t, q_r, p_t, p_r, limit, out, row):
    """:func:`factorgraph.kernels.sites_cpu.marginal_check` of one tensor into ``out[row]``: the number of
    elements not finite and proper, the number of means beyond ``limit`` prior sds, the largest shift."""
    i = cuda.grid(1)
    if i < q_t.shape[0]:
        qt = q_t[i]
        qr = q_r[i]
        if not (math.isfinite(qt) and qr > 0 and math.isfinite(qr)):
            cuda.atomic.add(out, (row, 0), 1.0)
        mq = _moments_one(qt, qr, 0.0, 1.0, math.inf)[0]
        mp = _moments_one(p_t[i], p_r[i], 0.0, 1.0, math.inf)[0]
        shift = abs(mq - mp) * math.sqrt(p_r[i])
        if shift > limit:
            cuda.atomic.add(out, (row, 1), 1.0)
            cuda.atomic.max(out, (row, 2), shift)


KERNELS = {"replace_site": _replace_kernel, "cavity_moments": _cavity_kernel, "marginal_check": _check_kernel}


def replace_site(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts):
    """:func:`factorgraph.kernels.sites_cpu.replace_site` on device arrays (flat, ``q`` and ``s`` in
    place); adds the number of weights the bound limited to ``counts[0]`` instead of returning it."""
    launch(_replace_kernel, grid(q_t.shape[0]), q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts)


def cavity_moments(q_t, q_r, s_t, s_r, rtol, out_t, out_r, out_mu, out_var, counts):
    """:func:`factorgraph.kernels.sites_cpu.cavity_moments` on device arrays: adds the round-off count to
    ``counts[0]`` and the count beyond it to ``counts[1]`` instead of returning them."""
    t = q_t.dtype.type
    launch(_cavity_kernel, grid(q_t.shape[0]), q_t, q_r, s_t, s_r, t(rtol), t(0), t(1), t(np.inf), out_t,
           out_r, out_mu, out_var, counts)


def marginal_checks(tensors, limit):
    """:func:`factorgraph.kernels.sites_cpu.marginal_check` of several weight marginals at once (a list of
    ``(q_tau, q_rho, prior_tau, prior_rho)`` device arrays), read back in one transfer: a list of
    ``(ok, far, top)`` (``top`` the largest shift beyond ``limit``, ``-inf`` where none is)."""
    from factorgraph.backend import get_array_module, to_device

    xp = get_array_module(tensors[0][0])
    out = xp.zeros((len(tensors), 3), np.float64)
    out[:, 2] = -np.inf
    for row, arrays in enumerate(tensors):
        flat = [a.reshape(-1) for a in arrays]
        launch(_check_kernel, grid(flat[0].shape[0]), *flat, float(limit), out, row)
    return [(bad == 0, int(far), float(top)) for bad, far, top in to_device(out, "cpu")]
