"""Numba CPU kernel of the chunk trust region of :class:`schedules.Parallel` (``max_step``).

It computes :meth:`factorgraph.factor.WeightSlots._limit_step` element by element in one pass (the NumPy
form takes about twenty passes over the weights per chunk); ``tests/test_batched_schedules.py`` checks
both against the bound they promise.
"""

import math

from numba import njit


@njit(cache=True)
def limit_step(q_t, q_r, old_t, old_r, new_t, new_r, kappa):
    """Scale ``new - old`` in place (flat arrays) where the marginal mean ``q_t / q_r`` would move more than
    ``kappa / sqrt(q_r)``; returns how many weights were limited."""
    count = 0
    for j in range(q_t.shape[0]):
        r = q_r[j]
        if not r > 0:
            continue
        dt = new_t[j] - old_t[j]
        dr = new_r[j] - old_r[j]
        a = abs(dt - (q_t[j] / r) * dr)
        s = math.sqrt(r)
        if a * s > kappa * (r + dr):
            f = kappa * s / (a - kappa * dr / s)
            new_t[j] = old_t[j] + f * dt
            new_r[j] = old_r[j] + f * dr
            count += 1
    return count
