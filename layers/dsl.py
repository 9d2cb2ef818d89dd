"""The layer-template DSL: ``create_factor_graph(templates, batch_size, seed=..., dtype=...)``.

The first template is the input shape, e.g. ``(784,)`` or ``(28, 28, 1)``.  Each further template is a
tuple ``(name, *args)`` with an optional trailing dict of options, or a :class:`~factorgraph.factor.Factor`
instance (a custom factor)::

    create_factor_graph([
        (1,),
        ("Linear", 16),
        ("LeakyReLU", 0.1),
        ("Linear", 1, {"prior_var": 1.0, "bias_prior_var": 1.0}),
        ("Regression", 0.05 ** 2),
    ], batch_size=200, seed=98)

The first Linear becomes the constant-input variant automatically; shapes are tracked and checked;
every mistake raises ``ValueError`` naming the template index.  New names are added with
:func:`register_factor`.
"""

import numpy as np

from factorgraph.backend import check_dtype
from factorgraph.factor import Factor
from factorgraph.model import FactorGraph
from layers.classification import Argmax, Softmax
from layers.conv import Conv
from layers.flatten import Flatten
from layers.leaky_relu import LeakyReLU
from layers.linear import Linear
from layers.pool import AvgPool, MaxPool
from layers.regression import Regression

#: name -> factor class; one line per layer kind
REGISTRY = {
    "Linear": Linear,
    "LeakyReLU": LeakyReLU,
    "Flatten": Flatten,
    "Regression": Regression,
    "Argmax": Argmax,
    "Softmax": Softmax,
    "Conv": Conv,
    "MaxPool": MaxPool,
    "AvgPool": AvgPool,
}


def register_factor(name, cls):
    """Make ``(name, *args[, options])`` templates build ``cls(*args, **options)``."""
    if not (isinstance(cls, type) and issubclass(cls, Factor)):
        raise TypeError(f"register_factor needs a Factor subclass, got {cls!r}")
    REGISTRY[name] = cls
    return cls


def _parse_input_shape(t):
    ok = isinstance(t, (tuple, list)) and len(t) > 0 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in t)
    if not ok:
        raise ValueError(f"template 0 must be the input shape, a tuple of positive integers such as (784,) "
                         f"or (28, 28, 1); got {t!r}")
    return tuple(int(s) for s in t)


def _make_layer(k, t):
    if isinstance(t, Factor):
        return t
    if not isinstance(t, (tuple, list)) or not t or not isinstance(t[0], str):
        raise ValueError(f"template {k} must be a tuple (name, *args[, options]) or a Factor, got {t!r}")
    name, rest = t[0], list(t[1:])
    options = rest.pop() if rest and isinstance(rest[-1], dict) else {}
    if name not in REGISTRY:
        raise ValueError(f"template {k}: unknown layer {name!r}; known: {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](*rest, **options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"template {k} {tuple(t)!r}: {e}") from None


def create_factor_graph(templates, batch_size, seed=None, dtype=np.float64):
    """Build a :class:`FactorGraph` from layer templates (see the module docstring)."""
    if not isinstance(templates, (list, tuple)) or len(templates) < 2:
        raise ValueError("templates must be a list: the input shape, then at least a training signal")
    dtype = check_dtype(dtype)
    input_shape = _parse_input_shape(templates[0])
    layers = [_make_layer(k, t) for k, t in enumerate(templates[1:], start=1)]
    shape = input_shape
    constant = True
    for k, layer in enumerate(layers, start=1):
        if layer.is_signal and k != len(layers):
            raise ValueError(f"template {k}: {layer.kind} is a training signal and must be the last template")
        if constant and not getattr(layer, "accepts_constant_input", True):
            raise ValueError(f"template {k}: {layer.kind} cannot come before the first weighted layer")
        try:
            shape = tuple(layer.output_shape(shape))
        except ValueError as e:
            raise ValueError(f"template {k} ({layer.kind}, input shape {shape}): {e}") from None
        if layer.has_weights:
            constant = False
    if not layers[-1].is_signal:
        raise ValueError(f"template {len(layers)}: the last template must be a training signal such as "
                         f"('Regression', 0.01), got {layers[-1].kind}")
    if constant:
        raise ValueError(f"template {len(layers)}: the training signal {layers[-1].kind} has no weighted layer "
                         f"before it; add one such as ('Linear', 10)")
    return FactorGraph(layers, input_shape, batch_size, dtype=dtype, seed=seed, templates=list(templates))
