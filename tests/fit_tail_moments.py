"""Regenerate the coefficients of :data:`factorgraph.gaussian.TAIL_NEAR` and ``TAIL_FAR`` (run as a script;
not a test module; needs mpmath).

``G(s) = x L(x) / 2`` with ``s = 1 / x^2`` (see :func:`factorgraph.gaussian.tail_moments`) is computed to 50
digits from the Mills ratio, ``L = 1 / K - x``, ``K = 1 / R - x``.  On each piece ``[s_lo, s_hi]`` with
``z = (s - c) / h`` in ``[-1, 1]`` a degree (6, 6) rational ``P(z) / Q(z)``, ``Q(0) = 1``, is fitted by
iteratively reweighted linear least squares of the relative residual ``(P - G Q) / (G Q_prev)`` on 200
Chebyshev nodes (eight rounds), and its relative error in double precision is printed over 3001 points.

    python tests/fit_tail_moments.py
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 50


def G(s):
    """``x L(x) / 2`` at ``x = s^(-1/2)`` (1 at s = 0)."""
    if s == 0:
        return mp.mpf(1)
    x = 1 / mp.sqrt(s)
    R = mp.sqrt(mp.pi / 2) * mp.erfc(x / mp.sqrt(2)) * mp.exp(x * x / 2)
    K = 1 / R - x
    return x * (1 / K - x) / 2


def fit(s_lo, s_hi, degree=6, nodes=200, rounds=8):
    """``(c, h, P, Q, max relative error)`` of the fit on ``[s_lo, s_hi]``."""
    a, b = mp.mpf(s_lo), mp.mpf(s_hi)
    c, h = (a + b) / 2, (b - a) / 2
    zs = [-mp.cos(mp.pi * (k + 0.5) / nodes) for k in range(nodes)]
    gs = [G(c + h * z) for z in zs]
    w = [mp.mpf(1)] * nodes
    for _ in range(rounds):
        A, rhs = mp.matrix(nodes, 2 * degree + 1), mp.matrix(nodes, 1)
        for i, (z, g) in enumerate(zip(zs, gs)):
            for j in range(degree + 1):
                A[i, j] = z ** j / (w[i] * g)
            for j in range(1, degree + 1):
                A[i, degree + j] = -z ** j / w[i]
            rhs[i] = 1 / w[i]
        coef = mp.qr_solve(A, rhs)[0]
        p = [coef[j] for j in range(degree + 1)]
        q = [mp.mpf(1)] + [coef[degree + j] for j in range(1, degree + 1)]
        w = [mp.polyval(q[::-1], z) for z in zs]
    P, Q = np.array([float(v) for v in p]), np.array([float(v) for v in q])
    err = 0.0
    for s in np.linspace(float(a), float(b), 3001):
        z = (s - float(c)) / float(h)
        err = max(err, abs(float(np.polyval(P[::-1], z) / np.polyval(Q[::-1], z) / G(mp.mpf(s)) - 1)))
    return float(c), float(h), P, Q, err


if __name__ == "__main__":
    for name, x_lo, x_hi in (("TAIL_NEAR", 3.0, 5.0), ("TAIL_FAR", 5.0, np.inf)):
        c, h, P, Q, err = fit(1 / x_hi ** 2, 1 / x_lo ** 2)
        print(f"{name}: x in [{x_lo}, {x_hi}), c = {c!r}, k = 1 / {h!r}, max relative error {err:.2e}")
        print("  P =", tuple(float(v) for v in P))
        print("  Q =", tuple(float(v) for v in Q))
