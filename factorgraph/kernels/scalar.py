"""Scalar building blocks shared by the compiled kernels (Numba ``njit`` device-agnostic math).

These mirror the NumPy reference in :mod:`factorgraph.gaussian` and
:mod:`factorgraph.equations.rectified` element by element; the kernel tests assert equality with it.
"""

import math

from numba import njit

from factorgraph import config
from factorgraph.gaussian import TAIL_FAR, TAIL_NEAR, TAIL_SPLIT, TAIL_T

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
SQRT1_2 = 1 / math.sqrt(2)
MIN_U = config.MIN_TRUNCATION_FACTOR
(_CN, _KN, _PN, _QN), (_CF, _KF, _PF, _QF) = TAIL_NEAR, TAIL_FAR


@njit(cache=True, inline="always")
def log_ndtr(t):
    """log Phi(t), tail-accurate: erfc in the body, an asymptotic series below t = -35."""
    if t > 6.0:
        return math.log1p(-0.5 * math.erfc(t * SQRT1_2))
    if t > -35.0:
        return math.log(0.5 * math.erfc(-t * SQRT1_2))
    z = 1.0 / (t * t)
    series = 1.0 - z * (1.0 - z * (3.0 - z * (15.0 - z * 105.0)))
    return -0.5 * t * t - math.log(-t) - LOG_SQRT_2PI + math.log(series)


@njit(cache=True, inline="always")
def tail_moments(x):
    """(E X, Var X) of N(-x, 1) restricted to X >= 0 for x >= TAIL_T: ``(K, K (L - K))`` from the rational
    approximation of :func:`factorgraph.gaussian.tail_moments`, the same operations (the piece chosen by
    selects: no branch, so loops over it vectorise)."""
    y = 1.0 / x
    s = y * y
    near = x < TAIL_SPLIT
    z = (s - _CN) * _KN if near else (s - _CF) * _KF
    p = _PN[6] if near else _PF[6]
    q = _QN[6] if near else _QF[6]
    for d in range(5, -1, -1):
        p = p * z + (_PN[d] if near else _PF[d])
        q = q * z + (_QN[d] if near else _QF[d])
    L = 2.0 * (p / q) * y
    K = 1.0 / (x + L)
    return K, K * (L - K)


@njit(cache=True, inline="always")
def shift_and_factor_log(t, log_cdf):
    """(E X, Var X) of N(t, 1) restricted to X >= 0, given ``log_cdf = log Phi(t)``; :func:`tail_moments`
    below -TAIL_T."""
    if t < -TAIL_T:
        return tail_moments(-t)
    v = math.exp(-0.5 * t * t - LOG_SQRT_2PI - log_cdf)
    shift = t + v
    return shift, 1.0 - v * shift


@njit(cache=True, inline="always")
def shift_and_factor(t):
    """(E X, Var X) of N(t, 1) restricted to X >= 0; :func:`tail_moments` below -TAIL_T."""
    return shift_and_factor_log(t, log_ndtr(t) if t >= -TAIL_T else 0.0)


@njit(cache=True, inline="always")
def shift_and_factor_from(t, phi, mass):
    """The direct formula of :func:`shift_and_factor` given ``phi(t)`` and ``Phi(t)`` computed by the
    caller (one erfc and one exp serve both sides of a rectifier).  No tail moments: the caller
    uses it for the small side only with its mass ``Phi(t)`` as weight, which scales the direct
    formula's cancellation error (~eps t^4) below rounding of the mixture.  Below t = -30, where ``phi``
    and the mass reach the subnormal range, the leading asymptotic terms (-1/t, 1/t^2) keep it finite."""
    if t < -30.0:
        return -1.0 / t, 1.0 / (t * t)
    v = phi / mass
    shift = t + v
    return shift, 1.0 - v * shift


#: a mixture component this much below the other in log-weight (weight < 2e-22 relative) gets its
#: truncation moments from the leading asymptotic terms instead of :func:`tail_moments`
NEGLIGIBLE_LOG_WEIGHT = 50.0


#: the smallest normal float64: below it a product loses digits (and ``log`` of it is no longer exact)
MIN_NORMAL = 2.2250738585072014e-308
#: below this ``t`` the mass ``erfc(-t / sqrt 2) / 2`` leaves erfc's normal range (the log-cdf's series)
ERFC_T_MIN = -35.0


#: :func:`block52_prep_fast` takes precisions whose product and sum lie in ``[PREP_MIN, PREP_MAX]``
PREP_MIN, PREP_MAX = 1e-290, 1e290


