"""Arrays of 1-D Gaussian messages in natural parameters.

A ``Gaussian`` holds two arrays of equal shape: ``tau = mu / var`` and ``rho = 1 / var``.

Edge cases, defined here once and relied on by every factor:

* ``rho == 0`` is the uniform ("no information") message; ``G(0, 0)`` is the identity of the product.
* The mean of a message with ``rho == 0`` is **0** by convention and its variance is ``+inf``
  (SPEC 1.1).  A message ``G(tau != 0, 0)`` is improper; it can appear only after tolerant division.
* ``rho < 0`` never survives construction with ``check=True``.
* The product of messages adds natural parameters, division subtracts them.

The arrays live on NumPy or CuPy (see :mod:`factorgraph.backend`); the dtype is float64 or float32
and every operation preserves it.
"""

import math

import numpy as np

from factorgraph import config, guards, kernels
from factorgraph.backend import get_array_module, special

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Gaussian:
    """An array of independent 1-D Gaussians, stored as natural parameters ``(tau, rho)``.

    Parameters
    ----------
    tau, rho : array_like
        Precision-times-mean and precision, broadcast to a common shape.
    check : bool
        Validate ``rho >= 0`` and finiteness (raises ``ValueError``).
    """

    __slots__ = ("tau", "rho")
    __array_priority__ = 1000

    def __init__(self, tau, rho, check=False):
        if type(tau) is np.ndarray and type(rho) is np.ndarray and tau.shape == rho.shape:  # the common case
            self.tau, self.rho = tau, rho
            if check:
                self.validate()
            return
        xp = get_array_module(tau, rho)
        tau = xp.asarray(tau)
        rho = xp.asarray(rho)
        if tau.shape != rho.shape:
            tau, rho = xp.broadcast_arrays(tau, rho)
            tau, rho = tau.copy(), rho.copy()
        self.tau = tau
        self.rho = rho
        if check:
            self.validate()

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, shape, dtype=np.float64, xp=np):
        """``G(0, 0)`` of the given shape: no information."""
        return cls(xp.zeros(shape, dtype), xp.zeros(shape, dtype))

    @classmethod
    def from_mean_var(cls, mean, var, check=True):
        """Build from means and variances (``var = inf`` gives a uniform message)."""
        xp = get_array_module(mean, var)
        mean = xp.asarray(mean)
        var = xp.asarray(var)
        if check and bool(xp.any(var <= 0)):
            raise ValueError("variance must be positive")
        rho = 1.0 / var
        return cls(mean * rho, rho, check=check)

    @classmethod
    def from_mean_m2(cls, mean, m2, check=True):
        """Build from means and second moments ``m2 = var + mean^2``."""
        return cls.from_mean_var(mean, m2 - mean * mean, check=check)

    def validate(self, what="Gaussian"):
        """Raise ``ValueError`` unless ``rho >= 0`` and both parameters are finite."""
        xp = self.xp
        if not bool(xp.all(xp.isfinite(self.tau))) or not bool(xp.all(xp.isfinite(self.rho))):
            raise ValueError(f"{what}: natural parameters must be finite (found NaN or inf)")
        if bool(xp.any(self.rho < 0)):
            raise ValueError(f"{what}: precision rho must be >= 0 (min {float(self.rho.min())})")
        return self

    # ----- array protocol -----------------------------------------------------------------------
    @property
    def xp(self):
        return get_array_module(self.tau)

    @property
    def shape(self):
        return self.tau.shape

    @property
    def dtype(self):
        return self.tau.dtype

    def __len__(self):
        return len(self.tau)

    def __getitem__(self, idx):
        return Gaussian(self.tau[idx], self.rho[idx])

    def __setitem__(self, idx, other):
        self.tau[idx] = other.tau
        self.rho[idx] = other.rho

    def copy(self):
        return Gaussian(self.tau.copy(), self.rho.copy())

    def astype(self, dtype):
        return Gaussian(self.tau.astype(dtype), self.rho.astype(dtype))

    def reshape(self, *shape):
        return Gaussian(self.tau.reshape(*shape), self.rho.reshape(*shape))

    def __repr__(self):
        return f"Gaussian(shape={self.shape}, dtype={self.dtype})"

    # ----- moments ------------------------------------------------------------------------------
    @property
    def mean(self):
        """``tau / rho``, and 0 where ``rho == 0``."""
        return mean_of(self.tau, self.rho)

    @property
    def var(self):
        """``1 / rho``, and ``+inf`` where ``rho == 0``."""
        return var_of(self.rho)

    def with_moments(self):
        """The same message with its mean and variance computed once (:class:`WithMoments`), for a
        message that several equations read before its arrays change (a chunk's weight marginal between
        its forward and backward)."""
        return WithMoments(self.tau, self.rho)

    @property
    def m2(self):
        """Second moment ``var + mean^2``."""
        mu = self.mean
        return self.var + mu * mu

    def to_mean_var(self):
        return self.mean, self.var

    # ----- density operations -------------------------------------------------------------------
    def __mul__(self, other):
        """Product of densities: add natural parameters."""
        return Gaussian(self.tau + other.tau, self.rho + other.rho)

    def __truediv__(self, other):
        """Strict division (see :func:`divide`)."""
        return divide(self, other)

    def damp(self, new, beta):
        """EMA toward ``new``: ``(1 - beta) * self + beta * new`` in natural parameters."""
        return Gaussian((1 - beta) * self.tau + beta * new.tau, (1 - beta) * self.rho + beta * new.rho)

    def truncate_nonneg(self):
        """Moment-matched restriction to ``x >= 0`` (see :func:`truncate_nonneg`)."""
        return truncate_nonneg(self)

    def clamp_min_rho(self, m):
        """Keep the mean, raise the precision to at least ``m`` (SPEC 1.4 ``min_rho``)."""
        return clamp_min_rho(self, m)

    def scale_rho(self, s):
        """Keep the mean, multiply the precision by ``s``."""
        return Gaussian(self.tau * s, self.rho * s)

    # ----- random-variable operations -----------------------------------------------------------
    def scale(self, a):
        """Distribution of ``a * X``: ``(tau / a, rho / a^2)``."""
        return Gaussian(self.tau / a, self.rho / (a * a))

    def shift(self, c):
        """Distribution of ``X + c``: ``(tau + c * rho, rho)``."""
        return Gaussian(self.tau + c * self.rho, self.rho)

    def add_variance(self, v):
        """Distribution of ``X + eps`` with independent ``eps ~ N(0, v)``: ``(mu, var + v)``."""
        # natural form: rho' = rho / (1 + v rho), tau' = tau / (1 + v rho); exact for rho = 0 too
        d = 1 + v * self.rho
        return Gaussian(self.tau / d, self.rho / d)


