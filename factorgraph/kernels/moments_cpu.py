"""Numba CPU kernel of a message's moments: ``mean = tau / rho`` (0 where ``rho <= 0``) and
``var = 1 / rho`` (inf there) in one branch-free (vectorised) pass, where the NumPy forms
:func:`factorgraph.gaussian.mean_of` / :func:`~factorgraph.gaussian.var_of` take six.  Bit for bit the
same numbers (``tests/test_gaussian.py``)."""

import math

from numba import njit


@njit(cache=True, inline="always")
def moments_one(t, r, zero, one, inf):
    """``(t / r, 1 / r)``, or ``(0, inf)`` where ``r <= 0``; constants in the dtype to compute in."""
    pos = r > zero
    return (t / r if pos else zero), (one / r if pos else inf)


@njit(cache=True, error_model="numpy")
def mean_var(tau, rho, mean, var):
    """Fill ``mean`` and ``var`` (flat arrays like ``tau``, ``rho``)."""
    for j in range(tau.shape[0]):
        mean[j], var[j] = moments_one(tau[j], rho[j], 0.0, 1.0, math.inf)