@njit(cache=True, inline="always")
def block52_prep_fast(tau1, rho1, tau2, rho2):
    """:func:`block52_prep` with two divisions where the exact form takes four, and ``ok``.  ``t`` and
    ``sigma_m`` (hence the truncation moments) are the exact form's numbers; ``h = rho1 rho2 sigma_m^2`` and
    ``mu1 - mu2 = (tau1 rho2 - tau2 rho1) / (rho1 rho2)`` agree with it within rounding (the difference of
    the means cancels in both forms, differently), and enter only the log-weight.  ``ok`` is False where
    the sum of the precisions, their product (both positive) or the cross term leaves ``[PREP_MIN,
    PREP_MAX]`` (or is NaN); there :func:`block52_prep_exact` gives them."""
    rho_m = rho1 + rho2
    safe_m = rho_m if rho_m > 0 else 1.0
    sigma_m = 1.0 / math.sqrt(safe_m)
    t = (tau1 + tau2) * sigma_m
    both = (rho1 > 0) & (rho2 > 0)
    p = rho1 * rho2
    inv_p = 1.0 / p if p > 0.0 else 0.0
    cross = tau1 * rho2 - tau2 * rho1
    h = p * (sigma_m * sigma_m) if both else 1.0
    d = cross * inv_p
    quad = -LOG_SQRT_2PI - 0.5 * h * d * d if both else -math.inf
    ok = (safe_m >= PREP_MIN) & (safe_m <= PREP_MAX) & (
        (not both) | ((p >= PREP_MIN) & (p <= PREP_MAX) & (abs(cross) <= PREP_MAX)))
    return t, sigma_m, h, quad, ok


@njit(cache=True, inline="always")
def block52_prep_exact(tau1, rho1, tau2, rho2):
    """:func:`block52_prep` by four divisions, for any precisions (:func:`block52_prep_fast`'s other case)."""
    rho_m = rho1 + rho2
    safe_m = rho_m if rho_m > 0 else 1.0
    sigma_m = 1.0 / math.sqrt(safe_m)
    t = (tau1 + tau2) * sigma_m
    both = rho1 > 0 and rho2 > 0
    h = rho1 * rho2 / safe_m if both else 1.0
    d = tau1 / rho1 - tau2 / rho2 if both else 0.0
    quad = -LOG_SQRT_2PI - 0.5 * h * d * d if both else -math.inf
    return t, sigma_m, h, quad


@njit(cache=True, inline="always")
def block52_prep(tau1, rho1, tau2, rho2):
    """``(t, sigma_m, h, quad)`` of :func:`block52_parts` before its transcendental calls: ``t`` the
    standardised truncation point, ``h`` the harmonic precision, ``quad = log N(mu1; mu2, 1/rho1 + 1/rho2)
    - log sqrt(h)`` (``-inf`` when a precision is 0, with ``h = 1``): :func:`block52_prep_fast`, or
    :func:`block52_prep_exact` where the fast form's precisions are out of its range."""
    t, sigma_m, h, quad, ok = block52_prep_fast(tau1, rho1, tau2, rho2)
    if ok:
        return t, sigma_m, h, quad
    return block52_prep_exact(tau1, rho1, tau2, rho2)


@njit(cache=True, inline="always")
def erfc_log_weight_ok(t, sqrt_h_mass):
    """True where ``log(sqrt_h_mass)`` gives the log-weight: erfc gives ``Phi(t)`` (``t >= ERFC_T_MIN``)
    and the product ``sqrt(h) Phi(t)`` is a normal number."""
    return (t >= ERFC_T_MIN) & (sqrt_h_mass >= MIN_NORMAL)


@njit(cache=True, inline="always")
def block52_log_weight(t, h, quad, sqrt_h_mass, log_sqrt_h_mass):
    """``log B0 = quad + log(sqrt(h) Phi(t))`` given ``sqrt_h_mass = sqrt(h) erfc(-t / sqrt 2) / 2`` and its
    log; elsewhere (:func:`erfc_log_weight_ok`) ``quad + log(h) / 2 + log_ndtr(t)``."""
    if erfc_log_weight_ok(t, sqrt_h_mass):
        return quad + log_sqrt_h_mass
    return quad + 0.5 * math.log(h) + log_ndtr(t)


@njit(cache=True, inline="always")
def block52_parts(tau1, rho1, tau2, rho2):
    """``(log B0, t, sigma_m, v)`` of the product of two Gaussians restricted to a >= 0:
    ``log B0 = log N(mu1; mu2, 1/rho1 + 1/rho2) + log Phi(t)`` (``-inf`` when a precision is 0) and
    ``v = phi(t) / Phi(t)`` above ``t = -TAIL_T``, NaN below (the tail, whose moments come from
    :func:`tail_moments`).  The mass comes from one erfc, ``v`` from one exp, and one log serves both
    logarithms (``log(sqrt(h) Phi)``): three transcendental calls where the reference
    (:func:`factorgraph.equations.block52_log`) takes four.  :func:`block52_prep` and
    :func:`block52_log_weight` are its two halves, for kernels that compute the calls four lanes at a time."""
    t, sigma_m, h, quad = block52_prep(tau1, rho1, tau2, rho2)
    mass = 0.5 * math.erfc(-t * SQRT1_2)
    shm = math.sqrt(h) * mass
    lw = block52_log_weight(t, h, quad, shm, math.log(shm) if shm >= MIN_NORMAL else 0.0)
    if t >= -TAIL_T:
        return lw, t, sigma_m, math.exp(-0.5 * t * t - LOG_SQRT_2PI) / mass
    return lw, t, sigma_m, math.nan


