"""Numba CUDA kernels of a chunk of examples through a dense layer: the fused chunk path of
:mod:`factorgraph.kernels.chunk_cpu` on the GPU, function for function (same arguments, same results).

On the GPU a chunk's cost is the host's: each CuPy operation or kernel launch takes 10-20 us of host time
whatever its size, and the NumPy form of a chunk (the equations on CuPy arrays) takes hundreds of them
plus a host round-trip per strict division.  Here each elementwise step is one kernel over device copies
of the CPU per-element functions (the cavity or marginal moments of the weights; the inputs' marginals;
``g, h`` with the bias message; the site replacement with damping and step bound; the messages to the
inputs with the edge rule and ``min_rho``), and each matrix product one cuBLAS call through CuPy
(``xp.matmul``, on transposed views where the CPU kernels pass transposes to BLAS).  The kernels add their
guard counts to :func:`factorgraph.guards.device_counts` (read once per batch), so where a chunk_cpu
function returns a count its namesake here returns 0 (nothing left for the caller to record); only
:func:`s1_chunk_forward` brings its counts to the host, as its caller branches on them (one host
round-trip per chunk).

The functions also run in Numba's CUDA simulator on NumPy arrays (``xp`` is then NumPy), which is how the
tests without a GPU check them against :mod:`factorgraph.kernels.chunk_cpu`.
"""

# first: it carries a NumPy shim numba.cuda needs
from factorgraph.kernels._device import device_functions, grid, launch
from numba import cuda  # noqa: E402, I001

import numpy as np

from factorgraph import guards
from factorgraph.backend import get_array_module
from factorgraph.kernels import chunk_cpu, device_index, moments_cpu, scalar, sites_cpu
from factorgraph.kernels.chunk_cpu import BAD, ROUNDOFF, ZERO  # noqa: F401  (re-exported, as in chunk_cpu)
from factorgraph.kernels.sites_cuda import cavity_counted

_D = device_functions([sites_cpu, moments_cpu, scalar, chunk_cpu],
                      ["moments_one", "step_one", "replace_one", "s1_term", "_min_rho"])
_moments_one, _replace_one = _D["moments_one"], _D["replace_one"]
_s1_term, _min_rho = _D["s1_term"], _D["_min_rho"]

# site replacement modes: the new message from the products (see _replace_kernel)
_S1, _S1_EXPANDED, _S2 = 0, 1, 2


def _consts(dt):
    """``zero, one, inf`` in the arrays' dtype (a float64 literal would make a float32 kernel compute in
    float64)."""
    t = np.dtype(dt).type
    return t(0), t(1), t(np.inf)


@cuda.jit
def _cavity_kernel(q_t, q_r, s_t, s_r, rtol, zero, one, inf, mu, var, counts):
    """Moments of the cavity ``q / s`` (strict division, flat arrays), counting round-off, deficits beyond
    it and zero precisions into ``counts[ROUNDOFF, BAD, ZERO]``."""
    i = cuda.grid(1)
    if i < q_t.shape[0]:
        _, d, mu[i], var[i] = cavity_counted(q_t, q_r, s_t, s_r, i, rtol, zero, one, inf, counts)
        if not d > zero:
            cuda.atomic.add(counts, 2, 1)


@cuda.jit
def _marginal_kernel(q_t, q_r, zero, one, inf, mu, var, mu2, m2):
    """Mean, variance, squared mean and second moment of the marginal (flat arrays)."""
    i = cuda.grid(1)
    if i < q_t.shape[0]:
        m, v = _moments_one(q_t[i], q_r[i], zero, one, inf)
        mu[i] = m
        var[i] = v
        sq = m * m
        mu2[i] = sq
        m2[i] = v + sq