class WithMoments(Gaussian):
    """A :class:`Gaussian` whose ``mean`` and ``var`` were computed at construction.  The cache does not
    follow in-place changes of ``tau``/``rho``: use it only while they stay as they were."""

    __slots__ = ("_mean", "_var")

    def __init__(self, tau, rho):
        super().__init__(tau, rho)
        self._mean, self._var = moments_of(self.tau, self.rho)

    @classmethod
    def of(cls, tau, rho, mean, var):
        """Wrap arrays whose moments were already computed (same shape and dtype)."""
        g = cls.__new__(cls)
        g.tau, g.rho, g._mean, g._var = tau, rho, mean, var
        return g

    @classmethod
    def from_moments(cls, mean, var):
        """The message with these (finite, positive) variances: ``tau = mean / var``, ``rho = 1 / var``,
        keeping ``mean`` and ``var`` as given (the compiled chunk forwards compute them directly)."""
        return cls.of(mean / var, 1 / var, mean, var)

    def reshape(self, *shape):
        """Reshaped, keeping the computed moments (views, like :meth:`Gaussian.reshape`)."""
        return WithMoments.of(self.tau.reshape(*shape), self.rho.reshape(*shape), self._mean.reshape(*shape),
                              self._var.reshape(*shape))

    def __getitem__(self, idx):
        return WithMoments.of(self.tau[idx], self.rho[idx], self._mean[idx], self._var[idx])

    @property
    def mean(self):
        return self._mean

    @property
    def var(self):
        return self._var


def mean_of(tau, rho):
    """``tau / rho`` with the convention mean = 0 where ``rho == 0``."""
    if type(tau) is np.ndarray:
        return np.divide(tau, rho, out=np.zeros_like(tau), where=rho > 0)
    xp = get_array_module(tau, rho)
    tau, rho = xp.asarray(tau), xp.asarray(rho)
    with np.errstate(divide="ignore", invalid="ignore"):  # the where drops the elements divided by 0
        return xp.where(rho > 0, tau / rho, 0).astype(tau.dtype, copy=False)


def var_of(rho):
    """``1 / rho`` with the convention var = inf where ``rho == 0``."""
    if type(rho) is np.ndarray:
        return np.divide(1, rho, out=np.full(rho.shape, np.inf, rho.dtype), where=rho > 0)
    xp = get_array_module(rho)
    rho = xp.asarray(rho)
    with np.errstate(divide="ignore"):
        return xp.where(rho > 0, 1 / rho, xp.inf).astype(rho.dtype, copy=False)


#: from this many elements on, :func:`moments_of` uses the compiled kernel (when kernels are enabled)
MOMENTS_KERNEL_MIN = 256


