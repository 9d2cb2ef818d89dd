"""Numba CPU kernels of the training signals: the argmax and softmax likelihood backward messages.

They compute the NumPy reference of :func:`factorgraph.equations.argmax_backward` and
:func:`factorgraph.equations.softmax_backward` (the same composite Gauss-Legendre rule: the mode of the
concave log-density by bisection, nodes on mode +- 9 sigma, 7/12/22 panels of 12 points, finer near the
kink of l(z)) per example, without NumPy temporaries.  The per-class functions (``*_one``) are shared with
the CUDA kernels (:mod:`factorgraph.kernels.signals_cuda`).  ``tests/test_kernels_cpu.py`` asserts
equality with the reference.
"""

import math

import numpy as np
from numba import njit, prange

from factorgraph import config
from factorgraph.kernels import use_threads
from factorgraph.equations.softmax import (
    _GL_POINTS,
    _KINK_HALF_WIDTH,
    _KINK_PANEL,
    _MODE_RTOL,
    _MODE_STEPS,
    _PANEL_SIGMAS,
    _WINDOW_SIGMAS,
    _gauss_legendre,
)
from factorgraph.kernels.scalar import SQRT1_2, log_ndtr, shift_and_factor

A_U_FLOOR = 0
ARGMAX_GUARDS = ("truncation_u_floor",)
S_LOW, S_NONFINITE, S_IMPROPER, S_CLAMP = range(4)
SOFTMAX_GUARDS = ("softmax_low_mass", "softmax_nonfinite_fallback", "softmax_improper_fallback",
                  "softmax_tolerant_clamp")
MIN_U = max(config.MIN_TRUNCATION_FACTOR, float(np.finfo(np.float64).tiny))
PROBIT = config.PROBIT
BOUND = config.SOFTMAX_BOUND_SIGMAS
LOG_MIN_MASS = math.log(config.SOFTMAX_MIN_MASS)
TOL = config.SOFTMAX_DIVISION_TOL
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
T1, T2, T3 = 7, 12, 22  # panel tiers of the reference rule
GL_X, GL_W = (np.ascontiguousarray(a) for a in _gauss_legendre(_GL_POINTS))
THREADS_MIN_ROWS = 512


# ----- argmax ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def argmax_pair_one(mu_y, var_y, mu_i, var_i, beta2):
    """Pair (y beats i) messages: (tau_to_y, rho_to_y, tau_to_i, rho_to_i, u floored?), hack 1 applied."""
    mu_s = mu_y - mu_i
    var_s = var_y + var_i + beta2
    rho_s = 1.0 / var_s
    tau_s = mu_s * rho_s
    sr = math.sqrt(rho_s)
    t = tau_s / sr
    shift, u = shift_and_factor(t)
    floored = 0
    if u < MIN_U:
        u = MIN_U
        floored = 1
    tau_r = sr * shift / u - tau_s
    rho_r = rho_s / u - rho_s
    d_y = 1.0 + rho_r * (var_i + beta2)
    d_i = 1.0 + rho_r * (var_y + beta2)
    p_win = 0.5 * math.erfc(-mu_s / math.sqrt(var_s) * SQRT1_2)
    return ((tau_r - rho_r * (mu_s - mu_y)) / d_y, rho_r / d_y,
            -(tau_r - rho_r * mu_y) / d_i * p_win, rho_r / d_i * p_win, floored)


@njit(cache=True)
def argmax_bwd(tau, rho, y, beta2, reg_var, regularize, out_t, out_r, counts):
    """Argmax backward for messages (n, C) and labels (n,) into ``out`` (n, C)."""
    n, C = tau.shape
    for e in range(n):
        yy = y[e]
        mu_y = tau[e, yy] / rho[e, yy]
        var_y = 1.0 / rho[e, yy]
        acc_t = 0.0
        acc_r = 0.0
        for i in range(C):
            if i == yy:
                continue
            ty, ry, ti, ri, f = argmax_pair_one(mu_y, var_y, tau[e, i] / rho[e, i], 1.0 / rho[e, i], beta2)
            counts[A_U_FLOOR] += f
            acc_t += ty
            acc_r += ry
            out_t[e, i] = ti - 1.0 / reg_var if regularize else ti
            out_r[e, i] = ri + 1.0 / reg_var if regularize else ri
        out_t[e, yy] = acc_t + 1.0 / reg_var if regularize else acc_t
        out_r[e, yy] = acc_r + 1.0 / reg_var if regularize else acc_r


