"""Writing a custom factor: a fixed scaling ``z = a * x``.

Every layer of a network is a factor: a subclass of :class:`factorgraph.factor.Factor` that turns
messages on its input into messages on its output and back.  A factor implements

* ``forward(m_in, i)``   the training message to the output for example slot ``i``;
* ``backward(m_out, i)`` the training message to the input, given the message from the output;
* ``predict(m_in)``      the output for a batch of inputs (leading axis ``n``), for prediction;

and ``output_shape(input_shape)`` when it changes the shape (the default keeps it).  Messages are
:class:`factorgraph.Gaussian` arrays; before the first weighted layer a factor sees plain data
instead (``self.constant_input`` is then True) and has nothing to send back.

A factor is used either under a registered name, ``("Scale", 3.0)``, or as an instance,
``Scale(3.0)``, in the template list of :func:`layers.create_factor_graph`.

Run it with ``python examples/custom_factor.py``.
"""

import math

import numpy as np

import layers
from factorgraph.factor import Factor


class Scale(Factor):
    """Multiply every element by a fixed non-zero number ``a``: ``z = a * x``."""

    kind = "Scale"

    def __init__(self, a):
        super().__init__()
        if isinstance(a, bool) or not isinstance(a, (int, float)) or a == 0 or not math.isfinite(a):
            raise ValueError(f"Scale needs a finite non-zero number, got {a!r}")
        self.a = float(a)

    def forward(self, m_in, i):
        # The message of z is the distribution of a * x: mean * a, variance * a^2.
        if self.constant_input:
            return self.a * m_in
        return m_in.scale(self.a)

    def backward(self, m_out, i):
        # As a function of x, N(a x; mu, v) is proportional to N(x; mu / a, v / a^2).
        if self.constant_input:
            return None
        return m_out.scale(1 / self.a)

    def predict(self, m_in):
        # the factor is deterministic: prediction uses the same rule as the training forward
        return self.forward(m_in, None)


layers.register_factor("Scale", Scale)

#: The network of the demo: a linear layer whose output is scaled by 3, then Gaussian noise.
TEMPLATES = [(2,), ("Linear", 1), ("Scale", 3.0), ("Regression", 0.01)]


def make_data(n=200, seed=0, noise=0.1):
    """Data ``y = 3 * (w . x) + noise`` with ``w = (0.5, -1)``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    Y = 3.0 * (X @ np.array([[0.5], [-1.0]])) + noise * rng.normal(size=(n, 1))
    return X, Y


def train(templates=TEMPLATES, seed=0, num_training_its=3):
    """Train a graph of ``templates`` on :func:`make_data` as one batch; return the graph and the data."""
    X, Y = make_data()
    fg = layers.create_factor_graph(templates, batch_size=len(X), seed=seed)
    fg.train_batch(X, Y, num_training_its=num_training_its)
    return fg, X, Y


def main():
    fg, X, Y = train()
    print(fg)
    print(f"training RMSE with ('Scale', 3.0): {fg.evaluate(X, Y)['rmse']:.4f} (noise 0.1)")
    # the same network with the factor given as an instance instead of a registered name
    fg2, _, _ = train([(2,), ("Linear", 1), Scale(3.0), ("Regression", 0.01)])
    print(f"training RMSE with Scale(3.0):      {fg2.evaluate(X, Y)['rmse']:.4f}")
    W = fg.layers[0].params["W"].q
    print(f"posterior mean of w: {W.mean.ravel()} (true w = [0.5, -1.0])")


if __name__ == "__main__":
    main()
