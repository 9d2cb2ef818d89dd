"""Scalar rule S1: weighted sum with constant coefficients (SPEC 4.1).

Factor ``s = sum_k a_k b_k + c`` with constants ``a`` and Gaussian variables ``b``, ``c``.

Forward:  ``mu_s = sum_k a_k mu_k + mu_c``,  ``var_s = sum_k a_k^2 var_k + var_c``.

Backward to ``b_k`` given the backward message ``r = G(tau_r, rho_r)`` on ``s`` and the stored forward
message ``(mu_s, var_s)``, in natural form (no division by ``rho_r``, so ``r = G(0, 0)`` gives
``G(0, 0)``)::

    D_k   = 1 + rho_r * (var_s - a_k^2 var_k)
    rho_k = a_k^2 rho_r / D_k
    tau_k = a_k (tau_r - rho_r (mu_s - a_k mu_k)) / D_k

This equals the moment form ``mu_k = (mu_r - sum_{j!=k} a_j mu_j) / a_k``,
``var_k = (var_r + sum_{j!=k} a_j^2 var_j) / a_k^2``.

Guards: a cavity precision below ``MIN_CAVITY_PRECISION`` is counted (``"s1_small_cavity"``); the
variance of the other summands ``var_s - a_k^2 var_k`` is floored at 0 where round-off makes it negative
(``"s1_rest_variance_clamp"``).
"""

from factorgraph import config, guards
from factorgraph.backend import get_array_module
from factorgraph.gaussian import Gaussian


def _moments(g):
    return g.mean, g.var


def s1_term_message(a, mu_b, var_b, mu_s, var_s, tau_r, rho_r):
    """Elementwise S1 backward message to one summand (all arguments broadcast).

    Returns ``Gaussian(tau_k, rho_k)`` for the summand with coefficient ``a`` and incoming moments
    ``(mu_b, var_b)``, given the sum's forward moments ``(mu_s, var_s)`` and backward ``(tau_r, rho_r)``.
    """
    xp = get_array_module(mu_b, mu_s)
    rest = var_s - a * a * var_b
    neg = rest < 0
    if guards.fired("s1_rest_variance_clamp", neg):
        rest = xp.maximum(rest, 0)
    d = 1 + rho_r * rest
    rho = a * a * rho_r / d
    tau = a * (tau_r - rho_r * (mu_s - a * mu_b)) / d
    return Gaussian(tau, rho)


def _sum_leading(x, ndim_kept):
    lead = x.ndim - ndim_kept
    return x.sum(axis=tuple(range(lead))) if lead > 0 else x


def s1_forward(a, m_b, m_c=None):
    """Forward message of ``s = a @ b + c``.

    Parameters
    ----------
    a : array (..., K)
        Constant coefficients: a vector (one example), a matrix (im2col patches or a batch of
        examples) or any batch of them.
    m_b : Gaussian (K, J)
        Incoming messages of the weights (the cavities in training, the marginals in prediction).
    m_c : Gaussian (J,), optional
        Incoming message of the bias.

    Returns
    -------
    Gaussian (..., J)
    """
    mu_b, var_b = _moments(m_b)
    mu = a @ mu_b
    xp = get_array_module(mu_b)
    infinite = xp.isinf(var_b)
    if bool(infinite.any()):
        # a zero coefficient ignores its summand, even a uniform one (0 * inf would give NaN)
        var = (a * a) @ xp.where(infinite, 0, var_b)
        var = xp.where((a != 0).astype(var_b.dtype) @ infinite.astype(var_b.dtype) > 0, xp.inf, var)
    else:
        var = (a * a) @ var_b
    if m_c is not None:
        mu = mu + m_c.mean
        var = var + m_c.var
    return Gaussian(mu / var, 1.0 / var)