@cuda.jit
def _replace_kernel(q_t, q_r, s_t, s_r, tau, rho, mu, var, prod_t, prod_r, mode, damping, kappa, damp, bound,
                    counts):
    """The chunk's joint weight message from its products, replacing the site in place (flat arrays):
    S1 ``tau + mu rho`` (expanded: ``rho += var prod_r``, ``tau += var prod_t`` first), S2
    ``tau + mu prod_t``, each as the CPU kernel adds them; then :func:`sites_cpu.step_one` (damping, step
    bound), the marginal update and the store (:func:`sites_cpu.replace_one`); bound hits counted into
    ``counts[0]``."""
    i = cuda.grid(1)
    if i < q_t.shape[0]:
        r = rho[i]
        t = tau[i]
        if mode == _S1_EXPANDED:
            r += var[i] * prod_r[i]
            t += var[i] * prod_t[i]
        if mode == _S2:
            t += mu[i] * prod_t[i]
        else:
            t += mu[i] * r
        if _replace_one(q_t, q_r, s_t, s_r, i, t, r, damping, kappa, damp, bound):
            cuda.atomic.add(counts, 0, 1)


@cuda.jit
def _input_marginal_kernel(in_t, in_r, mx_t, mx_r, idx, m, zero, one, inf, out_t, out_r, out_mu, out_var,
                           counts):
    n = cuda.grid(1)
    K = in_t.shape[1]
    if n < in_t.shape[0] * K:
        u = n // K
        k = n - u * K
        i = idx[u]
        t, r, low = _min_rho(in_t[u, k] + mx_t[i, k], in_r[u, k] + mx_r[i, k], m, zero)
        if low:
            cuda.atomic.add(counts, 0, 1)
        out_t[u, k] = t
        out_r[u, k] = r
        out_mu[u, k], out_var[u, k] = _moments_one(t, r, zero, one, inf)


@cuda.jit
def _store_inputs_kernel(ta, ra, f_r, r_r, tiny, m, zero, out_t, out_r, mx_t, mx_r, idx, counts):
    """:func:`chunk_cpu.store_input_messages`, one thread per input (each finds its example's edge-rule flag:
    the loop ends at the first precision above ``tiny``, at once in practice); counts
    ``[flat examples, min_rho clamps]``."""
    n = cuda.grid(1)
    K = out_t.shape[1]
    if n < out_t.shape[0] * K:
        u = n // K
        k = n - u * K
        flat = True
        for j in range(f_r.shape[1]):
            if f_r[u, j] > tiny or r_r[u, j] > tiny:
                flat = False
                break
        if flat and k == 0:
            cuda.atomic.add(counts, 0, 1)
        t, r, low = _min_rho(zero if flat else ta[u, k], m if flat else ra[u, k], m, zero)
        if low:
            cuda.atomic.add(counts, 1, 1)
        i = idx[u]
        out_t[u, k] = t
        out_r[u, k] = r
        mx_t[i, k] = t
        mx_r[i, k] = r


@cuda.jit
def _add_bias_kernel(mu, var, c_mu, c_var, one, tau, rho):
    n = cuda.grid(1)
    J = mu.shape[1]
    if n < mu.shape[0] * J:
        u = n // J
        j = n - u * J
        m = mu[u, j] + c_mu[j]
        v = var[u, j] + c_var[j]
        mu[u, j] = m
        var[u, j] = v
        tau[u, j] = m / v
        rho[u, j] = one / v


@cuda.jit
def _gh_bias_kernel(f_mu, f_var, r_t, r_r, c_mu, c_var, one, g, h, bias, counts):
    """:func:`chunk_cpu.gh_bias`, one thread per output ``j`` summing the bias message over the uses in
    their order (the CPU kernel's sums)."""
    j = cuda.grid(1)
    if j < f_mu.shape[1]:
        bt = one - one  # zero in the dtype
        br = bt
        clamps = 0
        for u in range(f_mu.shape[0]):
            rr = r_r[u, j]
            d = one + rr * f_var[u, j]
            h[u, j] = rr / d
            g[u, j] = (r_t[u, j] - rr * f_mu[u, j]) / d
            t, r, c = _s1_term(one, c_mu[j], c_var[j], f_mu[u, j], f_var[u, j], r_t[u, j], rr)
            bt += t
            br += r
            clamps += c
        bias[0, j] = bt
        bias[1, j] = br
        if clamps:
            cuda.atomic.add(counts, 0, clamps)


@cuda.jit
def _add_product_kernel(out, a, b):
    """``out += a * b`` (2-D arrays of one shape)."""
    n = cuda.grid(1)
    J = out.shape[1]
    if n < out.shape[0] * J:
        u = n // J
        j = n - u * J
        out[u, j] += a[u, j] * b[u, j]


