"""Within-batch orders: in which order the examples of a batch are visited in one iteration.

An order is a value with ``permutation(n, rng) -> int array``; ``train_batch`` draws one
permutation per call and uses it for every iteration of that visit (SPEC 6.2).
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shuffled:
    """A random permutation from the graph's generator (the thesis schedule)."""

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        return "Shuffled()"


@dataclass(frozen=True)
class Fixed:
    """Examples in their stored order 0, 1, ..., n-1."""

    def permutation(self, n, rng):
        return np.arange(n)

    def __str__(self):
        return "Fixed()"
