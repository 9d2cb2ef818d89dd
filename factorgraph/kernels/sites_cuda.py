"""Numba CUDA kernel of the weight-site replacement of :class:`factorgraph.factor.WeightSlots`: one
thread per weight, on the device copy of :func:`factorgraph.kernels.sites_cpu.step_one` (the same
numbers and the same ``parallel_step_limit`` count as :func:`factorgraph.kernels.sites_cpu.replace_site`)."""

from factorgraph.kernels._device import device_functions, grid  # first: it carries a NumPy shim numba.cuda needs
from numba import cuda  # noqa: E402, I001

from factorgraph.kernels import sites_cpu

_step = device_functions([sites_cpu], ["step_one"])["step_one"]


@cuda.jit
def _replace_kernel(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts):
    j = cuda.grid(1)
    if j < q_t.shape[0]:
        ot = s_t[j]
        orr = s_r[j]
        nt, nr, hit = _step(q_t[j], q_r[j], ot, orr, new_t[j], new_r[j], damping, kappa, damping != 1.0, kappa > 0)
        q_t[j] += nt - ot
        q_r[j] += nr - orr
        s_t[j] = nt
        s_r[j] = nr
        if hit:
            cuda.atomic.add(counts, 0, 1)


KERNELS = {"replace_site": _replace_kernel}


def replace_site(q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts):
    """:func:`factorgraph.kernels.sites_cpu.replace_site` on device arrays (flat, ``q`` and ``s`` in
    place); adds the number of weights the bound limited to ``counts[0]`` instead of returning it."""
    _replace_kernel[grid(q_t.shape[0])](q_t, q_r, s_t, s_r, new_t, new_r, damping, kappa, counts)
