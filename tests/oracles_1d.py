"""Naive, loop-based reference implementations (oracles) for the 1-D message equations.

Nothing here imports :mod:`factorgraph`.  Every oracle works on Python floats, one case at a time, and
computes its integrals by adaptive quadrature (``scipy.integrate.quad``) of the *defining* integrand,
or from ``scipy.stats`` distributions; none of the closed forms of the library (R1/R2, Block52, the
truncation ratio, the S1 natural-parameter formulas) is reused.

Where the integrand is a Gaussian-shaped bump the oracle computes the bump's centre and width only to
tell ``quad`` where to look (break points); the integrand itself is always the literal product of
densities.  Integrals are split at those break points and scaled by the integrand's (approximate) peak
so that far-apart Gaussians do not underflow.  Central moments are computed in a second pass
(``int (x - mean)^2 q``), so there is no ``E[x^2] - E[x]^2`` cancellation.
"""

import math
import warnings

from scipy import integrate, stats

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
QUAD_KW = dict(epsabs=0.0, epsrel=1e-13, limit=200)
_OFFSETS = (-40, -20, -10, -5, -2, 0, 2, 5, 10, 20, 40)


# ----- densities --------------------------------------------------------------------------------------
def log_npdf(x, mu, var):
    """log N(x; mu, var); -inf for an infinite variance (a uniform message has density 0 by convention)."""
    if math.isinf(var):
        return -math.inf
    return -0.5 * (x - mu) ** 2 / var - 0.5 * math.log(var) - LOG_SQRT_2PI


def npdf(x, mu, var):
    return math.exp(log_npdf(x, mu, var)) if not math.isinf(var) else 0.0


def leaky(a, slope):
    return a if a >= 0 else slope * a


def product_bump(mu1, var1, mu2, var2):
    """Centre and std of N(mu1, var1) N(mu2, var2) (only used to place quadrature break points)."""
    if math.isinf(var1):
        return mu2, math.sqrt(var2)
    if math.isinf(var2):
        return mu1, math.sqrt(var1)
    rho = 1.0 / var1 + 1.0 / var2
    return (mu1 / var1 + mu2 / var2) / rho, math.sqrt(1.0 / rho)


# ----- integration machinery --------------------------------------------------------------------------
def _breaks(centre, scale, lo, hi):
    """Break points in [lo, hi] for a bump at ``centre`` with width ``scale`` (which may lie outside)."""
    pts = {centre + k * scale for k in _OFFSETS}
    # a bump whose centre lies beyond an end decays from that end with length scale scale^2 / distance
    if centre < lo:
        d = scale * scale / (lo - centre)
        pts |= {lo + k * d for k in (0.5, 2, 8, 30, 80)}
    if centre > hi:
        d = scale * scale / (centre - hi)
        pts |= {hi - k * d for k in (0.5, 2, 8, 30, 80)}
    return pts


def _region(centre, scale, lo, hi):
    """The part of [lo, hi] that holds all but ~exp(-800) of a bump at ``centre`` with width ``scale``."""
    a = max(lo, centre - 40 * scale)
    b = min(hi, centre + 40 * scale)
    if centre < lo:
        a, b = lo, min(hi, lo + 40 * scale, lo + 200 * scale * scale / (lo - centre))
    if centre > hi:
        a, b = max(lo, hi - 40 * scale, hi - 200 * scale * scale / (centre - hi)), hi
    return a, b


class Piecewise1D:
    """An unnormalised density on the real line, given as branches ``(lo, hi, logf, centre, scale)``.

    Each branch's log-density ``logf`` is integrated over its half-line ``[lo, hi]``; ``centre`` and
    ``scale`` describe where its mass is, for the break points.
    """

    def __init__(self, branches):
        self.pieces = []
        for lo, hi, logf, centre, scale in branches:
            if not math.isfinite(scale) or scale <= 0:
                continue
            a, b = _region(centre, scale, lo, hi)
            if not a < b:
                continue
            pts = sorted({a, b} | {p for p in _breaks(centre, scale, lo, hi) if a < p < b})
            self.pieces.append((logf, pts))
        peaks = []
        for logf, pts in self.pieces:
            peaks.extend(logf(p) for p in pts)
        self.log_scale = max(peaks) if peaks else -math.inf

    def _integral(self, g):
        total = 0.0
        L = self.log_scale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            for logf, pts in self.pieces:
                for a, b in zip(pts[:-1], pts[1:]):
                    val, _ = integrate.quad(lambda x: g(x) * math.exp(logf(x) - L), a, b, **QUAD_KW)
                    total += val
        return total

    def log_mass(self):
        if not self.pieces or self.log_scale == -math.inf:
            return -math.inf
        m0 = self._integral(lambda x: 1.0)
        return self.log_scale + math.log(m0) if m0 > 0 else -math.inf

    def raw_moment(self, k):
        """int x^k q(x) dx (unnormalised)."""
        if not self.pieces or self.log_scale == -math.inf:
            return 0.0
        return math.exp(self.log_scale) * self._integral(lambda x: x**k)

    def mean_var(self, fn=None):
        """Mean and variance of ``fn(x)`` (default x) under the normalised density, two-pass."""
        return self.moments(fn)[1:]

    def moments(self, fn=None):
        """(log mass, mean, variance) of ``fn(x)`` (default x); (-inf, nan, nan) for zero mass."""
        if not self.pieces or self.log_scale == -math.inf:
            return -math.inf, math.nan, math.nan
        fn = fn or (lambda x: x)
        m0 = self._integral(lambda x: 1.0)
        if not m0 > 0:
            return -math.inf, math.nan, math.nan
        mean = self._integral(fn) / m0
        var = self._integral(lambda x: (fn(x) - mean) ** 2) / m0
        return self.log_scale + math.log(m0), mean, var


