"""Numba CPU kernels of max pooling over k x k windows (stride k) of images (N, H, W, C) (SPEC 5.5).

Each complete window's output is S1 with constant coefficients ``p``, the argmax probabilities of the
window's messages (:func:`factorgraph.kernels.signals_cpu.argmax_probs_row`, noise variance ``beta2``)::

    forward:   mu_s = sum_a p_a mu_a,   var_s = sum_a p_a^2 var_a
    backward:  S1 to every pixel a of the window with coefficient p_a (see
               :func:`factorgraph.equations.s1_term_message`), p held constant

so one pass per window replaces the layer's NumPy path (window copies, ``argmax_probs``,
``s1_reduce_forward`` / ``s1_reduce_backward`` and the scatter back to the image).  Pixels outside the
complete windows get ``p = 0`` and the backward message ``G(0, 0)``.  The per-window functions are shared
with :mod:`factorgraph.kernels.pool_cuda`.  ``tests/test_kernels_cpu.py`` asserts equality with the
layer's NumPy path.
"""

import math

import numpy as np
from numba import njit, prange

from factorgraph import config
from factorgraph.kernels import use_threads
from factorgraph.kernels.scalar import SQRT1_2
from factorgraph.kernels.signals_cpu import THREADS_MIN_ROWS, argmax_probs_row
from factorgraph.kernels.vecmath import erfc_map

#: largest window (k * k) the kernels take
MAX_POOL_WINDOW = 1 << 20
P_SMALL, P_CLAMP = range(2)
GUARD_NAMES = ("s1_small_cavity", "s1_rest_variance_clamp")
MIN_CAVITY_PRECISION = config.MIN_CAVITY_PRECISION


@njit(cache=True, inline="always")
def window_moments(wt, wr, p, kk):
    """S1 with constants ``p`` over the window's messages ``wt``, ``wr``: the output (tau, rho) from
    ``mu = sum p mu_a``, ``var = sum p^2 var_a`` (mean 0 and variance inf where rho = 0, as
    :func:`factorgraph.equations.s1_reduce_forward`)."""
    mu = 0.0
    var = 0.0
    for a in range(kk):
        if wr[a] > 0:
            mu += p[a] * (wt[a] / wr[a])
            var += p[a] * p[a] / wr[a]
        else:
            var += p[a] * p[a] * math.inf
    return mu / var, 1.0 / var


