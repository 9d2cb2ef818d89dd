"""Numba CUDA kernels of the im2col convolution backward and the deterministic fold.

``s1_patches_bwd`` / ``s2_patches_bwd`` compute the same sums as :mod:`factorgraph.kernels.patches_cpu`
(one thread per kernel entry (d, f) looping over positions, one thread per patch entry (p, d) looping
over filters).  ``gather`` is the im2col copy and ``fold`` merges the messages of all copies of each input
pixel in a fixed order (a CSR list per pixel, :func:`factorgraph.equations.im2col.fold_plan`, built
once), so it is deterministic, unlike an atomic scatter-add; both take a leading example axis.
"""

# first: carries a NumPy shim for numba.cuda
from factorgraph.kernels._device import device_functions, launch
from numba import cuda  # noqa: E402, I001

from factorgraph.kernels import patches_cpu, scalar

_D = device_functions([scalar, patches_cpu], ["s1_term", "s2_terms"])
_s1_term, _s2_terms = _D["s1_term"], _D["s2_terms"]


@cuda.jit(device=True)
def _fold_one(msg_t, msg_r, offsets, entries, e, i):
    """(tau, rho) of input pixel ``i`` of example ``e``: its copies' messages summed in entry order."""
    acc_t = 0.0
    acc_r = 0.0
    for k in range(offsets[i], offsets[i + 1]):
        acc_t += msg_t[e, entries[k]]
        acc_r += msg_r[e, entries[k]]
    return acc_t, acc_r


def _grid2(a, b, ta=8, tb=32):
    return ((a + ta - 1) // ta, (b + tb - 1) // tb), (ta, tb)


@cuda.jit
def _s1_to_b(A, b_mu, b_var, f_mu, f_var, r_t, r_r, out_t, out_r, counts):
    d, f = cuda.grid(2)
    P, D = A.shape
    F = b_mu.shape[1]
    if d >= D or f >= F:
        return
    acc_t = 0.0
    acc_r = 0.0
    for p in range(P):
        t, r, clamped = _s1_term(A[p, d], b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f], r_t[p, f], r_r[p, f])
        if clamped:
            cuda.atomic.add(counts, 0, 1)
        acc_t += t
        acc_r += r
    out_t[d, f] = acc_t
    out_r[d, f] = acc_r


@cuda.jit
def _s2_to_b(a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_b_t, to_b_r, counts):
    d, f = cuda.grid(2)
    P, D = a_mu.shape
    F = b_mu.shape[1]
    if d >= D or f >= F:
        return
    mu_b = b_mu[d, f]
    var_b = b_var[d, f]
    acc_t = 0.0
    acc_r = 0.0
    for p in range(P):
        _, _, tb, rb, clamped = _s2_terms(a_mu[p, d], a_var[p, d], mu_b, var_b, f_mu[p, f], f_var[p, f], r_t[p, f],
                                          r_r[p, f])
        if clamped:
            cuda.atomic.add(counts, 0, 1)
        acc_t += tb
        acc_r += rb
    to_b_t[d, f] = acc_t
    to_b_r[d, f] = acc_r


@cuda.jit
def _s2_to_a(a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_a_t, to_a_r):
    p, d = cuda.grid(2)
    P, D = a_mu.shape
    F = b_mu.shape[1]
    if p >= P or d >= D:
        return
    mu_a = a_mu[p, d]
    var_a = a_var[p, d]
    acc_t = 0.0
    acc_r = 0.0
    for f in range(F):
        ta, ra, _, _, _ = _s2_terms(mu_a, var_a, b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f], r_t[p, f],
                                    r_r[p, f])
        acc_t += ta  # a clamp is counted once, by _s2_to_b
        acc_r += ra
    to_a_t[p, d] = acc_t
    to_a_r[p, d] = acc_r


@cuda.jit
def _fold(msg_t, msg_r, offsets, entries, out_t, out_r):
    e, i = cuda.grid(2)
    if e >= out_t.shape[0] or i >= out_t.shape[1]:
        return
    out_t[e, i], out_r[e, i] = _fold_one(msg_t, msg_r, offsets, entries, e, i)


@cuda.jit
def _gather(values, src, pad, out):
    e, i = cuda.grid(2)
    P, D = src.shape
    if e >= out.shape[0] or i >= P * D:
        return
    s = src[i // D, i % D]
    out[e, i // D, i % D] = values[e, s] if s >= 0 else pad


def s1_patches_bwd(A, b_mu, b_var, f_mu, f_var, r_t, r_r, out_t, out_r, counts):
    blocks, threads = _grid2(*b_mu.shape)
    launch(_s1_to_b, (blocks, threads), A, b_mu, b_var, f_mu, f_var, r_t, r_r, out_t, out_r, counts)


def s2_patches_bwd(a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_a_t, to_a_r, to_b_t, to_b_r, counts):
    blocks, threads = _grid2(*a_mu.shape)
    launch(_s2_to_a, (blocks, threads), a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_a_t, to_a_r)
    blocks, threads = _grid2(*b_mu.shape)
    launch(_s2_to_b, (blocks, threads), a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_b_t, to_b_r, counts)


def fold(msg_t, msg_r, plan, out_t, out_r):
    """Sum the patch-entry messages (L, P * D) into the input messages (L, n) (deterministic): one thread
    per pixel walking its CSR list of ``plan = (src, offsets, entries)``."""
    blocks, threads = _grid2(*out_t.shape, ta=1, tb=128)
    launch(_fold, (blocks, threads), msg_t, msg_r, plan[1], plan[2], out_t, out_r)


def gather(values, src, pad, out):
    """im2col: ``out[e, p, d] = values[e, src[p, d]]`` (``pad`` where ``src < 0``); values (L, n)."""
    blocks, threads = _grid2(out.shape[0], src.size, ta=1, tb=128)
    launch(_gather, (blocks, threads), values, src, pad, out)


KERNELS = {"patches_s1_to_b": _s1_to_b, "patches_s2_to_b": _s2_to_b, "patches_s2_to_a": _s2_to_a,
           "fold": _fold, "gather": _gather}