# ----- building blocks (SPEC 3.1, 3.2, 1.2) -----------------------------------------------------------
def relu_moment(mu, var, k):
    """E[max(a, 0)^k] for a ~ N(mu, var), by quadrature over a >= 0."""
    d = Piecewise1D([(0.0, math.inf, lambda a: log_npdf(a, mu, var), mu, math.sqrt(var))])
    return d.raw_moment(k)


def block52(mu1, var1, mu2, var2, k):
    """int_0^inf a^k N(a; mu1, var1) N(a; mu2, var2) da by quadrature (0 if a variance is infinite)."""
    if math.isinf(var1) or math.isinf(var2):
        return 0.0
    c, s = product_bump(mu1, var1, mu2, var2)
    d = Piecewise1D([(0.0, math.inf, lambda a: log_npdf(a, mu1, var1) + log_npdf(a, mu2, var2), c, s)])
    return d.raw_moment(k)


def block52_log_moments(mu1, var1, mu2, var2):
    """(log B0, mean, var) of the truncated product density, by quadrature."""
    c, s = product_bump(mu1, var1, mu2, var2)
    d = Piecewise1D([(0.0, math.inf, lambda a: log_npdf(a, mu1, var1) + log_npdf(a, mu2, var2), c, s)])
    return d.moments()


def truncnorm_moments(mu, sigma):
    """Mean, variance and log P(a >= 0) of N(mu, sigma^2) restricted to a >= 0, from scipy.stats."""
    a = (0.0 - mu) / sigma
    dist = stats.truncnorm(a, math.inf, loc=mu, scale=sigma)
    return float(dist.mean()), float(dist.var()), float(stats.norm.logsf(0.0, loc=mu, scale=sigma))


# ----- LeakyReLU (SPEC 5.4) ---------------------------------------------------------------------------
def leaky_push_forward_moments(mu_a, var_a, slope):
    """Mean and variance of z = leaky(a) for a ~ N(mu_a, var_a)."""
    s = math.sqrt(var_a)
    f = lambda a: log_npdf(a, mu_a, var_a)  # noqa: E731
    d = Piecewise1D([(-math.inf, 0.0, f, mu_a, s), (0.0, math.inf, f, mu_a, s)])
    return d.mean_var(lambda a: leaky(a, slope))


def _log_pz(z, mu_a, var_a, slope):
    """log density of z = leaky(a), a ~ N(mu_a, var_a)."""
    if z >= 0:
        return log_npdf(z, mu_a, var_a)
    return log_npdf(z / slope, mu_a, var_a) - math.log(slope)


def leaky_forward_tilted(mu_a, var_a, mu_z, var_z, slope):
    """(log M0, mean, var) of q(z) ~ p_z(z) N(z; mu_z, var_z), p_z the push-forward of N(mu_a, var_a)."""
    if math.isinf(var_z):
        return -math.inf, math.nan, math.nan
    logq = lambda z: _log_pz(z, mu_a, var_a, slope) + log_npdf(z, mu_z, var_z)  # noqa: E731
    cp, sp = product_bump(mu_a, var_a, mu_z, var_z)
    cn, sn = product_bump(slope * mu_a, slope * slope * var_a, mu_z, var_z)
    d = Piecewise1D([(-math.inf, 0.0, logq, cn, sn), (0.0, math.inf, logq, cp, sp)])
    return d.moments()


