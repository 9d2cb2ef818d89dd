"""Layers: per-layer factors built on the equation library, and the template DSL."""

from layers.dsl import REGISTRY, create_factor_graph, register_factor
from layers.flatten import Flatten
from layers.leaky_relu import LeakyReLU
from layers.linear import Linear
from layers.regression import Regression

__all__ = ["REGISTRY", "Flatten", "LeakyReLU", "Linear", "Regression", "create_factor_graph", "register_factor"]
