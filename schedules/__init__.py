"""Schedules as values: graph traversals, within-batch orders, epoch schedules.

This package reads networkx graphs only; it imports nothing from ``factorgraph``, ``layers`` or
``trainer``.
"""

from schedules.epochs import Constant, EpochSchedule, Staircase
from schedules.orders import ByEpoch, Chains, Chunked, Fixed, Parallel, Shuffled, parse_order
from schedules.traversal import Schedule, Step, backward_schedule, forward_schedule, predict_schedule

__all__ = [
    "ByEpoch", "Chains", "Chunked", "Constant", "EpochSchedule", "Fixed", "Parallel", "Schedule", "Shuffled", "Staircase", "Step",
    "backward_schedule", "forward_schedule", "parse_order", "predict_schedule",
]
