"""Gaussian regression likelihood ``y = z + eps``, ``eps ~ N(0, beta2)`` (SPEC 5.8).

Backward: ``G(y / beta2, 1 / beta2)`` for every output, independent of the forward message.
Prediction: ``N(mu, var + beta2)``; the epistemic part ``var`` and aleatoric part ``beta2`` are
available separately from :meth:`FactorGraph.predict`.
"""

import numpy as np

from factorgraph.factor import Factor
from factorgraph.gaussian import Gaussian


class Regression(Factor):
    kind = "Regression"
    is_signal = True
    output = "gaussian"
    supports_chunks = True

    def __init__(self, beta2):
        super().__init__()
        if isinstance(beta2, bool) or not isinstance(beta2, (int, float)) or not beta2 > 0:
            raise ValueError(f"Regression noise variance beta^2 must be a positive number, got {beta2!r}")
        self.beta2 = float(beta2)

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Regression needs a 1-D input, got shape {tuple(input_shape)}")
        return tuple(input_shape)

    def check_targets(self, Y, n):
        Y = np.asarray(Y)
        if Y.ndim != 2 or Y.shape != (n,) + self.input_shape:
            raise ValueError(f"regression targets must have shape ({n}, {self.input_shape[0]}), got {Y.shape}")
        if not np.issubdtype(Y.dtype, np.number) or not np.all(np.isfinite(Y)):
            raise ValueError("regression targets must be finite numbers (found NaN, inf or non-numeric)")
        return Y.astype(self.dtype)

    def forward(self, m_in, i):
        return m_in

    def backward_signal(self, y, i):
        return Gaussian(y / self.beta2, y * 0 + 1.0 / self.beta2)

    def forward_chunk(self, m_in, idx, site):
        return m_in

    def backward_signal_chunk(self, Y, idx):
        return self.backward_signal(Y, None)

    def predict(self, m_in):
        return m_in.add_variance(self.beta2)
