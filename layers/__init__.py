"""Layers: per-layer factors built on the equation library, and the template DSL."""

from layers.dsl import REGISTRY, create_factor_graph, register_factor
from layers.classification import Argmax, Softmax
from layers.conv import Conv
from layers.flatten import Flatten
from layers.leaky_relu import LeakyReLU
from layers.linear import Linear
from layers.pool import AvgPool, MaxPool
from layers.regression import Regression

__all__ = ["REGISTRY", "Argmax", "AvgPool", "Conv", "Flatten", "MaxPool", "Softmax", "LeakyReLU", "Linear", "Regression", "create_factor_graph", "register_factor"]
