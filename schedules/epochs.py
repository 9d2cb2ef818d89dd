"""Epoch schedules: how many message-passing iterations each epoch runs over each batch.

A schedule is a value: a tuple of per-epoch iteration counts.

>>> Staircase(3)
EpochSchedule(name='staircase', iterations=(1, 1, 2, 2, 3, 3))
>>> Constant(2, 3).iterations
(3, 3)
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochSchedule:
    name: str
    iterations: tuple

    def __post_init__(self):
        if not self.iterations or any(int(k) != k or k < 1 for k in self.iterations):
            raise ValueError(f"iterations must be positive integers, got {self.iterations!r}")

    def __iter__(self):
        return iter(self.iterations)

    def __len__(self):
        return len(self.iterations)

    @property
    def total(self):
        return sum(self.iterations)

    def __str__(self):
        return f"{self.name}: {len(self)} epochs, iterations {list(self.iterations)} (total {self.total})"


def Staircase(top=9):
    """The thesis staircase 1, 1, 2, 2, ..., top, top (18 epochs, 90 iterations for top = 9)."""
    return EpochSchedule("staircase", tuple(k for k in range(1, top + 1) for _ in range(2)))


def Constant(num_epochs, num_training_its=1):
    """``num_epochs`` epochs of ``num_training_its`` iterations each."""
    return EpochSchedule("constant", (int(num_training_its),) * int(num_epochs))