def moments_of(tau, rho):
    """``(mean_of(tau, rho), var_of(rho))``; on the CPU one compiled pass
    (:mod:`factorgraph.kernels.moments_cpu`) computes both."""
    if (type(tau) is np.ndarray and type(rho) is np.ndarray and tau.size >= MOMENTS_KERNEL_MIN
            and tau.dtype == rho.dtype and tau.shape == rho.shape and kernels.enabled()):
        t, r = np.ascontiguousarray(tau), np.ascontiguousarray(rho)
        mean, var = np.empty_like(t), np.empty_like(r)
        kernels.module(t, "moments").mean_var(t.reshape(-1), r.reshape(-1), mean.reshape(-1), var.reshape(-1))
        return mean, var
    return mean_of(tau, rho), var_of(rho)


def divide(num, den, tol=None):
    """Divide densities ``num / den`` (subtract natural parameters).

    Strict division (``tol=None``): the precision deficit ``rho_num - rho_den < 0`` is allowed only as
    round-off (relative ``STRICT_DIVISION_RTOL``), clamped to 0 and counted as
    ``"strict_division_roundoff"``; a real deficit raises :class:`~factorgraph.guards.ImproperMessageError`.

    Tolerant division (``tol`` a float, SPEC 1.2): deficits down to ``-tol`` are clamped to 0 (counted as
    ``"tolerant_division_clamp"``) and may leave an improper ``G(tau != 0, 0)``; larger ones raise.
    """
    xp = get_array_module(num.tau, den.tau)
    d = num.rho - den.rho
    neg = d < 0
    if bool(xp.any(neg)):
        if tol is None:
            limit = -config.STRICT_DIVISION_RTOL * xp.abs(num.rho)
            name = "strict_division_roundoff"
        else:
            limit = -tol
            name = "tolerant_division_clamp"
        bad = d < limit
        if bool(xp.any(bad)):
            raise guards.ImproperMessageError(
                f"division would give negative precision (worst {float(d.min()):.3g}); "
                f"{int(bad.sum())} element(s) beyond tolerance"
            )
        guards.record(name, neg)
        d = xp.maximum(d, 0)
    return Gaussian(num.tau - den.tau, d)


def clamp_min_rho(g, m):
    """Keep each mean and set ``rho := max(rho, m)``; ``G(tau, 0)`` becomes ``G(0, m)`` (SPEC 1.4)."""
    xp = g.xp
    low = g.rho < m
    if guards.record("min_rho_clamp", low) == 0:  # counted on the CPU: nothing to clamp (same arrays)
        return Gaussian(g.tau, g.rho)
    mu = mean_of(g.tau, g.rho)
    rho = xp.where(low, xp.asarray(m, g.dtype), g.rho)
    return Gaussian(xp.where(low, mu * rho, g.tau), rho)


#: Below t = -TAIL_T the truncation moments come from a rational approximation of the Mills ratio
#: (:func:`tail_moments`): the direct formula u = 1 - v (v + t) cancels to ~eps t^4 relative error (2e-13
#: at t = -3, 5e-13 at t = -4, 1e-9 at t = -16).
TAIL_T = 3.0
#: :func:`tail_moments` takes its first piece for ``TAIL_T <= x < TAIL_SPLIT``, its second from there on
TAIL_SPLIT = 5.0
#: The two pieces of :func:`tail_moments`: ``(c, k, P, Q)``, ``z = (1 / x^2 - c) k`` in ``[-1, 1]`` over
#: the piece, ``G = P(z) / Q(z)`` (coefficients from degree 0 up).  Fitted by iteratively reweighted least
#: squares on Chebyshev nodes to 50-digit values of ``G`` (``tests/fit_tail_moments.py`` regenerates
#: them); relative error of ``G`` below 1e-15 on each piece.
TAIL_NEAR = (0.07555555555555556, 1.0 / 0.03555555555555555,
             (0.8449649304699988, 0.7164281281262231, 0.22542113423646404, 0.032317058438531165,
              0.002067275081638428, 4.76399384636578e-05, 1.746271944680849e-07),
             (1.0, 0.9094094652463877, 0.31519222632953703, 0.05195096399276438, 0.004123606587067571,
              0.00013897475700897798, 1.326036962894142e-06))
TAIL_FAR = (0.02, 1.0 / 0.02,
            (0.9470605939218035, 0.9979510028760418, 0.3867365992457687, 0.0677187680372181,
             0.005252468523452403, 0.00014592740612027677, 6.425806252364746e-07),
            (1.0, 1.103329526270869, 0.457711845724301, 0.08906445572414505, 0.008232052122456049,
             0.00031876059538287307, 3.4506959096565976e-06))


