"""factorgraph: Bayesian neural networks trained by Gaussian message passing on a factor graph.

The message math lives here: :class:`Gaussian` (natural parameters), :mod:`factorgraph.backend`,
:mod:`factorgraph.config` (every threshold), :mod:`factorgraph.guards` (counted fallbacks) and
:mod:`factorgraph.equations` (the message-equation library).
"""

from factorgraph import config, equations, guards
from factorgraph.gaussian import Gaussian, clamp_min_rho, divide, truncate_nonneg
from factorgraph.guards import ImproperMessageError

__version__ = "0.1.0"


def __getattr__(name):
    # lazy re-exports of the model layer, so importing the message math pulls in nothing else
    if name == "FactorGraph":
        from factorgraph.model import FactorGraph

        return FactorGraph
    if name == "create_factor_graph":
        from layers.dsl import create_factor_graph

        return create_factor_graph
    if name == "Factor":
        from factorgraph.factor import Factor

        return Factor
    raise AttributeError(f"module 'factorgraph' has no attribute {name!r}")

__all__ = [
    "Factor", "FactorGraph", "Gaussian", "ImproperMessageError", "clamp_min_rho", "config", "divide", "equations", "guards",
    "truncate_nonneg", "create_factor_graph",
]
