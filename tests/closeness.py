"""How a compiled kernel is compared with the NumPy reference.

A message ``N(tau, rho)`` is multiplied into a marginal with other messages, so its digits count relative
to that marginal, not to itself: where the likelihood says little, the message precision is the difference
of two nearly equal precisions and any two correct evaluation orders differ in its relative last digits.
The kernels must equal the reference to ``rtol`` (``KTOL``: 1e-12 in float64, 1e-5 in float32) as follows:

* precision: ``|rho - rho_ref| <= rtol (|rho_ref| + base_rho)``, ``base_rho`` the precision of what the
  message is multiplied with (the cavity or forward message; 0 for a moment-matched output);
* tau: ``|tau - tau_ref| <= rtol (|tau_ref| + |base_tau| + sqrt(|rho_ref| + base_rho))``, i.e. the mean of
  the marginal to ``rtol`` of its own magnitude or standard deviation;
* moments: ``|mu - mu_ref| <= rtol (|mu_ref| + sd_ref)`` and ``|var - var_ref| <= rtol var_ref``.

Non-finite values must sit at the same places and be equal.
"""

import numpy as np

KTOL = {np.float64: 1e-12, np.float32: 1e-5}


def _check(got, want, scale, rtol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    want = np.broadcast_to(want, got.shape)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{what}: non-finite pattern")
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=f"{what}: non-finite values")
    if not finite.any():
        return 0.0
    scale = np.broadcast_to(np.asarray(scale, np.float64), got.shape)[finite]
    diff = np.abs(got[finite] - want[finite])
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.where(diff == 0, 0.0, diff / scale)
    worst = float(err.max())
    assert worst <= rtol, f"{what}: error {worst:.3g} of the scale > {rtol:g} (at {np.argmax(err)})"
    return worst


def assert_messages_close(got_tau, got_rho, want_tau, want_rho, rtol, base_tau=0.0, base_rho=0.0, what=""):
    """Natural parameters equal to ``rtol`` relative to the marginal they form (module docstring)."""
    r = np.abs(np.asarray(want_rho, np.float64)) + np.abs(np.asarray(base_rho, np.float64))
    _check(got_rho, want_rho, r, rtol, f"{what} rho")
    t = np.abs(np.asarray(want_tau, np.float64)) + np.abs(np.asarray(base_tau, np.float64)) + np.sqrt(r)
    _check(got_tau, want_tau, t, rtol, f"{what} tau")


def assert_moments_close(got_mu, got_var, want_mu, want_var, rtol, what=""):
    """Means to ``rtol`` of ``|mu| + sd``, variances to ``rtol`` relative."""
    want_var = np.asarray(want_var, np.float64)
    _check(got_var, want_var, want_var, rtol, f"{what} var")
    _check(got_mu, want_mu, np.abs(np.asarray(want_mu, np.float64)) + np.sqrt(want_var), rtol, f"{what} mean")