@njit(cache=True, inline="always")
def block52_moments(t, sigma_m, v, negligible):
    """``(mean, var, floored)`` for :func:`block52_parts`; a ``negligible`` tail component takes the
    leading asymptotic terms ``(-1/t, 1/t^2)`` instead of :func:`tail_moments`."""
    if t >= -TAIL_T:
        shift = t + v
        u = 1.0 - v * shift
    elif negligible:
        shift, u = -1.0 / t, 1.0 / (t * t)
    else:
        shift, u = tail_moments(-t)
    return floored_moments(sigma_m, shift, u)


@njit(cache=True, inline="always")
def floored_moments(sigma_m, shift, u):
    """``(mean, var, floored)`` of a truncation block from its standardised ``(shift, u)``: ``sigma_m shift``
    and ``sigma_m^2 max(u, MIN_U)``."""
    floored = 0
    if u < MIN_U:
        u = MIN_U
        floored = 1
    return sigma_m * shift, sigma_m * sigma_m * u, floored


@njit(cache=True, inline="always")
def mixture_exponent(lw1, lw2):
    """``lw_small - lw_big`` (<= 0; NaN when both are ``-inf``)."""
    return lw2 - lw1 if lw1 >= lw2 else lw1 - lw2


@njit(cache=True, inline="always")
def mixture_with(lw1, m1, v1, lw2, m2, v2, e, log1p_e):
    """:func:`mixture` given ``e = exp(lw_small - lw_big)`` and ``log1p(e)`` (NaN when both log-weights are
    ``-inf``: then the mixture is undefined, ``(nan, nan, -inf)``)."""
    if lw1 == -math.inf and lw2 == -math.inf:
        return math.nan, math.nan, -math.inf
    w_big = 1.0 / (1.0 + e)
    w_small = e * w_big
    w1, w2 = (w_big, w_small) if lw1 >= lw2 else (w_small, w_big)
    dm = m1 - m2
    return w1 * m1 + w2 * m2, w1 * v1 + w2 * v2 + w1 * w2 * dm * dm, (lw1 if lw1 >= lw2 else lw2) + log1p_e


@njit(cache=True, inline="always")
def mixture(lw1, m1, v1, lw2, m2, v2):
    """(mean, var, log mass) of a two-component mixture with log-weights lw1, lw2: one exp for the
    weights ``1 / (1 + e)`` and ``e / (1 + e)``, ``e = exp(lw_small - lw_big)``, one log1p for the mass."""
    e = math.exp(mixture_exponent(lw1, lw2))
    return mixture_with(lw1, m1, v1, lw2, m2, v2, e, math.log1p(e))


@njit(cache=True, inline="always")
def s1_term(a, mu_b, var_b, f_mu, f_var, r_t, r_r):
    """S1 message (tau, rho, clamped?) to one summand ``a * b`` of ``s`` (SPEC 4.1, natural form)."""
    if a == 0.0:
        return 0.0, 0.0, 0
    a2 = a * a
    rest = f_var - a2 * var_b
    clamped = 0
    if rest < 0:
        rest = 0.0
        clamped = 1
    inv_d = 1.0 / (1.0 + r_r * rest)
    return a * (r_t - r_r * (f_mu - a * mu_b)) * inv_d, a2 * r_r * inv_d, clamped


@njit(cache=True, inline="always")
def s2_terms(mu_a, var_a, mu_b, var_b, f_mu, f_var, r_t, r_r):
    """S2 messages of one product term ``a * b`` of ``z`` (SPEC 4.2): (tau_a, rho_a, tau_b, rho_b, clamped?)."""
    rest = f_var - (var_a * var_b + var_a * mu_b * mu_b + mu_a * mu_a * var_b)
    clamped = 0
    if rest < 0:
        rest = 0.0
        clamped = 1
    inv_d = 1.0 / (1.0 + r_r * rest)
    resid = (r_t - r_r * (f_mu - mu_a * mu_b)) * inv_d
    return (mu_b * resid, (var_b + mu_b * mu_b) * r_r * inv_d, mu_a * resid, (var_a + mu_a * mu_a) * r_r * inv_d,
            clamped)


@njit(cache=True, inline="always")
def damp_toward(old, new, damp):
    """``old + damp (new - old)``: the message kept after damping (``damp = 1``: ``new`` exactly)."""
    if damp == 1.0:
        return new
    return old + damp * (new - old)