def leaky_backward_tilted(mu_a, var_a, mu_z, var_z, slope):
    """(log M0, mean, var) of q(a) ~ N(a; mu_a, var_a) N(leaky(a); mu_z, var_z)."""
    if math.isinf(var_z) or math.isinf(var_a):
        return -math.inf, math.nan, math.nan
    logq = lambda a: log_npdf(a, mu_a, var_a) + log_npdf(leaky(a, slope), mu_z, var_z)  # noqa: E731
    cp, sp = product_bump(mu_a, var_a, mu_z, var_z)
    cn, sn = product_bump(mu_a, var_a, mu_z / slope, var_z / slope**2)
    d = Piecewise1D([(-math.inf, 0.0, logq, cn, sn), (0.0, math.inf, logq, cp, sp)])
    return d.moments()


# ----- argmax (SPEC 5.10) -----------------------------------------------------------------------------
def argmax_probs_row(mu, var, noise=0.3):
    """Normalised product of pairwise probabilities, with a double loop and scipy.stats.norm.cdf."""
    c = len(mu)
    pstar = []
    for i in range(c):
        p = 1.0
        for j in range(c):
            if j != i:
                p *= float(stats.norm.cdf((mu[i] - mu[j]) / math.sqrt(var[i] + var[j] + noise)))
        pstar.append(p)
    z = sum(pstar)
    return [p / z for p in pstar]


def argmax_backward_row(mu, var, y, regularize, noise=0.3, reg_var=0.1):
    """Messages (tau, rho) to every logit, written in moment form with a loop over the pairs (y, i).

    For s_i = a_y - a_i + eps the truncation ratio message is r_i = N(mu_r, var_r) with
    1/var_r = 1/var_trunc - 1/var_s; S1 in moment form sends N(mu_r + mu_i, var_r + var_i + noise) to
    a_y and N(mu_y - mu_r, var_r + var_y + noise) to a_i.
    """
    c = len(mu)
    tau = [0.0] * c
    rho = [0.0] * c
    for i in range(c):
        if i == y:
            continue
        mu_s = mu[y] - mu[i]
        var_s = var[y] + var[i] + noise
        sd_s = math.sqrt(var_s)
        if mu_s / sd_s >= -20:
            m_t, v_t = (float(x) for x in stats.truncnorm.stats(
                -mu_s / sd_s, math.inf, loc=mu_s, scale=sd_s, moments="mv"))
        else:  # truncnorm's closed form cancels in the far tail (see truncated_quad)
            m_t, v_t, _ = truncated_quad(mu_s, sd_s)
        prec_r = 1.0 / v_t - 1.0 / var_s
        if prec_r <= 0:  # truncation irrelevant: uniform ratio message
            var_r, mu_r = math.inf, 0.0
        else:
            var_r = 1.0 / prec_r
            mu_r = (m_t / v_t - mu_s / var_s) * var_r
        # to a_y
        vy = var_r + var[i] + noise
        if math.isfinite(vy):
            tau[y] += (mu_r + mu[i]) / vy
            rho[y] += 1.0 / vy
        # to a_i, with hack 1: precision times P(y beats i), mean kept
        vi = var_r + var[y] + noise
        p_win = float(stats.norm.cdf(mu_s / sd_s))
        if math.isfinite(vi):
            mean_i = mu[y] - mu_r
            rho[i] = p_win / vi
            tau[i] = mean_i * rho[i]
    if regularize:
        for i in range(c):
            target = 1.0 if i == y else -1.0
            tau[i] += target / reg_var
            rho[i] += 1.0 / reg_var
    return tau, rho


def argmax_backward_scale_row(mu, var, y, noise=0.3):
    """Magnitude of the natural parameters that the messages are differences of (for tolerances)."""
    c = len(mu)
    st = [0.0] * c
    sr = [0.0] * c
    for i in range(c):
        if i == y:
            continue
        var_s = var[y] + var[i] + noise
        t = (abs(mu[y]) + abs(mu[i]) + math.sqrt(var_s)) / var_s
        st[y] += t
        sr[y] += 1.0 / var_s
        st[i] = t
        sr[i] = 1.0 / var_s
    return st, sr


# ----- softmax (SPEC 3.3, 5.9) ------------------------------------------------------------------------
def probit_softmax_row(mu, var):
    t = [m / math.sqrt(1.0 + math.pi * v / 8.0) for m, v in zip(mu, var)]
    mx = max(t)
    e = [math.exp(x - mx) for x in t]
    z = sum(e)
    return [x / z for x in e]


def truncated_quad(mu, sigma):
    """Mean, variance and log-mass of N(mu, sigma^2) on a >= 0 by quadrature (accurate in far tails,
    where scipy.stats.truncnorm shares the cancellation of the closed form)."""
    var = sigma * sigma
    d = Piecewise1D([(0.0, math.inf, lambda a: log_npdf(a, mu, var), mu, sigma)])
    lm, mean, v = d.moments()
    return mean, v, lm
