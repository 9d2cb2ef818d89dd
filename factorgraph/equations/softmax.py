"""Softmax prediction by the probit approximation (SPEC 3.3, 5.9).

``p = softmax(t)`` with ``t_i = mu_i / sqrt(1 + (pi / 8) var_i)``.
"""

import math

import numpy as np

from factorgraph import config, guards
from factorgraph.backend import get_array_module, special
from factorgraph.gaussian import Gaussian


def probit_scaled_means(m):
    """``t_i = mu_i / sqrt(1 + pi var_i / 8)``, written ``mu_i / sqrt(1 + pi / (8 rho_i))``."""
    xp = m.xp
    return m.mean / xp.sqrt(1 + config.PROBIT * m.var)


def probit_softmax(m):
    """Class probabilities over the last axis of the logit messages ``m`` (..., C)."""
    xp = m.xp
    t = probit_scaled_means(m)
    t = t - t.max(axis=-1, keepdims=True)
    e = xp.exp(t)
    return e / e.sum(axis=-1, keepdims=True)


# ----- softmax likelihood backward (SPEC 5.9) ----------------------------------------------------------

#: Gauss-Legendre points per panel of the composite rule.
_GL_POINTS = 12
#: Panels on each of the two outer pieces (beyond the kink of the log-likelihood) and on the middle one.
_OUTER_PANELS = 6
_MIDDLE_PANELS = 16
#: Half-width (in z units) of the middle piece around the kink ``a = M + log S_{-i}``; beyond it the
#: log-likelihood is linear up to a term below exp(-_KINK_HALF_WIDTH) ~ 4e-11.
_KINK_HALF_WIDTH = 24.0
#: Half-width, in sigma_i, of the window around the mode of the tilted density that gets the nodes; the
#: tilted density is log-concave with curvature <= -1/var_i, so beyond it the mass is < exp(-81/2).
_WINDOW_SIGMAS = 9.0
#: Bisection steps for the mode (the bracket is at most 2 var_i wide; the window needs ~1e-3 sigma_i).
_MODE_STEPS = 60
#: Elements per chunk, bounding the (elements x nodes) temporaries to a few tens of MB.
_CHUNK = 8192

_RULES = {}


def _panel_rule(panels, points=_GL_POINTS):
    """Nodes and weights of the composite Gauss-Legendre rule on [0, 1] (cached)."""
    key = (panels, points)
    if key not in _RULES:
        x, w = np.polynomial.legendre.leggauss(points)
        j = np.arange(panels)[:, None]
        nodes = ((j + (x[None, :] + 1) / 2) / panels).ravel()
        weights = np.broadcast_to(w / (2 * panels), (panels, points)).ravel()
        _RULES[key] = (nodes, np.ascontiguousarray(weights))
    return _RULES[key]


def _log_integrand(u, x0, log_s, is_y, base_other, log_norm, inv2v):
    """``l(z) + log N(z; mu_i, var_i)`` at ``z = mu_i + u``, with ``x0 = mu_i - M`` (all but u are (E, 1))."""
    xp = get_array_module(u)
    x = x0 + u  # z - M
    base = xp.where(is_y, x, base_other)
    return base - xp.logaddexp(log_s, x) - u * u * inv2v - log_norm


