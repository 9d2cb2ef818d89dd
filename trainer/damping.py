"""Damping schedules of the Trainer: the EMA rate beta_e applied to each batch's new message.

``beta`` weights the **new** message: ``W_msg[b] := (1 - beta) W_msg[b] + beta L_b``.
"""

import math

from factorgraph import config


def thesis_damping(epoch):
    """``beta_e = 0.9 + 0.1 exp(-0.3 (e - 1))`` for 1-based epoch ``e`` (SPEC 8.3)."""
    return config.DAMP_FLOOR + (1 - config.DAMP_FLOOR) * math.exp(-config.DAMP_RATE * (epoch - 1))


def constant_damping(beta):
    """A schedule with the same rate every epoch (``beta=1`` disables damping)."""
    if not 0 < beta <= 1:
        raise ValueError(f"damping rate must be in (0, 1], got {beta}")
    return lambda epoch: beta
