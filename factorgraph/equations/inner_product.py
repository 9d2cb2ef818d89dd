"""Scalar rule S2: inner product of two Gaussian variables (SPEC 4.2).

Factor ``z = sum_k a_k b_k + c`` with ``a`` and ``b`` both variables, handled by the variational
product with the approximate marginals ``(mu_a, var_a)``, ``(mu_b, var_b)``, ``m2 = var + mu^2``.

Forward::

    mu_z  = sum_k mu_ak mu_bk + mu_c
    var_z = sum_k V_k + var_c,   V_k = m2_a m2_b - mu_a^2 mu_b^2
                                    = var_a var_b + var_a mu_b^2 + mu_a^2 var_b   (computed this way:
                                                                                    no cancellation)

Backward to ``b_k`` (the message to ``a_k`` swaps the roles of ``a`` and ``b``)::

    D_k   = 1 + rho_r (var_z - V_k)
    rho_k = m2_a rho_r / D_k
    tau_k = mu_a (tau_r - rho_r (mu_z - mu_a mu_b)) / D_k

The bias takes S1 with coefficient 1 and its cavity
(:func:`factorgraph.equations.weighted_sum.s1_backward_to_bias`).  ``var_z - V_k`` is floored at 0
where round-off makes it negative (``"s2_rest_variance_clamp"``).
"""

from factorgraph import guards
from factorgraph.backend import get_array_module
from factorgraph.gaussian import Gaussian


def _v(mu_a, var_a, mu_b, var_b):
    return var_a * var_b + var_a * mu_b * mu_b + mu_a * mu_a * var_b


def s2_forward(q_a, q_b, m_c=None):
    """Forward message of ``z = a @ b + c``.

    ``q_a`` (..., K) marginals of the inputs, ``q_b`` (K, J) marginals of the weights, ``m_c`` (J,) the
    bias message (its cavity in training, its marginal in prediction).  Returns Gaussian (..., J).
    """
    return s2_forward_moments(q_a.mean, q_a.var, q_b, m_c)


def s2_forward_moments(mu_a, var_a, q_b, m_c=None):
    """:func:`s2_forward` given the inputs' means and variances (e.g. gathered into patches after they
    were computed on the smaller image)."""
    mu_b, var_b = q_b.mean, q_b.var
    mu = mu_a @ mu_b
    var = var_a @ (var_b + mu_b * mu_b) + (mu_a * mu_a) @ var_b
    if m_c is not None:
        mu = mu + m_c.mean
        var = var + m_c.var
    return Gaussian(mu / var, 1.0 / var)


def s2_backward(q_a, q_b, m_z, r, reduce=True):
    """Backward messages of ``z = a @ b + c`` to both operands.

    Parameters
    ----------
    q_a : Gaussian (..., K)
        Marginals of the inputs.
    q_b : Gaussian (K, J)
        Marginals of the weights.
    m_z : Gaussian (..., J)
        The stored forward message of ``z``.
    r : Gaussian (..., J)
        The backward message on ``z``.
    reduce : bool
        Multiply the weight messages over all uses (leading axes), giving (K, J); else (..., K, J).

    Returns
    -------
    (to_a, to_b)
        ``to_a`` (..., K): the product over the outputs j of the messages to ``a_k``;
        ``to_b``: the messages to the weights.
    """
    xp = get_array_module(q_a.tau, q_b.tau)
    mu_a, var_a = q_a.mean[..., :, None], q_a.var[..., :, None]
    mu_b, var_b = q_b.mean, q_b.var
    mu_z, var_z = m_z.mean[..., None, :], m_z.var[..., None, :]
    tau_r, rho_r = r.tau[..., None, :], r.rho[..., None, :]
    rest = var_z - _v(mu_a, var_a, mu_b, var_b)
    neg = rest < 0
    if guards.fired("s2_rest_variance_clamp", neg):
        rest = xp.maximum(rest, 0)
    d = 1 + rho_r * rest
    resid = (tau_r - rho_r * (mu_z - mu_a * mu_b)) / d
    to_a = Gaussian((mu_b * resid).sum(axis=-1), ((var_b + mu_b * mu_b) * rho_r / d).sum(axis=-1))
    tau_b = mu_a * resid
    rho_b = (var_a + mu_a * mu_a) * rho_r / d
    if reduce:
        lead = tuple(range(tau_b.ndim - 2))
        if lead:
            tau_b, rho_b = tau_b.sum(axis=lead), rho_b.sum(axis=lead)
    return to_a, Gaussian(tau_b, rho_b)


