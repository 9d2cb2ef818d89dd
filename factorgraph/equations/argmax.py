"""Argmax likelihood and argmax probabilities (SPEC 5.5, 5.10).

Probabilities, with noise variance ``beta2`` (``ARGMAX_NOISE`` = 0.3 in the thesis code)::

    p*_i = prod_{j != i} Phi((mu_i - mu_j) / sqrt(var_i + var_j + beta2)),   p_i = p*_i / sum_j p*_j

computed in log space with ``log_ndtr``.  Max-pool uses the same probabilities as its weights.

Backward for label y: for each ``i != y`` the pairwise difference ``s_i = a_y - a_i + eps``,
``eps ~ N(0, beta2)``, has forward ``N(mu_y - mu_i, var_y + var_i + beta2)``; the constraint ``s_i >= 0``
gives ``r_i = trunc(s_i >= 0) / fwd(s_i)``, sent to the operands by S1 (coefficients +1 and -1)::

    to a_y (per pair):  D = 1 + rho_r (var_i + beta2),  rho = rho_r / D,  tau = (tau_r - rho_r (mu_s - mu_y)) / D
    to a_i:             D = 1 + rho_r (var_y + beta2),  rho = rho_r / D,  tau = -(tau_r - rho_r mu_y) / D

The message to ``a_y`` is the product of its ``C - 1`` pair messages.  Stabilisers:

* hack 1: the precision of the message to ``a_i`` is multiplied by ``Phi(mu_s / sigma_s)`` with its
  mean kept;
* hack 2 (``regularize=True``): the target message is multiplied by ``N(+1, gamma2)`` and the others by
  ``N(-1, gamma2)``, ``gamma2 = ARGMAX_REG_VAR``.
"""


from factorgraph import config
from factorgraph.backend import special
from factorgraph.gaussian import Gaussian, truncate_nonneg


def argmax_log_probs(m, beta2=config.ARGMAX_NOISE):
    """Log argmax probabilities over the last axis of the Gaussian array ``m`` (..., C)."""
    xp = m.xp
    sp = special(xp)
    mu, var = m.mean, m.var
    diff = mu[..., :, None] - mu[..., None, :]
    scale = xp.sqrt(var[..., :, None] + var[..., None, :] + beta2)
    log_cdf = sp.log_ndtr(diff / scale)
    c = mu.shape[-1]
    eye = xp.eye(c, dtype=bool)
    log_p = xp.where(eye, 0, log_cdf).sum(axis=-1)
    return log_p - _logsumexp(log_p, xp)


def _logsumexp(x, xp):
    mx = x.max(axis=-1, keepdims=True)
    return mx + xp.log(xp.exp(x - mx).sum(axis=-1, keepdims=True))


def argmax_probs(m, beta2=config.ARGMAX_NOISE):
    """Argmax probabilities over the last axis of ``m`` (..., C); rows sum to 1."""
    return m.xp.exp(argmax_log_probs(m, beta2))


def argmax_backward(m, y, beta2=config.ARGMAX_NOISE, regularize=False, reg_var=config.ARGMAX_REG_VAR):
    """Backward messages of the argmax likelihood to the logits.

    Parameters
    ----------
    m : Gaussian (..., C)
        Forward messages of the logits (``rho > 0``).
    y : int array (...)
        Labels in ``[0, C)``.
    regularize : bool
        Apply hack 2 (multiply by ``N(+-1, reg_var)``).

    Returns
    -------
    Gaussian (..., C)
    """
    xp = m.xp
    sp = special(xp)
    c = m.shape[-1]
    y = xp.asarray(y)
    mu, var = m.mean, m.var
    onehot = xp.arange(c) == y[..., None]
    mu_y = xp.take_along_axis(mu, y[..., None], axis=-1)
    var_y = xp.take_along_axis(var, y[..., None], axis=-1)
    mu_s = mu_y - mu
    var_s = var_y + var + beta2
    s = Gaussian(mu_s / var_s, 1 / var_s)
    t = truncate_nonneg(s)
    tau_r, rho_r = t.tau - s.tau, t.rho - s.rho
    # messages to a_y, one per pair
    d_y = 1 + rho_r * (var + beta2)
    tau_to_y = xp.where(onehot, 0, (tau_r - rho_r * (mu_s - mu_y)) / d_y).sum(axis=-1, keepdims=True)
    rho_to_y = xp.where(onehot, 0, rho_r / d_y).sum(axis=-1, keepdims=True)
    # messages to a_i, with hack 1
    d_i = 1 + rho_r * (var_y + beta2)
    p_win = sp.ndtr(mu_s / xp.sqrt(var_s))
    tau_i = -(tau_r - rho_r * mu_y) / d_i * p_win
    rho_i = rho_r / d_i * p_win
    tau = xp.where(onehot, tau_to_y, tau_i)
    rho = xp.where(onehot, rho_to_y, rho_i)
    if regularize:
        tau = tau + xp.where(onehot, 1.0, -1.0) / reg_var
        rho = rho + 1.0 / reg_var
    return Gaussian(tau.astype(m.dtype), rho.astype(m.dtype))
