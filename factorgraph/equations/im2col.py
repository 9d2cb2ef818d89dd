"""Patch geometry for convolutions: im2col gather and the deterministic fold (col2im) of messages.

An image is ``(H, W, C)`` (row-major, channels last).  For kernel ``k``, stride ``s`` and padding ``p``
the output is ``(H_out, W_out)`` with ``H_out = (H + 2p - k) / s + 1`` (must be an integer).  The patch
matrix has shape ``(P, D)``, ``P = H_out * W_out`` positions (row-major) and ``D = k * k * C`` entries
ordered ``(dy, dx, c)``.  ``src[p, d]`` is the flat index ``(y * W + x) * C + c`` of the input pixel a
patch entry copies, or ``-1`` for a zero-padding entry.  Mirror padding (the thesis option) maps padded
positions to reflected border pixels (``[1, 2, 3]`` with p = 2 becomes ``[2, 1, 1, 2, 3, 3, 2]``), so
the padding copies are ordinary duplicates of real pixels.

The fold multiplies the messages of all copies of a pixel: their natural parameters are summed, with a
deterministic ``bincount`` (zero-padding entries are dropped).
"""

import numpy as np

from factorgraph.backend import get_array_module
from factorgraph.gaussian import Gaussian


def conv_output_size(n, k, stride, padding):
    """Output length along one axis, or ``ValueError`` when the geometry does not fit."""
    span = n + 2 * padding - k
    if k < 1 or stride < 1 or padding < 0:
        raise ValueError(f"kernel size and stride must be >= 1 and padding >= 0 (got k={k}, stride={stride}, "
                         f"padding={padding})")
    if span < 0:
        raise ValueError(f"kernel size {k} is larger than the padded input ({n} + 2*{padding})")
    if span % stride:
        raise ValueError(f"input {n} + 2*padding {padding} - kernel {k} = {span} is not divisible by stride "
                         f"{stride}: the output size would not be an integer")
    return span // stride + 1


def _mirror(i, n):
    """Index of padded coordinate ``i`` (may be negative or >= n) under symmetric (mirror) padding."""
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i)


def patch_index(in_shape, k, stride=1, padding=0, mode="zeros"):
    """Return ``(src, (H_out, W_out))``: the (P, D) source index of every patch entry (-1 = zero pad)."""
    H, W, C = in_shape
    H_out = conv_output_size(H, k, stride, padding)
    W_out = conv_output_size(W, k, stride, padding)
    oy, ox = np.meshgrid(np.arange(H_out) * stride - padding, np.arange(W_out) * stride - padding, indexing="ij")
    dy, dx, c = np.meshgrid(np.arange(k), np.arange(k), np.arange(C), indexing="ij")
    y = oy.reshape(-1, 1) + dy.reshape(1, -1)  # (P, D)
    x = ox.reshape(-1, 1) + dx.reshape(1, -1)
    c = np.broadcast_to(c.reshape(1, -1), y.shape)
    if mode == "zeros":
        inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
        src = np.where(inside, (np.clip(y, 0, H - 1) * W + np.clip(x, 0, W - 1)) * C + c, -1)
    elif mode == "mirror":
        src = (_mirror(y, H) * W + _mirror(x, W)) * C + c
    else:
        raise ValueError(f"padding mode must be 'zeros' or 'mirror', got {mode!r}")
    return src.astype(np.int64), (H_out, W_out)


def gather_constants(x, src):
    """Patch matrix of constant images ``x`` (..., H, W, C) -> (..., P, D); zero padding gives 0."""
    flat = x.reshape(x.shape[:-3] + (-1,))
    xp = get_array_module(flat)
    ext = xp.concatenate([flat, xp.zeros(flat.shape[:-1] + (1,), flat.dtype)], axis=-1)
    return ext[..., src]


def gather_messages(m, src):
    """Patch matrix of Gaussian images ``m`` (..., H, W, C) -> (..., P, D).

    Zero-padding entries become point masses at 0 (``tau = 0``, ``rho = inf``: mean 0, variance 0).
    """
    tau = m.tau.reshape(m.shape[:-3] + (-1,))
    rho = m.rho.reshape(m.shape[:-3] + (-1,))
    xp = get_array_module(tau)
    pad = xp.zeros(tau.shape[:-1] + (1,), tau.dtype)
    tau = xp.concatenate([tau, pad], axis=-1)
    rho = xp.concatenate([rho, pad + xp.inf], axis=-1)
    return Gaussian(tau[..., src], rho[..., src])


def fold_plan(src, n_in):
    """CSR lists of the flat patch entries copying each input pixel (zero-padding entries dropped):
    ``(offsets (n_in + 1,), entries)``, in increasing entry order, so a fold that walks them sums every
    pixel's copies in a fixed order (deterministic, unlike an atomic scatter-add)."""
    flat = np.asarray(src).reshape(-1)
    keep = np.nonzero(flat >= 0)[0]
    order = keep[np.argsort(flat[keep], kind="stable")]
    counts = np.bincount(flat[keep], minlength=n_in)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, order.astype(np.int64)


def fold_messages(msg, src, in_shape):
    """Merge messages to patch entries (..., P, D) into one message per input pixel (..., *in_shape): the
    product over all copies (sum of natural parameters), deterministic; zero-padding entries are dropped."""
    xp = get_array_module(msg.tau)
    n = int(np.prod(in_shape))
    lead = msg.shape[:-2]
    L = int(np.prod(lead))
    keep = src >= 0
    idx = (xp.arange(L)[:, None] * n + src[keep][None, :]).reshape(-1)
    out = []
    for v in (msg.tau, msg.rho):
        w = v.reshape((L,) + src.shape)[:, keep].reshape(-1)
        out.append(xp.bincount(idx, weights=w, minlength=L * n).astype(msg.dtype).reshape(lead + tuple(in_shape)))
    return Gaussian(*out)
