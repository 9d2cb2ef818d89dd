"""Classification heads; targets are integer labels of shape (n,).

* ``("Argmax", regularize)``: likelihood ``y = argmax_i (a_i + eps_i)`` (SPEC 5.10).  Training backward:
  the pairwise argmax messages of :func:`factorgraph.equations.argmax_backward` with noise
  ``ARGMAX_NOISE`` and, with ``regularize=True`` (the AM-MP head), the ``N(+-1, ARGMAX_REG_VAR)``
  regulariser.  Prediction: the argmax probabilities.
* ``("Softmax",)``: likelihood ``softmax(a)_y`` (SPEC 5.9).  Training backward: marginal approximation by
  1-D quadrature per logit (:func:`factorgraph.equations.softmax_backward`; improper results are counted
  and fall back to ``G(0, 0)``).  Prediction: the probit-approximated softmax.
"""

import numpy as np

from factorgraph import config, kernels
from factorgraph.equations import argmax_backward, probit_softmax
from factorgraph.equations.softmax import softmax_backward
from factorgraph.factor import Factor
from factorgraph.gaussian import Gaussian
from factorgraph.kernels import signals_cpu


def check_labels(Y, n, num_classes):
    """Validate integer class labels of shape (n,) in [0, num_classes) and return them as int64."""
    Y = np.asarray(Y)
    if Y.shape != (n,):
        raise ValueError(f"classification labels must have shape ({n},), got {Y.shape}")
    if not np.issubdtype(Y.dtype, np.integer):
        if np.issubdtype(Y.dtype, np.floating) and Y.size and np.all(np.isfinite(Y)) and np.all(Y == np.round(Y)):
            raise TypeError("classification labels must be integers (got floats); use y.astype(int), or a "
                            "('Regression', beta2) head for one-hot float targets")
        raise TypeError(f"classification labels must be integers, got dtype {Y.dtype}")
    if Y.size and (Y.min() < 0 or Y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{Y.min()}, {Y.max()}]")
    return Y.astype(np.int64)


class ClassificationHead(Factor):
    """Shared plumbing of the classification signals: store the logits' forward message."""

    is_signal = True
    output = "probabilities"
    supports_chunks = True

    def output_shape(self, input_shape):
        if len(input_shape) != 1 or input_shape[0] < 2:
            raise ValueError(f"{self.kind} needs a 1-D input of at least 2 logits, got shape {tuple(input_shape)}")
        return tuple(input_shape)

    def check_targets(self, Y, n):
        return check_labels(Y, n, self.input_shape[0])

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        super().build(input_shape, batch_size, dtype=dtype, rng=rng, constant_input=constant_input)
        self._guards = kernels.GuardCounts(self.guard_names)

    def flush_guards(self):
        self._guards.flush()

    def forward(self, m_in, i):
        self._m = m_in
        return m_in

    def backward_signal(self, y, i):
        mod = kernels.module(self._m.tau, "signals")
        if mod is None:
            return self._backward_reference(y)
        C = self._m.shape[-1]
        return self._backward_kernel(mod, self._m.reshape(1, C), self._m.xp.asarray(y).reshape(1)).reshape(C)

    def forward_chunk(self, m_in, idx, site):
        return self.forward(m_in, idx)

    def backward_signal_chunk(self, Y, idx):
        """The first backward messages of a chunk: ``Y`` (c,) labels, forward messages (c, C)."""
        mod = kernels.module(self._m.tau, "signals")
        if mod is None:
            return self._backward_reference(Y)
        return self._backward_kernel(mod, self._m, self._m.xp.asarray(Y))

    def _backward_kernel(self, mod, m, y):
        xp = m.xp
        out = Gaussian(xp.empty(m.shape, m.dtype), xp.empty(m.shape, m.dtype))
        counts = self._guards.array(out.tau)
        self._kernel(mod, xp.ascontiguousarray(m.tau), xp.ascontiguousarray(m.rho), y, out, counts)
        self._guards.after_call(out.tau)
        return out

    def predict(self, m_in):
        return m_in


class Argmax(ClassificationHead):
    kind = "Argmax"

    def __init__(self, regularize=False):
        super().__init__()
        if not isinstance(regularize, (bool, np.bool_)):
            raise ValueError(f"Argmax takes regularize=True/False, got {regularize!r}")
        self.regularize = bool(regularize)

    guard_names = signals_cpu.ARGMAX_GUARDS

    def _backward_reference(self, y):
        return argmax_backward(self._m, y, config.ARGMAX_NOISE, self.regularize)

    def _kernel(self, mod, tau, rho, y, out, counts):
        mod.argmax_bwd(tau, rho, y, config.ARGMAX_NOISE, config.ARGMAX_REG_VAR, self.regularize, out.tau, out.rho,
                       counts)

    def probabilities(self, m):
        return kernels.argmax_probs(m, config.ARGMAX_NOISE)


class Softmax(ClassificationHead):
    kind = "Softmax"

    guard_names = signals_cpu.SOFTMAX_GUARDS

    def _backward_reference(self, y):
        return softmax_backward(self._m, y)

    def _kernel(self, mod, tau, rho, y, out, counts):
        mod.softmax_bwd(tau, rho, y, signals_cpu.GL_X, signals_cpu.GL_W, out.tau, out.rho, counts)

    def probabilities(self, m):
        return probit_softmax(m)
