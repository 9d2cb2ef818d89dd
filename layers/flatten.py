"""Flatten: a row-major reshape of each example to a vector (SPEC 5.7)."""

import math

from factorgraph.factor import Factor


class Flatten(Factor):
    kind = "Flatten"
    supports_chunks = True

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, m_in, i):
        return m_in.reshape(self.output_shape_)

    def backward(self, m_out, i):
        if self.constant_input or m_out is None:
            return None
        return m_out.reshape(self.input_shape)

    def predict(self, m_in):
        n = m_in.shape[0]
        return m_in.reshape(n, *self.output_shape_)

    def forward_chunk(self, m_in, idx, site):
        return self.predict(m_in)

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        if self.constant_input or m_out is None:
            return None
        return m_out.reshape(m_out.shape[0], *self.input_shape)