KERNELS = {"chunk_cavity": _cavity_kernel, "chunk_marginal": _marginal_kernel,
           "chunk_replace": _replace_kernel,
           "chunk_input_marginal": _input_marginal_kernel, "chunk_store_inputs": _store_inputs_kernel,
           "chunk_add_bias": _add_bias_kernel, "chunk_gh_bias": _gh_bias_kernel,
           "chunk_add_product": _add_product_kernel}


# --- host functions: chunk_cpu's, on device arrays ---------------------------------------------------

_SCRATCH = {}  # array module -> counts nobody reads


def _cavity(q_t, q_r, s_t, s_r, rtol, counts):
    """Cavity moments ``(mu, var)`` of the (K, J) weights, adding to ``counts`` (round-off, bad, zero)."""
    xp = get_array_module(q_t)
    zero, one, inf = _consts(q_t.dtype)
    mu, var = xp.empty(q_t.shape, q_t.dtype), xp.empty(q_t.shape, q_t.dtype)
    launch(_cavity_kernel, grid(q_t.size), q_t.reshape(-1), q_r.reshape(-1), s_t.reshape(-1), s_r.reshape(-1),
           q_t.dtype.type(rtol), zero, one, inf, mu.reshape(-1), var.reshape(-1), counts)
    return mu, var


def _marginal(q_t, q_r):
    """``(mu, var, mu^2, var + mu^2)`` of the (K, J) marginal."""
    xp = get_array_module(q_t)
    out = [xp.empty(q_t.shape, q_t.dtype) for _ in range(4)]
    launch(_marginal_kernel, grid(q_t.size), q_t.reshape(-1), q_r.reshape(-1), *_consts(q_t.dtype),
           *(o.reshape(-1) for o in out))
    return out


def _replace(q_t, q_r, s_t, s_r, tau, rho, mu, var, prod_t, prod_r, mode, damping, kappa):
    dt = q_t.dtype.type
    flat = [a.reshape(-1) for a in (q_t, q_r, s_t, s_r, tau, rho, mu, var, prod_t, prod_r)]
    launch(_replace_kernel, grid(q_t.size), *flat, mode, dt(damping), dt(kappa), bool(damping != 1.0),
           bool(kappa > 0), guards.device_counts(("parallel_step_limit",), get_array_module(q_t)))
    return 0


def s1_inputs(x):
    """``(x, x * x)``, C-contiguous (:func:`chunk_cpu.s1_inputs`)."""
    xp = get_array_module(x)
    x = xp.ascontiguousarray(x)
    return x, x * x


def s1_chunk_forward(inputs, q_t, q_r, s_t, s_r, rtol, out_mu, out_var):
    """:func:`chunk_cpu.s1_chunk_forward`: the counts come back to the host (the caller branches on them)."""
    xp = get_array_module(q_t)
    x, x2 = inputs
    counts = xp.zeros(3, np.int64)
    mu, var = _cavity(q_t, q_r, s_t, s_r, rtol, counts)
    xp.matmul(x, mu, out=out_mu)
    xp.matmul(x2, var, out=out_var)
    return counts.get() if xp is not np else counts


def s1_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, rtol, damping, kappa, expansion):
    """:func:`chunk_cpu.s1_chunk_backward` (the bound's count kept on the device: returns 0)."""
    xp = get_array_module(q_t)
    a, a2 = inputs
    # the forward counted this cavity's divisions (the same q and s): these counts go to a scratch array
    scratch = _SCRATCH.get(xp.__name__)
    if scratch is None:
        scratch = _SCRATCH[xp.__name__] = xp.zeros(3, np.int64)
    mu, var = _cavity(q_t, q_r, s_t, s_r, rtol, scratch)
    rho = xp.matmul(a2.T, h)
    tau = xp.matmul(a.T, g)
    if expansion == 1:
        prod_r, prod_t = xp.matmul((a2 * a2).T, h * h), xp.matmul((a2 * a).T, g * h)
        mode = _S1_EXPANDED
    else:
        prod_t = prod_r = tau
        mode = _S1
    return _replace(q_t, q_r, s_t, s_r, tau, rho, mu, var, prod_t, prod_r, mode, damping, kappa)