def _tilted_moments(mu, var, lo, hi, x0, log_s, is_y, base_other):
    """Log-mass, mean offset and variance of ``exp(l(z)) N(z; mu, var)`` on [lo, hi], per element.

    Every argument is a flat float64 array (E,); offsets ``u = z - mu`` keep the Gaussian term exact for
    tiny variances and large means.  Returns ``(log_m0, mean_u, var_u)``: ``E[z] = mu + mean_u``.
    """
    xp = get_array_module(mu)
    sp = special(xp)
    sigma = xp.sqrt(var)
    L0, R0 = lo - mu, hi - mu
    # mode of the (concave) log-integrand on [L0, R0]: g'(u) = l'(z) - u / var, l' in (-1, 1), so the
    # unconstrained root lies in (-var, var); bisection, vectorised
    a_lo = xp.maximum(L0, -var)
    a_hi = xp.minimum(R0, var)
    for _ in range(_MODE_STEPS):
        mid = 0.5 * (a_lo + a_hi)
        d = x0 + mid - log_s  # z - a
        dl = xp.where(is_y, sp.expit(-d), -sp.expit(d))
        up = dl - mid / var > 0
        a_lo = xp.where(up, mid, a_lo)
        a_hi = xp.where(up, a_hi, mid)
    mode = 0.5 * (a_lo + a_hi)
    A = xp.maximum(L0, mode - _WINDOW_SIGMAS * sigma)
    B = xp.minimum(R0, mode + _WINDOW_SIGMAS * sigma)
    kink = log_s - x0  # a - mu_i, may be -inf when S_{-i} underflows
    with np.errstate(invalid="ignore"):
        p1 = xp.minimum(xp.maximum(kink - _KINK_HALF_WIDTH, A), B)
        p2 = xp.minimum(xp.maximum(kink + _KINK_HALF_WIDTH, A), B)
    u_parts, w_parts = [], []
    for s, e, panels in ((A, p1, _OUTER_PANELS), (p1, p2, _MIDDLE_PANELS), (p2, B, _OUTER_PANELS)):
        nodes, weights = _panel_rule(panels)
        width = (e - s)[:, None]
        u_parts.append(s[:, None] + width * xp.asarray(nodes))
        w_parts.append(width * xp.asarray(weights))
    u = xp.concatenate(u_parts, axis=1)
    w = xp.concatenate(w_parts, axis=1)
    col = (lambda a: a[:, None])
    g = _log_integrand(u, col(x0), col(log_s), col(is_y), col(base_other),
                       col(xp.log(sigma) + 0.5 * math.log(2 * math.pi)), col(0.5 / var))
    gmax = g.max(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        h = w * xp.exp(g - gmax[:, None])
        s0 = h.sum(axis=1)
        mean_u = (h * u).sum(axis=1) / s0
        du = u - mean_u[:, None]
        var_u = (h * du * du).sum(axis=1) / s0
    with np.errstate(divide="ignore", invalid="ignore"):
        log_m0 = gmax + xp.log(s0)
    return log_m0, mean_u, var_u


def _softmax_message(mu, rho, log_m0, mean_u, var_u):
    """Turn tilted moments into the backward message, with the SPEC 5.9 decisions (flat float64 arrays).

    ``m0 < SOFTMAX_MIN_MASS`` -> G(0, 0) (``"softmax_low_mass"``); non-finite moments -> G(0, 0)
    (``"softmax_nonfinite_fallback"``); otherwise ``G(tau_hat, rho_hat) / G(mu rho, rho)`` by tolerant
    division: a deficit in ``[-tol, 0)`` clamps rho to 0 (``"softmax_tolerant_clamp"``), a larger one
    gives G(0, 0) (``"softmax_improper_fallback"``).
    """
    xp = get_array_module(mu)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rho_hat = 1 / var_u
        tau_hat = (mu + mean_u) * rho_hat
        low = log_m0 < math.log(config.SOFTMAX_MIN_MASS)
        nonfinite = ~low & ~(
            xp.isfinite(log_m0) & xp.isfinite(rho_hat) & xp.isfinite(tau_hat) & (var_u > 0)
        )
        ok = ~(low | nonfinite)
        d = rho_hat - rho
        # tau_hat - tau, written so the large parts mu * rho_hat and mu * rho cancel exactly
        tau = mu * d + mean_u * rho_hat
    improper = ok & (d < -config.SOFTMAX_DIVISION_TOL)
    clamp = ok & (d < 0) & ~improper
    guards.record("softmax_low_mass", low)
    guards.record("softmax_nonfinite_fallback", nonfinite)
    guards.record("softmax_improper_fallback", improper)
    guards.record("softmax_tolerant_clamp", clamp)
    good = ok & ~improper
    tau = xp.where(good, tau, 0.0)
    rho = xp.where(good, xp.maximum(d, 0.0), 0.0)
    return tau, rho


def softmax_backward(m, y):
    r"""Backward messages of the softmax likelihood to the logits (SPEC 5.9), by 1-D quadrature.

    For logit i with forward message ``N(mu_i, var_i)`` and label y: ``t_j = mu_j / sqrt(1 + pi var_j / 8)``,
    ``M = max_j t_j``, ``S_{-i} = sum_{j != i} exp(t_j - M)``, and the log-likelihood

    * ``i == y``: ``l(z) = (z - M) - logaddexp(log S_{-i}, z - M)``;
    * ``i != y``: ``l(z) = (t_y - M) - logaddexp(log S_{-i}, z - M)``.

    The tilted density ``f(z) = exp(l(z)) N(z; mu_i, var_i)`` is integrated over
    ``[mu_i - 7 sigma_i, mu_i + 7 sigma_i]``, widened to cover ``[mu_y - 7 sigma_y, mu_y + 7 sigma_y]`` when
    ``mu_i + 7 sigma_i > mu_y - 7 sigma_y`` (``SOFTMAX_BOUND_SIGMAS``).  With ``m0 = int f``, mean ``m`` and
    central variance ``v`` of ``f / m0``: ``m0 < SOFTMAX_MIN_MASS`` gives ``G(0, 0)``; otherwise
    ``rho_hat = 1 / v``, ``tau_hat = m rho_hat`` and the message is the tolerant division
    ``G(tau_hat, rho_hat) / m_i`` with tol ``SOFTMAX_DIVISION_TOL`` (a deficit in ``[-tol, 0)`` sets rho to
    0, possibly leaving an improper ``G(tau, 0)``).  Instead of aborting, a larger deficit or non-finite
    moments give ``G(0, 0)`` and are counted (guards ``softmax_improper_fallback``,
    ``softmax_nonfinite_fallback``; also ``softmax_tolerant_clamp``, ``softmax_low_mass``).

    Quadrature (vectorised, replaces the code's adaptive Gauss-Kronrod): ``log f`` is concave, so its
    mode on the interval is found by bisection and the nodes are restricted to mode +- 9 sigma_i
    (neglected mass < exp(-40)); that window is split at ``a +- 24``, ``a = M + log S_{-i}`` being the
    kink of ``l``, and the three pieces get 6, 16 and 6 panels of 8-point Gauss-Legendre (224 nodes).
    The integrand is evaluated in log space relative to its maximum over the nodes (so ``m0`` is exact
    in log form) and the variance is computed as a central moment.  Arithmetic is float64 internally;
    the result has the dtype of ``m``.

    Parameters
    ----------
    m : Gaussian (..., C)
        Forward messages of the logits (``rho > 0``).
    y : int array (...)
        Labels in ``[0, C)``.

    Returns
    -------
    Gaussian (..., C)
    """
    xp = m.xp
    c = m.shape[-1]
    y = xp.asarray(y)
    if y.shape != m.shape[:-1]:
        raise ValueError(f"labels of shape {y.shape} do not match messages of shape {m.shape}")
    if y.size and (bool(xp.any(y < 0)) or bool(xp.any(y >= c))):
        raise ValueError(f"labels must lie in [0, {c})")
    if bool(xp.any(~(m.rho > 0))):
        raise ValueError("softmax_backward needs forward messages with rho > 0")
    f = Gaussian(m.tau.astype(np.float64), m.rho.astype(np.float64))
    mu, var = f.mean, f.var
    sigma = xp.sqrt(var)
    t = probit_scaled_means(f)
    M = t.max(axis=-1, keepdims=True)
    e = xp.exp(t - M)
    # S_{-i} = S - exp(t_i - M); for the arg-max class (where S - 1 could cancel) summed directly
    onehot_k = xp.arange(c) == xp.argmax(t, axis=-1)[..., None]
    s_k = xp.where(onehot_k, 0.0, e).sum(axis=-1, keepdims=True)
    s_mi = xp.where(onehot_k, s_k, e.sum(axis=-1, keepdims=True) - e)
    with np.errstate(divide="ignore"):
        log_s = xp.log(s_mi)
    yk = y[..., None]
    t_y = xp.take_along_axis(t, yk, axis=-1)
    mu_y = xp.take_along_axis(mu, yk, axis=-1)
    sig_y = xp.take_along_axis(sigma, yk, axis=-1)
    k = config.SOFTMAX_BOUND_SIGMAS
    lo, hi = mu - k * sigma, mu + k * sigma
    widen = hi > mu_y - k * sig_y
    lo = xp.where(widen, xp.minimum(lo, mu_y - k * sig_y), lo)
    hi = xp.where(widen, xp.maximum(hi, mu_y + k * sig_y), hi)
    is_y = xp.arange(c) == yk
    base_other = xp.broadcast_to(t_y - M, mu.shape)

    shape = mu.shape
    flat = [xp.ascontiguousarray(xp.broadcast_to(a, shape)).ravel()
            for a in (mu, var, lo, hi, mu - M, log_s, is_y, base_other)]
    n = flat[0].size
    log_m0 = xp.empty(n)
    mean_u = xp.empty(n)
    var_u = xp.empty(n)
    for s in range(0, n, _CHUNK):
        sl = slice(s, s + _CHUNK)
        log_m0[sl], mean_u[sl], var_u[sl] = _tilted_moments(*(a[sl] for a in flat))
    tau, rho = _softmax_message(flat[0], f.rho.ravel(), log_m0, mean_u, var_u)
    return Gaussian(tau.reshape(shape).astype(m.dtype), rho.reshape(shape).astype(m.dtype))
