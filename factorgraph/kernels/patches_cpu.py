"""Numba CPU kernels of S1/S2 backward for matrix x matrix products (im2col convolutions).

``Z = A B + c`` with A (P, D) patches, B (D, F) kernel.  The kernels compute exactly
:func:`factorgraph.equations.s1_backward_to_b` (constant A, reduced over positions) and
:func:`factorgraph.equations.s2_backward` (variable A; messages to A summed over filters, messages to B
summed over positions) from precomputed moments, without materialising (P, D, F) temporaries.
``counts[0]`` counts rest-variance clamps.
"""

from numba import njit


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
            a2 = a * a
            for f in range(F):
                rest = f_var[p, f] - a2 * b_var[d, f]
                if rest < 0:
                    n_rest += 1
                    rest = 0.0
                rr = r_r[p, f]
                inv_d = 1.0 / (1.0 + rr * rest)
                out_r[d, f] += a2 * rr * inv_d
                out_t[d, f] += a * (r_t[p, f] - rr * (f_mu[p, f] - a * b_mu[d, f])) * inv_d
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
            m2a = var_a + mu_a * mu_a
            acc_t = 0.0
            acc_r = 0.0
            for f in range(F):
                mu_b = b_mu[d, f]
                var_b = b_var[d, f]
                rest = f_var[p, f] - (var_a * var_b + var_a * mu_b * mu_b + mu_a * mu_a * var_b)
                if rest < 0:
                    n_rest += 1
                    rest = 0.0
                rr = r_r[p, f]
                inv_d = 1.0 / (1.0 + rr * rest)
                resid = (r_t[p, f] - rr * (f_mu[p, f] - mu_a * mu_b)) * inv_d
                acc_t += mu_b * resid
                acc_r += (var_b + mu_b * mu_b) * rr * inv_d
                to_b_t[d, f] += mu_a * resid
                to_b_r[d, f] += m2a * rr * inv_d
            to_a_t[p, d] = acc_t
            to_a_r[p, d] = acc_r
    counts[0] += n_rest