def s2_backward_gemm(q_a, q_b, m_z, r, expansion=1):
    """S2 backward for ``U`` uses (rows of ``q_a`` (U, K)) by matrix products, to order ``expansion``
    (1 or 0) in each term's own share of the output's uncertainty.

    With ``d = 1 + rho_r var_z``, ``h = rho_r / d``, ``g = (tau_r - rho_r mu_z) / d`` (U, J) the exact
    per-use messages of :func:`s2_backward` are, with ``e = V_k h`` (``V_k`` the term's own variance),::

        to b:  rho = m2_a h / (1 - e),   tau = mu_a (g + mu_a mu_b h) / (1 - e)
        to a:  rho = m2_b h / (1 - e),   tau = mu_b (g + mu_a mu_b h) / (1 - e)

    ``expansion=1`` replaces ``1 / (1 - e)`` by ``1 + e``: as ``V_k = var_a m2_b + mu_a^2 var_b``
    separates into (U, K) x (K, J) factors, every sum over the uses (to ``b``) or the outputs (to ``a``)
    becomes a matrix product (18 in all); relative error ``e^2 / (1 - e)`` per message.
    ``expansion=0`` replaces it by 1 (6 matrix products): each per-use message keeps its exact mean and
    has its precision scaled by ``1 - e`` (relative error ``e``, never more precise than the exact one).
    No (U, K, J) array is formed.  Returns ``(to_a, to_b)`` like :func:`s2_backward` with ``reduce=True``.
    """
    if expansion not in (0, 1):
        raise ValueError(f"expansion must be 0 or 1, got {expansion!r}")
    mu_a, var_a = q_a.mean, q_a.var
    mu_b, var_b = q_b.mean, q_b.var
    d = 1 + r.rho * m_z.var
    h = r.rho / d
    g = (r.tau - r.rho * m_z.mean) / d
    mu_a2, mu_b2 = mu_a * mu_a, mu_b * mu_b
    m2_a, m2_b = var_a + mu_a2, var_b + mu_b2
    if expansion == 0:
        rho_b = m2_a.T @ h
        tau_b = mu_a.T @ g + mu_b * (mu_a2.T @ h)
        rho_a = h @ m2_b.T
        tau_a = g @ mu_b.T + mu_a * (h @ mu_b2.T)
        return Gaussian(tau_a, rho_a), Gaussian(tau_b, rho_b)
    h2, gh = h * h, g * h
    va_m2a, mua2_m2a = var_a * m2_a, mu_a2 * m2_a
    rho_b = m2_a.T @ h + m2_b * (va_m2a.T @ h2) + var_b * (mua2_m2a.T @ h2)
    tau_b = (mu_a.T @ g + mu_b * (mu_a2.T @ h)
             + m2_b * ((var_a * mu_a).T @ gh) + m2_b * mu_b * ((var_a * mu_a2).T @ h2)
             + var_b * ((mu_a2 * mu_a).T @ gh) + var_b * mu_b * ((mu_a2 * mu_a2).T @ h2))
    rho_a = h @ m2_b.T + var_a * (h2 @ (m2_b * m2_b).T) + mu_a2 * (h2 @ (m2_b * var_b).T)
    tau_a = (g @ mu_b.T + mu_a * (h @ mu_b2.T)
             + var_a * (gh @ (mu_b * m2_b).T) + mu_a2 * (gh @ (mu_b * var_b).T)
             + var_a * mu_a * (h2 @ (mu_b2 * m2_b).T) + mu_a2 * mu_a * (h2 @ (mu_b2 * var_b).T))
    return Gaussian(tau_a, rho_a), Gaussian(tau_b, rho_b)
