"""The Trainer drives schedules over batches: per-batch messages, damping, progress, save/load."""

from trainer.damping import constant_damping, thesis_damping
from trainer.trainer import Trainer

__all__ = ["Trainer", "constant_damping", "thesis_damping"]