# ----- softmax ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _edge(s, A, psi1, psi2, h_out, h_mid):
    return (A + min(s, psi1) * h_out + min(max(s - psi1, 0.0), psi2 - psi1) * h_mid
            + max(s - psi2, 0.0) * h_out)


@njit(cache=True, inline="always")
def _q(u, x0, log_s, isy, bo, inv2v):
    x = x0 + u
    return isy * x + bo - max(log_s, x) - u * u * inv2v, x


@njit(cache=True, inline="always")
def _panel(k, panels, R, A, B, psi1, psi2, h_out, h_mid):
    """Left edge and width of panel ``k`` of the composite rule."""
    left = _edge(R * k / panels, A, psi1, psi2, h_out, h_mid)
    right = B if k == panels - 1 else _edge(R * (k + 1) / panels, A, psi1, psi2, h_out, h_mid)
    return left, right - left


@njit(cache=True, inline="always")
def _node(left, width, xg, wg, ref, x0, log_s, isy, bo, inv2v):
    """Offset ``u`` of one quadrature node and its weighted integrand, relative to ``exp(ref)``."""
    u = left + width * xg
    q, x = _q(u, x0, log_s, isy, bo, inv2v)
    return u, width * wg * math.exp(q - ref) / (1.0 + math.exp(-abs(x - log_s)))


@njit(cache=True)
def softmax_one(mu, var, lo, hi, x0, log_s, isy, bo, xg, wg):
    """Tilted moments ``(log m0, mean offset, variance)`` of ``exp(l(z)) N(z; mu, var)`` on [lo, hi]."""
    sigma = math.sqrt(var)
    L0 = lo - mu
    R0 = hi - mu
    a = max(L0, -var)
    b = min(R0, var)
    shift = 1.0 - isy
    if b > a:
        steps = min(max(int(math.ceil(math.log2((b - a) / (_MODE_RTOL * sigma)))), 0), _MODE_STEPS)
        for _ in range(steps):
            mid = 0.5 * (a + b)
            sig = 1.0 / (1.0 + math.exp(-(log_s - x0 - mid)))
            if sig - shift > mid / var:
                a = mid
            else:
                b = mid
    mode = 0.5 * (a + b)
    A = max(L0, mode - _WINDOW_SIGMAS * sigma)
    B = min(R0, mode + _WINDOW_SIGMAS * sigma)
    kink = log_s - x0
    p1 = min(max(kink - _KINK_HALF_WIDTH, A), B)
    p2 = min(max(kink + _KINK_HALF_WIDTH, A), B)
    h_out = _PANEL_SIGMAS * sigma
    h_mid = min(_PANEL_SIGMAS / math.sqrt(1.0 / var + 0.25), _KINK_PANEL)
    need = (p1 - A) / h_out + (p2 - p1) / h_mid + (B - p2) / h_out
    panels = T1 if need <= T1 else (T2 if need <= T2 else T3)
    psi1 = (p1 - A) / h_out
    psi2 = psi1 + (p2 - p1) / h_mid
    R = psi2 + (B - p2) / h_out
    inv2v = 0.5 / var
    G = xg.shape[0]
    ref = -math.inf  # pass 1: the largest log-integrand over the nodes
    for k in range(panels):
        left, width = _panel(k, panels, R, A, B, psi1, psi2, h_out, h_mid)
        for g in range(G):
            q, _ = _q(left + width * xg[g], x0, log_s, isy, bo, inv2v)
            ref = max(ref, q)
    s0 = 0.0  # pass 2: mass and mean
    s1 = 0.0
    for k in range(panels):
        left, width = _panel(k, panels, R, A, B, psi1, psi2, h_out, h_mid)
        for g in range(G):
            u, h = _node(left, width, xg[g], wg[g], ref, x0, log_s, isy, bo, inv2v)
            s0 += h
            s1 += h * u
    mean_u = s1 / s0
    s2 = 0.0  # pass 3: central second moment
    for k in range(panels):
        left, width = _panel(k, panels, R, A, B, psi1, psi2, h_out, h_mid)
        for g in range(G):
            u, h = _node(left, width, xg[g], wg[g], ref, x0, log_s, isy, bo, inv2v)
            du = u - mean_u
            s2 += h * du * du
    log_m0 = ref + math.log(s0) - (math.log(sigma) + HALF_LOG_2PI) if s0 > 0 else -math.inf
    return log_m0, mean_u, s2 / s0