def tail_moments(x, xp=np):
    """``(E X, Var X)`` of ``N(-x, 1)`` restricted to ``X >= 0``, for ``x >= TAIL_T``, without cancellation.

    With the Mills ratio ``R(x) = Phi(-x) / phi(x) = 1 / (x + K)``, ``K = 1 / (x + L)``,
    ``L = 2 / (x + 3 / (x + 4 / (x + ...)))`` (Laplace's continued fraction): ``v = phi / Phi = x + K``,
    so ``E X = v - x = K`` and ``Var X = 1 - v K = 1 - x K - K^2 = K (L - K)`` (as ``1 - x K = L K``).
    ``L = 2 G(1 / x^2) / x`` with ``G(s) = 1 - 3 s + ...`` smooth on ``[0, 1 / TAIL_T^2]``, given by a
    degree-6 rational function on each of the pieces ``TAIL_NEAR``, ``TAIL_FAR`` (split at ``TAIL_SPLIT``):
    no loop and no cancellation, 2e-16 relative in ``K`` and 3e-15 in ``Var X`` (``tests/test_gaussian.py``
    checks them against 60-digit values).  ``x = inf`` gives ``(0, 0)``.
    """
    y = 1.0 / x
    s = y * y
    near = x < TAIL_SPLIT
    (cn, kn, pn, qn), (cf, kf, pf, qf) = TAIL_NEAR, TAIL_FAR
    z = xp.where(near, (s - cn) * kn, (s - cf) * kf)
    p, q = xp.where(near, pn[6], pf[6]), xp.where(near, qn[6], qf[6])
    for d in range(5, -1, -1):
        p = p * z + xp.where(near, pn[d], pf[d])
        q = q * z + xp.where(near, qn[d], qf[d])
    L = 2.0 * (p / q) * y
    K = 1.0 / (x + L)
    return K, K * (L - K)


def truncation_ratio(t, xp=np):
    """``v = phi(t) / Phi(t)`` computed as ``exp(log phi(t) - log Phi(t))`` with a tail-accurate log-cdf."""
    sp = special(xp)
    log_phi = -0.5 * t * t - _LOG_SQRT_2PI
    with np.errstate(over="ignore", invalid="ignore"):
        return xp.exp(log_phi - sp.log_ndtr(t))


def truncation_shift_and_factor(t, xp=np):
    """For ``X ~ N(t, 1)`` restricted to ``X >= 0``: ``(E X, Var X) = (t + v, 1 - v (v + t))``.

    ``v = phi(t) / Phi(t)``.  For ``t < -TAIL_T`` both come from :func:`tail_moments`,
    which avoids the cancellation of the direct formula.  Computed in float64 whatever the input
    dtype (float32 would lose all digits of ``u`` by t = -8), returned in the input dtype.
    """
    dtype = t.dtype
    t = t.astype(np.float64)
    v = truncation_ratio(t, xp)
    with np.errstate(over="ignore", invalid="ignore"):
        shift = t + v
        u = 1 - v * shift
    tail = t < -TAIL_T
    if bool(xp.any(tail)):
        with np.errstate(over="ignore", invalid="ignore"):
            k, f = tail_moments(-xp.where(tail, t, -TAIL_T), xp)
        shift = xp.where(tail, k, shift)
        u = xp.where(tail, f, u)
    return shift.astype(dtype), u.astype(dtype)


def floor_truncation_factor(u, xp=np):
    """Floor ``u`` at ``MIN_TRUNCATION_FACTOR`` (or the dtype's smallest normal number, if larger),
    counting the elements as ``"truncation_u_floor"``."""
    floor = max(config.MIN_TRUNCATION_FACTOR, float(np.finfo(u.dtype).tiny))
    small = u < floor
    if guards.fired("truncation_u_floor", small):
        u = xp.maximum(u, floor)
    return u


def truncate_nonneg(g):
    """Moment-matched restriction of ``N(mu, var)`` to ``x >= 0`` (SPEC 1.2).

    With ``t = tau / sqrt(rho)``, ``v = phi(t) / Phi(t)`` and ``u = 1 - v (v + t)``:
    ``rho' = rho / u`` and ``tau' = (tau + v sqrt(rho)) / u = sqrt(rho) (t + v) / u``
    (see :func:`truncation_shift_and_factor` for the tail).  Needs ``rho > 0``.
    ``u`` is floored at ``MIN_TRUNCATION_FACTOR`` (counted as ``"truncation_u_floor"``).
    """
    xp = g.xp
    sr = xp.sqrt(g.rho)
    shift, u = truncation_shift_and_factor(g.tau / sr, xp)
    u = floor_truncation_factor(u, xp)
    return Gaussian(sr * shift / u, g.rho / u)