def s1_backward_to_b(a, m_b, m_s, r, reduce=True):
    """Backward messages to the weights ``b`` of ``s = a @ b + c``.

    ``a`` (..., K) constants, ``m_b`` (K, J) the incoming (cavity) messages of ``b``, ``m_s`` (..., J) the
    stored forward message of ``s``, ``r`` (..., J) the backward message on ``s``.  With ``reduce`` the
    messages of all uses (the leading axes of ``a``) are multiplied, giving shape (K, J); otherwise
    shape (..., K, J) is returned.
    """
    mu_b, var_b = _moments(m_b)
    small = m_b.rho < config.MIN_CAVITY_PRECISION
    guards.record("s1_small_cavity", small)
    mu_s, var_s = _moments(m_s)
    msg = s1_term_message(
        a[..., :, None], mu_b, var_b, mu_s[..., None, :], var_s[..., None, :],
        r.tau[..., None, :], r.rho[..., None, :],
    )
    if reduce:
        return Gaussian(_sum_leading(msg.tau, 2), _sum_leading(msg.rho, 2))
    return msg


def s1_backward_to_bias(m_c, m_s, r, reduce=True):
    """Backward message to the bias ``c`` of ``s = a @ b + c`` (S1 with coefficient 1).

    ``m_c`` (J,) the incoming (cavity) message of the bias, ``m_s`` and ``r`` (..., J).  With ``reduce``
    the messages of all uses are multiplied, giving shape (J,).
    """
    mu_s, var_s = _moments(m_s)
    msg = s1_term_message(1.0, m_c.mean, m_c.var, mu_s, var_s, r.tau, r.rho)
    if reduce:
        return Gaussian(_sum_leading(msg.tau, 1), _sum_leading(msg.rho, 1))
    return msg


def s1_reduce_forward(a, m_b):
    """Weighted sum over the last axis with constant weights of the same shape:
    ``mu_s = sum_k a_k mu_k``, ``var_s = sum_k a_k^2 var_k`` (max-pool and average-pool windows)."""
    mu_b, var_b = _moments(m_b)
    mu = (a * mu_b).sum(axis=-1)
    var = (a * a * var_b).sum(axis=-1)
    return Gaussian(mu / var, 1.0 / var)


def s1_reduce_backward(a, m_b, m_s, r):
    """S1 backward to every summand of :func:`s1_reduce_forward` (shape of ``a``)."""
    small = m_b.rho < config.MIN_CAVITY_PRECISION
    guards.record("s1_small_cavity", small)
    mu_b, var_b = _moments(m_b)
    mu_s, var_s = _moments(m_s)
    return s1_term_message(a, mu_b, var_b, mu_s[..., None], var_s[..., None], r.tau[..., None], r.rho[..., None])


def s1_backward_to_b_gemm(a, m_b, m_s, r, expansion=1):
    """The product over the uses ``u`` (rows of ``a`` (U, K)) of the S1 weight messages by matrix
    products, to order ``expansion`` (1 or 0) in each summand's own share of the output's uncertainty.

    With ``d = 1 + rho_r var_s``, ``h = rho_r / d``, ``g = (tau_r - rho_r mu_s) / d`` (U, J) and
    ``e = a_k^2 var_k h`` the exact per-use message of :func:`s1_backward_to_b` is
    ``rho = a^2 h / (1 - e)``, ``tau = (a g + a^2 mu_k h) / (1 - e)``.  Replacing ``1 / (1 - e)`` by
    ``1 + e`` (``expansion=1``) makes the sums over the uses matrix products::

        rho_b = (a^2)^T h + var_b * (a^4)^T h^2
        tau_b = a^T g + var_b * (a^3)^T (g h) + mu_b * rho_b

    with relative error ``e^2 / (1 - e)`` per message; replacing it by 1 (``expansion=0``) keeps
    ``rho_b = (a^2)^T h``, ``tau_b = a^T g + mu_b rho_b``: every per-use message keeps its exact mean,
    its precision scaled by ``1 - e``.  No (U, K, J) array is formed.
    """
    if expansion not in (0, 1):
        raise ValueError(f"expansion must be 0 or 1, got {expansion!r}")
    mu_b, var_b = m_b.mean, m_b.var
    mu_s, var_s = _moments(m_s)
    d = 1 + r.rho * var_s
    h = r.rho / d
    g = (r.tau - r.rho * mu_s) / d
    a2 = a * a
    if expansion == 0:
        rho = a2.T @ h
        return Gaussian(a.T @ g + mu_b * rho, rho)
    rho = a2.T @ h + var_b * ((a2 * a2).T @ (h * h))
    tau = a.T @ g + var_b * ((a2 * a).T @ (g * h)) + mu_b * rho
    return Gaussian(tau, rho)