@njit(cache=True, inline="always")
def pool_window(tau, rho, n, i0, j0, c, k, beta2, wt, wr, p):
    """Max-pool output (tau, rho) of the k x k window at (i0, j0) of channel c of image n: the window's
    messages copied to ``wt``, ``wr`` (float64 scratch), argmax probabilities ``p`` by
    :func:`argmax_probs_row`, then :func:`window_moments`."""
    kk = k * k
    for a in range(kk):
        wt[a] = tau[n, i0 + a // k, j0 + a % k, c]
        wr[a] = rho[n, i0 + a // k, j0 + a % k, c]
    argmax_probs_row(wt[:kk], wr[:kk], beta2, p[:kk])
    return window_moments(wt, wr, p, kk)


@njit(cache=True, inline="always")
def window_fwd(tau, rho, n, i, j, c, k, beta2, wt, wr, p, out_t, out_r, P, keep_p):
    """:func:`pool_window` into output pixel (n, i, j, c), and (``keep_p``) the probabilities into ``P``
    at the window's input pixels."""
    out_t[n, i, j, c], out_r[n, i, j, c] = pool_window(tau, rho, n, i * k, j * k, c, k, beta2, wt, wr, p)
    if keep_p:
        for a in range(k * k):
            P[n, i * k + a // k, j * k + a % k, c] = p[a]


@njit(cache=True, inline="always")
def window_out(f_t, f_r, r_t, r_r, n, i, j, c):
    """The output pixel's forward message as ``(mu_s, var_s)`` (0 and inf where its precision is 0) and its
    backward message ``(tau, rho)``: what :func:`pixel_bwd` needs of window (i, j) of channel c."""
    ft = f_t[n, i, j, c]
    fr = f_r[n, i, j, c]
    return ft / fr if fr > 0 else 0.0, 1.0 / fr if fr > 0 else math.inf, r_t[n, i, j, c], r_r[n, i, j, c]


@njit(cache=True, inline="always")
def pixel_bwd(b, bt, br, mu_s, var_s, tr, rr):
    """S1 backward message ``(tau, rho)`` to one pixel (message ``(bt, br)``, argmax probability ``b``) of a
    window whose output has forward ``(mu_s, var_s)`` and backward ``(tr, rr)`` messages, with the guards
    of :func:`factorgraph.equations.s1_reduce_backward`: (cavity precision below
    ``MIN_CAVITY_PRECISION``?, rest variance floored at 0?)."""
    small = br < MIN_CAVITY_PRECISION
    mu_b = bt / br if br > 0 else 0.0
    var_b = 1.0 / br if br > 0 else math.inf
    rest = var_s - b * b * var_b
    clamp = rest < 0
    rest = 0.0 if clamp else rest
    d = 1.0 + rr * rest
    return b * (tr - rr * (mu_s - b * mu_b)) / d, b * b * rr / d, small, clamp


@njit(cache=True, inline="always")
def window_bwd(tau, rho, P, f_t, f_r, r_t, r_r, n, i, j, c, k, out_t, out_r):
    """:func:`pixel_bwd` to the pixels of window (i, j) of channel c of image n, given the output's forward
    message ``f`` and backward message ``r`` at (n, i, j, c), into ``out`` at the input pixels.  Returns
    the guard counts (small cavities, floored rest variances)."""
    mu_s, var_s, tr, rr = window_out(f_t, f_r, r_t, r_r, n, i, j, c)
    small = 0
    clamp = 0
    for a in range(k * k):
        y = i * k + a // k
        x = j * k + a % k
        t, r, s, cl = pixel_bwd(P[n, y, x, c], tau[n, y, x, c], rho[n, y, x, c], mu_s, var_s, tr, rr)
        out_t[n, y, x, c], out_r[n, y, x, c] = t, r
        small += s
        clamp += cl
    return small, clamp


@njit(cache=True, inline="always")
def _next_window(c, j, i, C, w):
    """The output pixel after (i, j, c) in (row, column, channel) order."""
    c += 1
    if c == C:
        c = 0
        j += 1
        if j == w:
            j = 0
            i += 1
    return c, j, i


#: windows per tile of :func:`_fwd_images` (a multiple of 4)
TILE = 32


@njit(cache=True, error_model="numpy")
def _fwd_images(tau, rho, k, beta2, out_t, out_r, P, keep_p, n0, n1):
    """:func:`window_fwd` for every window of images ``n0 .. n1 - 1``, in tiles of ``TILE`` windows laid
    out pixel-major (row ``a`` of a scratch holds pixel ``a`` of every window of the tile), so that each
    step is one loop over the tile's windows that the compiler vectorises: the pixels' means and
    variances; every pair's ``z`` and ``|z| / sqrt 2``; erfc four or eight lanes at a time
    (:func:`factorgraph.kernels.vecmath.erfc_map`); the products of
    :func:`factorgraph.kernels.signals_cpu.argmax_probs_row` pair by pair in its order, their sum and
    normalisation (windows whose sum is not a positive finite number are redone by
    :func:`argmax_probs_row`, in log space); :func:`window_moments`.  The same operations per window as
    those functions, so the same numbers."""
    _, h, w, C = out_t.shape
    kk = k * k
    npair = kk * (kk - 1) // 2
    per = h * w * C
    wt, wr = np.empty((kk, TILE)), np.empty((kk, TILE))
    mu, var, p = np.empty((kk, TILE)), np.empty((kk, TILE)), np.empty((kk, TILE))
    z, e = np.empty((npair, TILE)), np.empty((npair, TILE))
    total = np.empty(TILE)
    row_t, row_r, row_p = np.empty(kk), np.empty(kk), np.empty(kk)
    dy, dx = np.empty(kk, np.int64), np.empty(kk, np.int64)  # pixel a of a window: row and column offsets
    for a in range(kk):
        dy[a], dx[a] = a // k, a % k
    for n in range(n0, n1):
        for g0 in range(0, per, TILE):
            m = min(TILE, per - g0)
            c0 = g0 % C
            j0 = (g0 // C) % w
            i0 = g0 // (C * w)
            c, j, i = c0, j0, i0
            for q in range(m):
                for a in range(kk):
                    wt[a, q] = tau[n, i * k + dy[a], j * k + dx[a], c]
                    wr[a, q] = rho[n, i * k + dy[a], j * k + dx[a], c]
                c, j, i = _next_window(c, j, i, C, w)
            for q in range(m, TILE):  # padding windows: finite values, results unused
                for a in range(kk):
                    wt[a, q], wr[a, q] = 0.0, 1.0
            for a in range(kk):
                for q in range(TILE):
                    mu[a, q] = wt[a, q] / wr[a, q]
                    var[a, q] = 1.0 / wr[a, q]
                    p[a, q] = 1.0
            pi = 0
            for a in range(kk):
                for b in range(a + 1, kk):
                    for q in range(TILE):
                        zz = (mu[a, q] - mu[b, q]) / math.sqrt(var[a, q] + var[b, q] + beta2)
                        z[pi, q] = zz
                        e[pi, q] = abs(zz) * SQRT1_2
                    erfc_map(e[pi], e[pi], TILE)
                    pi += 1
            pi = 0
            for a in range(kk):
                for b in range(a + 1, kk):
                    for q in range(TILE):
                        tail = 0.5 * e[pi, q]
                        up = z[pi, q] >= 0
                        p[a, q] *= 1.0 - tail if up else tail
                        p[b, q] *= tail if up else 1.0 - tail
                    pi += 1
            for q in range(TILE):
                total[q] = 0.0
            for a in range(kk):
                for q in range(TILE):
                    total[q] += p[a, q]
            for a in range(kk):
                for q in range(TILE):
                    p[a, q] /= total[q]
            for q in range(m):
                if not (total[q] > 0.0 and total[q] < math.inf):  # rare: the log-space products
                    for a in range(kk):
                        row_t[a], row_r[a] = wt[a, q], wr[a, q]
                    argmax_probs_row(row_t, row_r, beta2, row_p)
                    for a in range(kk):
                        p[a, q] = row_p[a]
            c, j, i = c0, j0, i0
            for q in range(m):
                out_t[n, i, j, c], out_r[n, i, j, c] = window_moments(wt[:, q], wr[:, q], p[:, q], kk)
                if keep_p:
                    for a in range(kk):
                        P[n, i * k + dy[a], j * k + dx[a], c] = p[a, q]
                c, j, i = _next_window(c, j, i, C, w)


@njit(cache=True)
def _fwd_serial(tau, rho, k, beta2, out_t, out_r, P, keep_p):
    _fwd_images(tau, rho, k, beta2, out_t, out_r, P, keep_p, 0, out_t.shape[0])


@njit(cache=True, parallel=True)
def _fwd_threads(tau, rho, k, beta2, out_t, out_r, P, keep_p):
    for n in prange(out_t.shape[0]):
        _fwd_images(tau, rho, k, beta2, out_t, out_r, P, keep_p, n, n + 1)


@njit(cache=True, error_model="numpy")
def _bwd_images(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, n0, n1):
    """:func:`window_bwd` of every window of images ``n0 .. n1 - 1``, channels innermost (contiguous, so the
    compiler vectorises :func:`pixel_bwd` over them): per window position the outputs' messages of all
    channels, then each pixel offset of the window over all channels."""
    _, h, w, C = f_t.shape
    small = 0
    clamp = 0
    mu_s, var_s, tr, rr = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    for n in range(n0, n1):
        for i in range(h):
            for j in range(w):
                for c in range(C):
                    mu_s[c], var_s[c], tr[c], rr[c] = window_out(f_t, f_r, r_t, r_r, n, i, j, c)
                for dy in range(k):
                    for dx in range(k):
                        y, x = i * k + dy, j * k + dx
                        for c in range(C):
                            t, r, s, cl = pixel_bwd(P[n, y, x, c], tau[n, y, x, c], rho[n, y, x, c], mu_s[c],
                                                    var_s[c], tr[c], rr[c])
                            out_t[n, y, x, c], out_r[n, y, x, c] = t, r
                            small += s
                            clamp += cl
    return small, clamp


@njit(cache=True)
def _bwd_serial(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r):
    return _bwd_images(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, 0, f_t.shape[0])


@njit(cache=True, parallel=True)
def _bwd_threads(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r):
    N = f_t.shape[0]
    acc = np.zeros((N, 2), np.int64)
    for n in prange(N):
        acc[n, 0], acc[n, 1] = _bwd_images(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, n, n + 1)
    return acc[:, 0].sum(), acc[:, 1].sum()


def _threads(out):
    return use_threads(out.size, THREADS_MIN_ROWS) and out.shape[0] > 1


def maxpool_predict(tau, rho, k, beta2, out_t, out_r):
    """Max-pool prediction of images (N, H, W, C) into (N, H // k, W // k, C); on all threads inside
    :func:`factorgraph.kernels.threaded` from ``THREADS_MIN_ROWS`` windows."""
    no_p = np.empty((1, 1, 1, 1), out_t.dtype)  # not written (keep_p False)
    (_fwd_threads if _threads(out_t) else _fwd_serial)(tau, rho, k, beta2, out_t, out_r, no_p, False)


def maxpool_fwd(tau, rho, k, beta2, out_t, out_r, P):
    """Training forward: :func:`maxpool_predict`, and the argmax probabilities of every window's pixels
    into ``P`` (N, H, W, C) for the backward; pixels outside complete windows are left as they are
    (the caller zeroes ``P``)."""
    (_fwd_threads if _threads(out_t) else _fwd_serial)(tau, rho, k, beta2, out_t, out_r, P, True)


def maxpool_bwd(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r, counts):
    """Training backward: S1 messages to the pixels of every complete window (input messages ``tau``,
    ``rho`` and probabilities ``P`` as in the forward, output forward ``f`` and backward ``r`` messages
    (N, H // k, W // k, C)) into ``out`` (N, H, W, C; the caller zeroes the pixels outside windows).
    Adds the guard counts (:data:`GUARD_NAMES`) to ``counts``."""
    fn = _bwd_threads if _threads(f_t) else _bwd_serial
    small, clamp = fn(tau, rho, P, f_t, f_r, r_t, r_r, k, out_t, out_r)
    counts[P_SMALL] += small
    counts[P_CLAMP] += clamp