@njit(cache=True, inline="always")
def softmax_message_one(mu, rho, log_m0, mean_u, var_u):
    """SPEC 5.9 decisions: (tau, rho, low?, nonfinite?, improper?, clamped?)."""
    if log_m0 < LOG_MIN_MASS:
        return 0.0, 0.0, 1, 0, 0, 0
    ok = math.isfinite(log_m0) and math.isfinite(mean_u) and math.isfinite(var_u) and var_u > 0
    rho_hat = 1.0 / var_u if ok else 0.0
    tau_hat = (mu + mean_u) * rho_hat
    if not ok or not math.isfinite(rho_hat) or not math.isfinite(tau_hat):
        return 0.0, 0.0, 0, 1, 0, 0
    d = rho_hat - rho
    if d < -TOL:
        return 0.0, 0.0, 0, 0, 1, 0
    tau = mu * d + mean_u * rho_hat
    if d < 0:
        return tau, 0.0, 0, 0, 0, 1
    return tau, d, 0, 0, 0, 0


@njit(cache=True, inline="always")
def _t(tau, rho):
    """Probit-scaled mean ``mu / sqrt(1 + pi var / 8)`` from natural parameters."""
    var = 1.0 / rho  # computed as the reference does, so the kernels agree to rounding
    return tau / rho / math.sqrt(1.0 + PROBIT * var)


@njit(cache=True)
def softmax_setup(tau, rho, C, i, yy):
    """Per-logit inputs of :func:`softmax_one` from one example's messages (rows ``tau``, ``rho``):
    ``(mu, var, lo, hi, x0, log_s, isy, bo)``."""
    M = -math.inf
    top = 0
    for j in range(C):
        tj = _t(tau[j], rho[j])
        if tj > M:
            M = tj
            top = j
    if i == top:  # log-sum-exp of the others, relative to the second largest t
        M2 = -math.inf
        for j in range(C):
            if j != top:
                M2 = max(M2, _t(tau[j], rho[j]))
        if M2 == -math.inf:
            log_s = -math.inf
        else:
            acc = 0.0
            for j in range(C):
                if j != top:
                    acc += math.exp(_t(tau[j], rho[j]) - M2)
            log_s = M2 - M + math.log(acc)
    else:
        acc = 0.0
        for j in range(C):
            acc += math.exp(_t(tau[j], rho[j]) - M)
        log_s = math.log(acc - math.exp(_t(tau[i], rho[i]) - M))
    mu_i = tau[i] / rho[i]
    var_i = 1.0 / rho[i]
    mu_y = tau[yy] / rho[yy]
    sig_i = math.sqrt(var_i)
    sig_y = math.sqrt(1.0 / rho[yy])
    lo = mu_i - BOUND * sig_i
    hi = mu_i + BOUND * sig_i
    if hi > mu_y - BOUND * sig_y:
        lo = min(lo, mu_y - BOUND * sig_y)
        hi = max(hi, mu_y + BOUND * sig_y)
    isy = 1.0 if i == yy else 0.0
    bo = 0.0 if i == yy else _t(tau[yy], rho[yy]) - M
    return mu_i, var_i, lo, hi, mu_i - M, log_s, isy, bo


@njit(cache=True, inline="always")
def softmax_logit(tau, rho, C, i, yy, xg, wg):
    """Softmax backward message to logit ``i`` of one example: (tau, rho, low?, nonfinite?, improper?,
    clamped?)."""
    mu, var, lo, hi, x0, log_s, isy, bo = softmax_setup(tau, rho, C, i, yy)
    log_m0, mean_u, var_u = softmax_one(mu, var, lo, hi, x0, log_s, isy, bo, xg, wg)
    return softmax_message_one(mu, rho[i], log_m0, mean_u, var_u)