def s2_inputs(mu_a, var_a):
    """``(mu_a, var_a, mu_a * mu_a)``, C-contiguous (:func:`chunk_cpu.s2_inputs`)."""
    xp = get_array_module(mu_a)
    mu_a = xp.ascontiguousarray(mu_a)
    return mu_a, xp.ascontiguousarray(var_a), mu_a * mu_a


def s2_chunk_forward(inputs, q_t, q_r, out_mu, out_var):
    """:func:`chunk_cpu.s2_chunk_forward`."""
    xp = get_array_module(q_t)
    mua, vara, mua2 = inputs
    mu, var, _, m2 = _marginal(q_t, q_r)
    xp.matmul(mua, mu, out=out_mu)
    xp.matmul(mua2, var, out=out_var)
    out_var += xp.matmul(vara, m2)


def s2_chunk_backward(inputs, g, h, q_t, q_r, s_t, s_r, damping, kappa):
    """:func:`chunk_cpu.s2_chunk_backward`: ``(tau_a, rho_a, 0)`` (the bound's count kept on the device).
    All products read the marginal before the replacement, as there."""
    xp = get_array_module(q_t)
    mua, vara, mua2 = inputs
    mu, var, mu2, m2 = _marginal(q_t, q_r)
    ra = xp.matmul(h, m2.T)
    ta = xp.matmul(g, mu.T)
    launch(_add_product_kernel, grid(ta.size), ta, mua, xp.matmul(h, mu2.T))
    rho = xp.matmul((vara + mua2).T, h)
    tau = xp.matmul(mua.T, g)
    prod = xp.matmul(mua2.T, h)
    hits = _replace(q_t, q_r, s_t, s_r, tau, rho, mu, var, prod, prod, _S2, damping, kappa)
    return ta, ra, hits


def input_marginal(in_t, in_r, mx_t, mx_r, idx, m, out_t, out_r, out_mu, out_var):
    """:func:`chunk_cpu.input_marginal` (``idx`` a host array; the clamps counted on the device: returns
    0)."""
    xp = get_array_module(in_t)
    zero, one, inf = _consts(in_t.dtype)
    launch(_input_marginal_kernel, grid(in_t.size), in_t, in_r, mx_t, mx_r, device_index(idx, xp),
           in_t.dtype.type(m), zero, one, inf, out_t, out_r, out_mu, out_var,
           guards.device_counts(("min_rho_clamp",), xp))
    return 0


def store_input_messages(ta, ra, f_r, r_r, tiny, m, out_t, out_r, mx_t, mx_r, idx):
    """:func:`chunk_cpu.store_input_messages`, the counts kept on the device: returns ``(0, 0)``."""
    xp = get_array_module(ta)
    dt = out_t.dtype.type
    counts = guards.device_counts(("linear_all_tiny_precision", "min_rho_clamp"), xp)
    launch(_store_inputs_kernel, grid(out_t.size), ta, ra, f_r, r_r, dt(tiny), dt(m), dt(0), out_t, out_r,
           mx_t, mx_r, device_index(idx, xp), counts)
    return 0, 0


def add_bias(mu, var, c_mu, c_var, tau, rho):
    """:func:`chunk_cpu.add_bias`."""
    launch(_add_bias_kernel, grid(mu.size), mu, var, c_mu, c_var, var.dtype.type(1), tau, rho)


def gh_bias(f_mu, f_var, r_t, r_r, c_mu, c_var):
    """:func:`chunk_cpu.gh_bias`: ``(g, h, tau_c, rho_c, 0)`` (the clamps counted on the device)."""
    xp = get_array_module(f_mu)
    g, h = xp.empty(f_mu.shape, f_mu.dtype), xp.empty(f_mu.shape, f_mu.dtype)
    bias = xp.empty((2, f_mu.shape[1]), f_mu.dtype)
    launch(_gh_bias_kernel, grid(f_mu.shape[1]), f_mu, f_var, r_t, r_r, c_mu, c_var, f_mu.dtype.type(1), g, h,
           bias, guards.device_counts(("s1_rest_variance_clamp",), xp))
    return g, h, bias[0], bias[1], 0
