"""Within-batch orders: in which order the examples of a batch are visited in one iteration.

An order is a value with ``permutation(n, rng) -> int array``; ``train_batch`` draws one
permutation per call and uses it for every iteration of that visit (SPEC 6.2).  An order may also set
``chunk_size`` and ``damping`` (:class:`Chunked`): the examples of a chunk then all compute their
messages from the same weight marginals, and the chunk's (damped) messages replace the old ones at once.
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


@dataclass(frozen=True)
class Chunked:
    """Parallel message passing within a batch: chunks of ``chunk_size`` examples (in a shuffled order)
    send their messages from the same marginals; each new message is damped toward the example's previous
    one, ``old + damping (new - old)``, and the chunk's messages replace the old ones together (no double
    counting, as in parallel EP).  ``Chunked(1)`` is the sequential thesis schedule; ``Chunked(B)`` is fully
    parallel.  The weights' marginals change once per chunk.
    """

    chunk_size: int
    damping: float = 1.0

    def __post_init__(self):
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")
        if not 0 < self.damping <= 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping!r}")

    def permutation(self, n, rng):
        return rng.permutation(n)

    def __str__(self):
        return f"Chunked({self.chunk_size}, damping={self.damping})"
