"""Numba CPU kernels of S1/S2 backward for matrix x matrix products (im2col convolutions).

``Z = A B + c`` with A (P, D) patches, B (D, F) kernel.  The kernels compute exactly
:func:`factorgraph.equations.s1_backward_to_b` (constant A, reduced over positions) and
:func:`factorgraph.equations.s2_backward` (variable A; messages to A summed over filters, messages to B
summed over positions) from precomputed moments, without materialising (P, D, F) temporaries.
``counts[0]`` counts rest-variance clamps.
"""

from numba import njit

from factorgraph.kernels.scalar import s1_term, s2_terms


@njit(cache=True)
def s1_patches_bwd(A, b_mu, b_var, f_mu, f_var, r_t, r_r, out_t, out_r, counts):
    """Sum over positions p of the S1 messages to B[d, f] (coefficient A[p, d], cavity moments of B)."""
    P, D = A.shape
    F = b_mu.shape[1]
    n_rest = 0
    for d in range(D):
        for f in range(F):
            out_t[d, f] = 0.0
            out_r[d, f] = 0.0
    for p in range(P):
        for d in range(D):
            a = A[p, d]
            if a == 0.0:
                continue
            for f in range(F):
                t, r, clamped = s1_term(a, b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f], r_t[p, f], r_r[p, f])
                n_rest += clamped
                out_t[d, f] += t
                out_r[d, f] += r
    counts[0] += n_rest


@njit(cache=True)
def s2_patches_bwd(a_mu, a_var, b_mu, b_var, f_mu, f_var, r_t, r_r, to_a_t, to_a_r, to_b_t, to_b_r, counts):
    """S2 backward of ``Z = A B``: messages to A[p, d] (product over f) and to B[d, f] (product over p)."""
    P, D = a_mu.shape
    F = b_mu.shape[1]
    n_rest = 0
    for d in range(D):
        for f in range(F):
            to_b_t[d, f] = 0.0
            to_b_r[d, f] = 0.0
    for p in range(P):
        for d in range(D):
            mu_a = a_mu[p, d]
            var_a = a_var[p, d]
            acc_t = 0.0
            acc_r = 0.0
            for f in range(F):
                ta, ra, tb, rb, clamped = s2_terms(mu_a, var_a, b_mu[d, f], b_var[d, f], f_mu[p, f], f_var[p, f],
                                                   r_t[p, f], r_r[p, f])
                n_rest += clamped
                acc_t += ta
                acc_r += ra
                to_b_t[d, f] += tb
                to_b_r[d, f] += rb
            to_a_t[p, d] = acc_t
            to_a_r[p, d] = acc_r
    counts[0] += n_rest
