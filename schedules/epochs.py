"""Epoch schedules: how many message-passing iterations each epoch runs over each batch.

A schedule is a value: a tuple of per-epoch iteration counts.

>>> Staircase(3)
EpochSchedule(name='staircase', iterations=(1, 1, 2, 2, 3, 3))
>>> Constant(2, 3).iterations
(3, 3)
"""

import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochSchedule:
    name: str
    iterations: tuple

    def __post_init__(self):
        its = tuple(self.iterations)
        if not its or not all(_is_positive_int(k) for k in its):
            raise ValueError(f"iterations must be positive integers, got {self.iterations!r}")
        object.__setattr__(self, "iterations", tuple(int(k) for k in its))

    def __iter__(self):
        return iter(self.iterations)

    def __len__(self):
        return len(self.iterations)

    @property
    def total(self):
        return sum(self.iterations)

    def __str__(self):
        return f"{self.name}: {len(self)} epochs, iterations {list(self.iterations)} (total {self.total})"


def _is_positive_int(k):
    return isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1


def Staircase(top=9):
    """The thesis staircase 1, 1, 2, 2, ..., top, top (18 epochs, 90 iterations for top = 9)."""
    if not _is_positive_int(top):
        raise ValueError(f"Staircase top must be a positive integer, got {top!r}")
    return EpochSchedule("staircase", tuple(k for k in range(1, top + 1) for _ in range(2)))


def Constant(num_epochs, num_training_its=1):
    """``num_epochs`` epochs of ``num_training_its`` iterations each."""
    if not _is_positive_int(num_epochs):
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}")
    return EpochSchedule("constant", (num_training_its,) * num_epochs)