@njit(cache=True)
def softmax_bwd(tau, rho, y, xg, wg, out_t, out_r, counts):
    """Softmax backward for messages (n, C) and labels (n,) into ``out`` (n, C)."""
    n, C = tau.shape
    for e in range(n):
        for i in range(C):
            t, r, low, nonfin, improper, clamp = softmax_logit(tau[e], rho[e], C, i, y[e], xg, wg)
            out_t[e, i] = t
            out_r[e, i] = r
            counts[S_LOW] += low
            counts[S_NONFINITE] += nonfin
            counts[S_IMPROPER] += improper
            counts[S_CLAMP] += clamp


# ----- argmax probabilities (argmax prediction, max-pool weights) -------------------------------------------
@njit(cache=True, inline="always")
def log_ndtr_pair(z):
    """``(log Phi(z), log Phi(-z))`` from one erfc of ``|z|`` (the small tail ``e``: ``log e`` and
    ``log1p(-e)``); :func:`~factorgraph.kernels.scalar.log_ndtr` where the tail underflows."""
    a = abs(z)
    if a > 35.0:
        return log_ndtr(z), log_ndtr(-z)
    tail = 0.5 * math.erfc(a * SQRT1_2)
    small, big = math.log(tail), math.log1p(-tail)
    return (big, small) if z >= 0 else (small, big)


@njit(cache=True, inline="always")
def _pairwise(tau, rho, beta2, out, logspace):
    """``out[i] = prod_{j != i} Phi(z_ij)`` (or its log), each pair from one erfc of ``|z|``: the small
    tail ``e`` and its complement ``1 - e`` (in log space ``log_ndtr_pair``)."""
    C = tau.shape[0]
    for i in range(C):
        out[i] = 0.0 if logspace else 1.0
    for i in range(C):
        mu_i = tau[i] / rho[i]
        var_i = 1.0 / rho[i]
        for j in range(i + 1, C):
            z = (mu_i - tau[j] / rho[j]) / math.sqrt(var_i + 1.0 / rho[j] + beta2)
            if logspace:
                lp, lq = log_ndtr_pair(z)
                out[i] += lp
                out[j] += lq
            else:
                tail = 0.5 * math.erfc(abs(z) * SQRT1_2)
                out[i] *= 1.0 - tail if z >= 0 else tail
                out[j] *= tail if z >= 0 else 1.0 - tail


@njit(cache=True, inline="always")
def argmax_probs_row(tau, rho, beta2, out):
    """``p_i ∝ prod_{j != i} Phi((mu_i - mu_j) / sqrt(var_i + var_j + beta2))`` over one row.

    Each pair (i, j) is evaluated once, ``Phi(z)`` for i and ``Phi(-z) = 1 - Phi(z)`` for j, and the
    products are formed directly: the candidate with the largest mean has every factor >= 1/2, so the
    normaliser is at least ``2^-(C-1)`` and cannot underflow for C < 1000; only candidates below ~1e-308
    flush to 0, as in the log-space reference.  Where the normaliser is not a positive finite number the
    row is redone in log space."""
    C = tau.shape[0]
    _pairwise(tau, rho, beta2, out, False)
    total = 0.0
    for i in range(C):
        total += out[i]
    if not (total > 0.0 and total < math.inf):
        _pairwise(tau, rho, beta2, out, True)
        mx = -math.inf
        for i in range(C):
            mx = max(mx, out[i])
        total = 0.0
        for i in range(C):
            out[i] = math.exp(out[i] - mx)
            total += out[i]
    for i in range(C):
        out[i] /= total


@njit(cache=True)
def _probs_serial(tau, rho, beta2, out):
    for n in range(tau.shape[0]):
        argmax_probs_row(tau[n], rho[n], beta2, out[n])


@njit(cache=True, parallel=True)
def _probs_threads(tau, rho, beta2, out):
    for n in prange(tau.shape[0]):
        argmax_probs_row(tau[n], rho[n], beta2, out[n])


def argmax_probs(tau, rho, beta2, out):
    """Argmax probabilities over the last axis of (N, C) messages into ``out`` (N, C); on all threads
    inside :func:`factorgraph.kernels.threaded` from ``THREADS_MIN_ROWS`` rows."""
    (_probs_threads if use_threads(tau.shape[0], THREADS_MIN_ROWS) else _probs_serial)(tau, rho, beta2, out)
