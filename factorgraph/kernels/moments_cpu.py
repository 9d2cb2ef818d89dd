"""Numba CPU kernel of a message's moments: ``mean = tau / rho`` (0 where ``rho <= 0``) and
``var = 1 / rho`` (inf there) in one branch-free (vectorised) pass, where the NumPy forms
:func:`factorgraph.gaussian.mean_of` / :func:`~factorgraph.gaussian.var_of` take six.  Bit for bit the
same numbers (``tests/test_gaussian.py``)."""

import math

from numba import njit


@njit(cache=True, error_model="numpy")
def mean_var(tau, rho, mean, var):
    """Fill ``mean`` and ``var`` (flat arrays like ``tau``, ``rho``)."""
    for j in range(tau.shape[0]):
        r = rho[j]
        pos = r > 0
        mean[j] = tau[j] / r if pos else 0.0
        var[j] = 1.0 / r if pos else math.inf
