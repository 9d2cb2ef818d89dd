"""factorgraph: Bayesian neural networks trained by Gaussian message passing on a factor graph.

The message math lives here: :class:`Gaussian` (natural parameters), :mod:`factorgraph.backend`,
:mod:`factorgraph.config` (every threshold), :mod:`factorgraph.guards` (counted fallbacks) and
:mod:`factorgraph.equations` (the message-equation library).
"""

from factorgraph import config, equations, guards
from factorgraph.gaussian import Gaussian, clamp_min_rho, divide, truncate_nonneg
from factorgraph.guards import ImproperMessageError

__version__ = "0.1.0"

__all__ = [
    "Gaussian", "ImproperMessageError", "clamp_min_rho", "config", "divide", "equations", "guards",
    "truncate_nonneg",
]
