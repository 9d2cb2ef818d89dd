"""Pooling over k x k windows (stride k) per channel, as weighted sums (SPEC 5.5, 5.6).

* ``("MaxPool", k[, {"noise": 0.3}])``: weights ``p_i`` = argmax probabilities of the window's forward
  messages (noise variance ``ARGMAX_NOISE`` as in the thesis code), then S1 with constants ``p``; the
  backward treats ``p`` as constant.  Inputs outside complete windows get ``G(0, 0)``.
* ``("AvgPool", k)``: weights ``1 / k^2``; ``("AvgPool",)``: global average pooling, one value per
  channel.  In training the forward output and the backward messages get ``min_rho(MIN_PRECISION)``.

Pooling layers keep no per-example state beyond the current example's input.
"""

import numpy as np

from factorgraph import config, kernels
from factorgraph.backend import get_array_module
from factorgraph.equations import s1_reduce_backward, s1_reduce_forward
from factorgraph.factor import Factor
from factorgraph.gaussian import Gaussian, clamp_min_rho
from factorgraph.kernels import pool_cpu


def _check_k(kind, k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{kind} needs a positive integer window size, got {k!r}")
    return int(k)


class _WindowPool(Factor):
    accepts_constant_input = False
    supports_chunks = True
    k = None  # None: global pooling

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.kind} needs an image input (H, W, C), got shape {tuple(input_shape)}")
        H, W, C = input_shape
        if self.k is None:
            return (C,)
        if self.k > H or self.k > W:
            raise ValueError(f"{self.kind} window {self.k} is larger than the input {H}x{W}")
        return (H // self.k, W // self.k, C)

    def _windows(self, x):
        """(..., H, W, C) -> (..., H', W', C, k*k) over the complete windows."""
        H, W, C = self.input_shape
        k = self.k if self.k is not None else None
        lead = x.shape[:-3]
        if k is None:
            return x.reshape(lead + (H * W, C)).swapaxes(-1, -2)
        h, w = H // k, W // k
        x = x[..., :h * k, :w * k, :].reshape(lead + (h, k, w, k, C))
        n = len(lead)
        perm = tuple(range(n)) + (n, n + 2, n + 4, n + 1, n + 3)
        return x.transpose(perm).reshape(lead + (h, w, C, k * k))

    def _unwindows(self, x, lead=()):
        """Inverse of :meth:`_windows` (leading axes ``lead``); pixels outside windows get 0."""
        H, W, C = self.input_shape
        if self.k is None:
            return x.swapaxes(-1, -2).reshape(*lead, H, W, C)
        k = self.k
        h, w = H // k, W // k
        n = len(lead)
        full = get_array_module(x).zeros(lead + (H, W, C), x.dtype)
        perm = tuple(range(n)) + tuple(n + p for p in (0, 3, 1, 4, 2))
        full[..., :h * k, :w * k, :] = x.reshape(lead + (h, w, C, k, k)).transpose(perm).reshape(
            lead + (h * k, w * k, C))
        return full

    def _gwin(self, m):
        return Gaussian(self._windows(m.tau), self._windows(m.rho))

    def forward(self, m_in, i):
        self._win = self._gwin(m_in)
        self._p = self.weights(self._win)
        self._f = s1_reduce_forward(self._p, self._win)
        return self._train_output(self._f)

    def _train_output(self, f):
        return f

    def backward(self, m_out, i):
        msg = s1_reduce_backward(self._p, self._win, self._f, m_out)
        return self._finish_backward(Gaussian(self._unwindows(msg.tau), self._unwindows(msg.rho)))

    def forward_chunk(self, m_in, idx, site):
        return self.forward(m_in, None)

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        msg = s1_reduce_backward(self._p, self._win, self._f, m_out)
        lead = m_out.shape[:1]
        return self._finish_backward(Gaussian(self._unwindows(msg.tau, lead), self._unwindows(msg.rho, lead)))

    def _finish_backward(self, g):
        return g

    def predict(self, m_in):
        win = self._gwin(m_in)
        return s1_reduce_forward(self.weights(win), win)


class MaxPool(_WindowPool):
    kind = "MaxPool"

    def __init__(self, k, noise=config.ARGMAX_NOISE):
        super().__init__()
        self.k = _check_k("MaxPool", k)
        if not noise >= 0:
            raise ValueError(f"MaxPool noise must be >= 0, got {noise!r}")
        self.noise = float(noise)

    def build(self, input_shape, batch_size, *, dtype, rng, constant_input):
        super().build(input_shape, batch_size, dtype=dtype, rng=rng, constant_input=constant_input)
        self._guards = kernels.GuardCounts(pool_cpu.GUARD_NAMES)

    def flush_guards(self):
        self._guards.flush()

    def weights(self, win):
        return kernels.argmax_probs(win, self.noise)

    def predict(self, m_in):
        out = kernels.maxpool_predict(m_in, self.k, self.noise)  # fused kernel; None: the generic path
        return super().predict(m_in) if out is None else out

    # --- training by the fused kernels of :mod:`factorgraph.kernels.pool_cpu` / ``pool_cuda`` -----------
    def _kernels(self, m):
        """The pool kernel module of ``m``'s device, or ``None`` (kernels off, or a window larger than
        the device kernel's scratch): the generic path."""
        mod = kernels.module(m.tau, "pool")
        return mod if mod is not None and self.k * self.k <= mod.MAX_POOL_WINDOW else None

    def _forward_kernel(self, mod, m_in):
        """Training forward of images ``m_in`` (..., H, W, C): output messages, and the input messages,
        argmax probabilities and outputs kept for the backward."""
        xp = m_in.xp
        lead = m_in.shape[:-3]
        shape = (-1,) + self.input_shape
        tau, rho = (xp.ascontiguousarray(a).reshape(shape) for a in (m_in.tau, m_in.rho))
        N = tau.shape[0]
        out = Gaussian(*(xp.empty((N,) + self.output_shape_, m_in.dtype) for _ in range(2)))
        P = xp.zeros(tau.shape, m_in.dtype)
        mod.maxpool_fwd(tau, rho, self.k, self.noise, out.tau, out.rho, P)
        self._kept = (tau, rho, P, out)
        return out.reshape(lead + self.output_shape_)

    def _backward_kernel(self, mod, m_out):
        tau, rho, P, f = self._kept
        xp = m_out.xp
        lead = m_out.shape[:-3]
        r_t, r_r = (xp.ascontiguousarray(a).reshape(f.shape) for a in (m_out.tau, m_out.rho))
        out = Gaussian(xp.zeros(tau.shape, tau.dtype), xp.zeros(tau.shape, tau.dtype))
        counts = self._guards.array(out.tau)
        mod.maxpool_bwd(tau, rho, P, f.tau, f.rho, r_t, r_r, self.k, out.tau, out.rho, counts)
        self._guards.after_call(out.tau)
        return out.reshape(lead + self.input_shape)

    def forward(self, m_in, i):
        mod = self._kernels(m_in)
        return super().forward(m_in, i) if mod is None else self._forward_kernel(mod, m_in)

    def forward_chunk(self, m_in, idx, site):
        mod = self._kernels(m_in)
        return super().forward_chunk(m_in, idx, site) if mod is None else self._forward_kernel(mod, m_in)

    def backward(self, m_out, i):
        mod = self._kernels(m_out)
        return super().backward(m_out, i) if mod is None else self._backward_kernel(mod, m_out)

    def backward_chunk(self, m_out, idx, site, damping, expansion):
        mod = self._kernels(m_out)
        if mod is None:
            return super().backward_chunk(m_out, idx, site, damping, expansion)
        return self._backward_kernel(mod, m_out)


class AvgPool(_WindowPool):
    kind = "AvgPool"

    def __init__(self, k=None):
        super().__init__()
        self.k = None if k is None else _check_k("AvgPool", k)

    def weights(self, win):
        n = win.shape[-1]
        return win.xp.full(win.shape, 1.0 / n, win.dtype)

    def _train_output(self, f):
        return clamp_min_rho(f, config.MIN_PRECISION)

    def _finish_backward(self, g):
        return clamp_min_rho(g, config.MIN_PRECISION)
