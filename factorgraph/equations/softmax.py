"""Softmax likelihood: prediction by the probit approximation and backward messages (SPEC 3.3, 5.9).

* :func:`probit_softmax`: ``p = softmax(t)`` with ``t_i = mu_i / sqrt(1 + (pi / 8) var_i)``.
* :func:`softmax_backward`: the message to each logit by marginal approximation, the tilted moments of
  ``exp(l(z)) N(z; mu_i, var_i)`` computed by a vectorised composite Gauss-Legendre rule.
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
#: Panel counts of the composite rule; each element uses the smallest that meets its need R (see
#: :func:`_tilted_moments`): R <= 6.8 when var <= 1, R <= 22 always.
_PANEL_TIERS = (7, 12, 22)
#: Node spacing: panels at most this many sigma wide away from the kink of l(z), and at most this many
#: (effective) sigma and ``_KINK_PANEL`` wide within ``_KINK_HALF_WIDTH`` of it.  12-point Gauss-Legendre
#: on 3 sigma panels integrates a Gaussian and its first two moments to ~1e-15 relative.
_PANEL_SIGMAS = 3.0
_KINK_PANEL = 3.0
#: Half-width of the zone around the kink ``a = M + log S_{-i}`` of l(z) with the finer spacing; beyond it
#: l(z) is linear up to a term below exp(-24) ~ 4e-11 (poles of log(S + e^z) sit at Im z = +-pi).
_KINK_HALF_WIDTH = 24.0
#: Half-width, in sigma_i, of the window around the mode of the tilted density that gets the nodes; the
#: log-density is concave with curvature <= -1/var_i, so the mass beyond it is below exp(-81/2).
_WINDOW_SIGMAS = 9.0
#: Bisection for the mode: stop at this fraction of sigma_i (the window only needs ~1e-3 sigma_i), and
#: never take more than ``_MODE_STEPS`` steps.
_MODE_RTOL = 1e-6
_MODE_STEPS = 80
#: Elements per chunk, bounding the (elements x nodes) temporaries.
_CHUNK = 2048

_GL_CACHE = {}


def _gauss_legendre(points=_GL_POINTS):
    """Gauss-Legendre nodes mapped to [0, 1] and weights summing to 1 (computed once, cached)."""
    if points not in _GL_CACHE:
        x, w = np.polynomial.legendre.leggauss(points)
        _GL_CACHE[points] = ((x + 1) / 2, w / 2)
    return _GL_CACHE[points]


def _mode_offset(var, L0, R0, x0, log_s, is_y):
    """Argmax over ``u in [L0, R0]`` of the concave ``l(mu + u) - u^2 / (2 var)``, by bisection on g'.

    ``g'(u) = l'(z) - u / var`` with ``l' = sigmoid(a - z)`` (i = y) or ``sigmoid(a - z) - 1`` (i != y),
    both in (-1, 1), so the unconstrained root lies in (-var, var).  Bisected to ``_MODE_RTOL`` sigma.
    """
    xp = get_array_module(var)
    sp = special(xp)
    lo = xp.maximum(L0, -var)
    hi = xp.minimum(R0, var)
    if lo.size == 0:
        return lo
    steps = float(xp.max(xp.log2((hi - lo) / (_MODE_RTOL * xp.sqrt(var)))))
    shift = 1.0 - is_y.astype(var.dtype)
    for _ in range(min(max(int(math.ceil(steps)), 0), _MODE_STEPS)):
        mid = 0.5 * (lo + hi)
        up = sp.expit(log_s - x0 - mid) - shift > mid / var
        lo = xp.where(up, mid, lo)
        hi = xp.where(up, hi, mid)
    return 0.5 * (lo + hi)


def _chunk_moments(panels, A, B, p1, p2, h_out, h_mid, x0, log_s, isy, base_other, inv2v):
    """Tilted moments on one chunk with a fixed panel count.

    Returns ``(s0, ref, mean_u, var_u)`` with ``log m0 = ref + log(s0) - log(sigma sqrt(2 pi))``.
    """
    xp = get_array_module(A)
    xg, wg = _gauss_legendre()
    xg, wg = xp.asarray(xg), xp.asarray(wg)
    c = (lambda a: a[:, None])
    # panel edges: equidistant in Psi(u) = int_A^u du / h(u), h = h_out outside [p1, p2] and h_mid inside
    psi1 = (p1 - A) / h_out
    psi2 = psi1 + (p2 - p1) / h_mid
    R = psi2 + (B - p2) / h_out
    s = c(R) * (xp.arange(panels + 1) / panels)
    edges = (c(A) + xp.minimum(s, c(psi1)) * c(h_out)
             + xp.minimum(xp.maximum(s - c(psi1), 0), c(psi2 - psi1)) * c(h_mid)
             + xp.maximum(s - c(psi2), 0) * c(h_out))
    edges[:, -1] = B
    left = edges[:, :-1, None]
    width = (edges[:, 1:] - edges[:, :-1])[:, :, None]
    u = (left + width * xg).reshape(len(A), -1)
    w = (width * wg).reshape(len(A), -1)
    # integrand up to the constant 1 / (sigma sqrt(2 pi)), with x = z - M:
    #   exp(l) = exp(base - logaddexp(log S, x)) = exp(base - max(log S, x)) / (1 + exp(-|x - log S|)),
    # the first factor (with the Gaussian exponent) taken relative to its maximum over the nodes
    x = c(x0) + u
    q = c(isy) * x + c(base_other) - xp.maximum(c(log_s), x) - u * u * c(inv2v)
    ref = q.max(axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        h = w * xp.exp(q - c(ref)) / (1 + xp.exp(-xp.abs(x - c(log_s))))
        s0 = h.sum(axis=1)
        mean_u = (h * u).sum(axis=1) / s0
        du = u - c(mean_u)
        var_u = (h * du * du).sum(axis=1) / s0
    return s0, ref, mean_u, var_u


def _tilted_moments(mu, var, lo, hi, x0, log_s, is_y, base_other):
    """Log-mass, mean offset and variance of ``exp(l(z)) N(z; mu, var)`` on [lo, hi], per element.

    All arguments are flat float64 arrays (E,) (``is_y`` boolean): ``x0 = mu - M``, ``log_s = log S_{-i}``,
    ``base_other = t_y - M``.  Offsets ``u = z - mu`` keep the Gaussian term exact for tiny variances
    and large means.  Returns ``(log_m0, mean_u, var_u)`` with ``E[z] = mu + mean_u``.

    Nodes: the window ``[A, B] = [lo, hi] ∩ (mode +- 9 sigma)`` is cut into panels equidistant in
    ``Psi(u) = int du / h(u)`` with spacing ``h = 3 sigma``, and ``h = min(3 sigma_eff, 3)`` within
    ``+-24`` of the kink (``sigma_eff^-2 = var^-1 + 1/4`` bounds the curvature of the log-density there);
    ``R = Psi(B)`` is the number of panels needed (<= 22); each element gets the smallest tier >= R.
    """
    xp = get_array_module(mu)
    n = mu.size
    sigma = xp.sqrt(var)
    L0, R0 = lo - mu, hi - mu
    mode = _mode_offset(var, L0, R0, x0, log_s, is_y)
    A = xp.maximum(L0, mode - _WINDOW_SIGMAS * sigma)
    B = xp.minimum(R0, mode + _WINDOW_SIGMAS * sigma)
    kink = log_s - x0  # a - mu_i; -inf when S_{-i} underflows
    p1 = xp.minimum(xp.maximum(kink - _KINK_HALF_WIDTH, A), B)
    p2 = xp.minimum(xp.maximum(kink + _KINK_HALF_WIDTH, A), B)
    h_out = _PANEL_SIGMAS * sigma
    h_mid = xp.minimum(_PANEL_SIGMAS / xp.sqrt(1 / var + 0.25), _KINK_PANEL)
    need = (p1 - A) / h_out + (p2 - p1) / h_mid + (B - p2) / h_out
    isy = is_y.astype(mu.dtype)
    bo = xp.where(is_y, 0.0, base_other)
    inv2v = 0.5 / var
    log_norm = xp.log(sigma) + 0.5 * math.log(2 * math.pi)

    log_m0 = xp.empty(n)
    mean_u = xp.empty(n)
    var_u = xp.empty(n)
    done = xp.zeros(n, dtype=bool)
    for k, panels in enumerate(_PANEL_TIERS):
        sel = ~done if k == len(_PANEL_TIERS) - 1 else ~done & (need <= panels)
        done |= sel
        idx = xp.nonzero(sel)[0]
        for s in range(0, idx.size, _CHUNK):
            ix = idx[s:s + _CHUNK]
            s0, ref, m_u, v_u = _chunk_moments(
                panels, A[ix], B[ix], p1[ix], p2[ix], h_out[ix], h_mid[ix], x0[ix], log_s[ix],
                isy[ix], bo[ix], inv2v[ix])
            with np.errstate(divide="ignore", invalid="ignore"):
                log_m0[ix] = ref + xp.log(s0) - log_norm[ix]
            mean_u[ix] = m_u
            var_u[ix] = v_u
    return log_m0, mean_u, var_u


def _softmax_message(mu, rho, log_m0, mean_u, var_u):
    """Turn tilted moments into the backward message, with the SPEC 5.9 decisions (flat float64 arrays).

    ``m0 < SOFTMAX_MIN_MASS`` -> G(0, 0) (``"softmax_low_mass"``); non-finite moments -> G(0, 0)
    (``"softmax_nonfinite_fallback"``); otherwise ``G(tau_hat, rho_hat) / G(mu rho, rho)`` by tolerant
    division: a deficit in ``[-tol, 0)`` sets rho to 0 (``"softmax_tolerant_clamp"``), a larger one gives
    G(0, 0) (``"softmax_improper_fallback"``).  Returns ``(tau, rho)``.
    """
    xp = get_array_module(mu)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rho_hat = 1 / var_u
        tau_hat = (mu + mean_u) * rho_hat
        low = log_m0 < math.log(config.SOFTMAX_MIN_MASS)
        finite = (xp.isfinite(log_m0) & xp.isfinite(mean_u) & xp.isfinite(var_u) & (var_u > 0)
                  & xp.isfinite(rho_hat) & xp.isfinite(tau_hat))
        nonfinite = ~low & ~finite
        ok = ~low & finite
        d = rho_hat - rho
        # tau_hat - mu rho, written so that the large parts mu rho_hat and mu rho cancel exactly
        tau = mu * d + mean_u * rho_hat
    improper = ok & (d < -config.SOFTMAX_DIVISION_TOL)
    clamp = ok & (d < 0) & ~improper
    guards.record("softmax_low_mass", low)
    guards.record("softmax_nonfinite_fallback", nonfinite)
    guards.record("softmax_improper_fallback", improper)
    guards.record("softmax_tolerant_clamp", clamp)
    good = ok & ~improper
    return xp.where(good, tau, 0.0), xp.where(good, xp.maximum(d, 0.0), 0.0)


def softmax_backward(m, y):
    r"""Backward messages of the softmax likelihood to the logits (SPEC 5.9), by 1-D quadrature.

    For logit i with forward message ``N(mu_i, var_i)`` and label y: ``t_j = mu_j / sqrt(1 + pi var_j / 8)``,
    ``M = max_j t_j``, ``S_{-i} = sum_{j != i} exp(t_j - M)`` and the log-likelihood

    * ``i == y``: ``l(z) = (z - M) - logaddexp(log S_{-i}, z - M)``;
    * ``i != y``: ``l(z) = (t_y - M) - logaddexp(log S_{-i}, z - M)``.

    (``log S_{-i}`` is a log-sum-exp for the arg-max class, where ``S - 1`` would cancel or underflow).
    The tilted density ``f(z) = exp(l(z)) N(z; mu_i, var_i)`` is integrated over
    ``[mu_i - 7 sigma_i, mu_i + 7 sigma_i]``, widened to cover ``[mu_y - 7 sigma_y, mu_y + 7 sigma_y]``
    when ``mu_i + 7 sigma_i > mu_y - 7 sigma_y`` (``SOFTMAX_BOUND_SIGMAS``).  With ``m0 = int f``, mean
    ``m`` and central variance ``v`` of ``f / m0``: ``m0 < SOFTMAX_MIN_MASS`` gives ``G(0, 0)``;
    otherwise ``rho_hat = 1 / v``, ``tau_hat = m rho_hat`` and the message is the tolerant division
    ``G(tau_hat, rho_hat) / m_i`` with tol ``SOFTMAX_DIVISION_TOL``: a deficit in ``[-tol, 0)`` sets rho
    to 0 (possibly an improper ``G(tau, 0)``).  Instead of aborting, a larger deficit or non-finite
    moments give ``G(0, 0)``.  Guards (counted): ``softmax_low_mass``, ``softmax_tolerant_clamp``,
    ``softmax_improper_fallback``, ``softmax_nonfinite_fallback``.

    Quadrature (vectorised; replaces the code's adaptive Gauss-Kronrod): ``log f`` is concave, so its mode
    on the interval is found by bisection and the nodes cover mode +- 9 sigma_i only (neglected mass
    < exp(-40) of the total); there a composite 12-point Gauss-Legendre rule with 7, 12 or 22 panels
    (84 to 264 nodes), each panel at most 3 sigma_i wide and at most 3 wide near the kink
    ``z = M + log S_{-i}`` of ``l`` (see :func:`_tilted_moments`), gives ``m0``, mean and variance to
    ~1e-13 relative.  The integrand is evaluated relative to its maximum over the nodes (``m0`` is exact
    in log form), the variance as a central moment.  Arithmetic is float64 internally; the result has
    the dtype of ``m``.

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
    if not bool(xp.all(m.rho > 0)):
        raise ValueError("softmax_backward needs forward messages with rho > 0")
    f = Gaussian(m.tau.astype(np.float64), m.rho.astype(np.float64))
    mu, var = f.mean, f.var
    sigma = xp.sqrt(var)
    t = probit_scaled_means(f)
    M = t.max(axis=-1, keepdims=True)
    e = xp.exp(t - M)
    # log S_{-i}: S - exp(t_i - M) >= 1 is safe for every class but the arg-max one k; there S_{-k} can
    # cancel or underflow (and with S_{-k} = 0 the bound l <= 0 breaks), so it is a log-sum-exp taken
    # relative to the second-largest t (-inf when C == 1)
    top = xp.arange(c) == xp.argmax(t, axis=-1)[..., None]
    t_rest = xp.where(top, -xp.inf, t)
    M2 = t_rest.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_s_top = M2 - M + xp.log(xp.exp(t_rest - xp.where(xp.isfinite(M2), M2, 0.0)).sum(
            axis=-1, keepdims=True))
        log_s = xp.where(top, log_s_top, xp.log(e.sum(axis=-1, keepdims=True) - e))
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

    shape = mu.shape
    flat = [xp.ascontiguousarray(xp.broadcast_to(a, shape)).ravel()
            for a in (mu, var, lo, hi, mu - M, log_s, is_y, t_y - M)]
    log_m0, mean_u, var_u = _tilted_moments(*flat)
    tau, rho = _softmax_message(flat[0], f.rho.ravel(), log_m0, mean_u, var_u)
    return Gaussian(tau.reshape(shape).astype(m.dtype), rho.reshape(shape).astype(m.dtype))
