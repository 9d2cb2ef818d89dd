"""Every numeric threshold of the library, in one place, each with the reason it exists.

Factor and layer code contains no literal epsilons; it imports these names.  Values follow
SPEC.md section 12 (the thesis code), unless a line says otherwise.
"""

#: Minimum precision of messages sent backward to inputs and of hidden-layer input marginals:
#: keeps every later cavity proper and every variance finite (SPEC 5.2, 5.4, 12).
MIN_PRECISION = 1e-8

#: Precision below which a message counts as "no information" in the hidden-linear edge rule and the
#: LeakyReLU backward fallback (SPEC 4.3, 5.4 c).
TINY_PRECISION = 2e-8

#: Default tolerance of tolerant division: precision deficits this small are rounding, not error.
DIVISION_TOL = 1e-8

#: Tolerance of the softmax backward division (SPEC 5.9): its quadrature is only accurate to about this.
SOFTMAX_DIVISION_TOL = 0.1

#: Relative round-off allowed in strict division q / m where q should dominate m: a deficit smaller than
#: this fraction of rho(q) is rounding from incremental marginal updates and is clamped to 0 (counted).
STRICT_DIVISION_RTOL = 1e-9

#: Minimum cavity precision a weighted-sum (S1) backward accepts (SPEC 4.1 guard).
MIN_CAVITY_PRECISION = 1e-8

#: LeakyReLU training forward falls back to moment matching when the tilted mass M0 is below this
#: (SPEC 5.4 b): the backward message carries too little overlap with the forward one to be trusted.
MIN_TILTED_MASS = 1e-8

#: LeakyReLU backward clamp: the marginal precision must exceed the forward precision by this much, so the
#: message it implies has precision at least this (SPEC 5.4 c).
LEAKY_BACKWARD_MIN_GAIN = 1e-8

#: Smallest variance-reduction factor u of a truncation (SPEC 1.2); below it u is round-off.
MIN_TRUNCATION_FACTOR = 1e-300

#: Fixed noise variance added to every pairwise logit difference in argmax and max-pool (SPEC 5.5, 5.10).
ARGMAX_NOISE = 0.3

#: Variance of the argmax regulariser N(+-1, gamma^2) (SPEC 5.10, hack 2).
ARGMAX_REG_VAR = 0.1

#: Softmax backward: m0 below this gives G(0, 0) (SPEC 5.9).
SOFTMAX_MIN_MASS = 1e-12

#: Softmax backward: half-width of the integration interval in standard deviations (SPEC 5.9).
SOFTMAX_BOUND_SIGMAS = 7.0

#: Probit approximation factor of the softmax prediction: t = mu / sqrt(1 + PROBIT * var) (SPEC 3.3).
PROBIT = 3.141592653589793 / 8.0

#: Prior constants of SPEC 9 (leak 0.1): target weight variance, bias variance, and the LeakyReLU moment
#: constants a and b fitted by Monte Carlo.
PRIOR_TARGET_VAR = 1.5
PRIOR_BIAS_VAR = 0.5
PRIOR_A = 0.44958619556324186
PRIOR_B = 0.8040586726631379

#: Damping schedule of the Trainer: beta_e = DAMP_FLOOR + (1 - DAMP_FLOOR) * exp(-DAMP_RATE * (e - 1)).
DAMP_FLOOR = 0.9
DAMP_RATE = 0.3

#: a sweep that leaves a weight's marginal mean this many batch-prior standard deviations away from the
#: batch prior's mean is reported (guard ``mean_shift_beyond_prior`` and a RuntimeWarning): proper, finite
#: marginals whose means run away are how a too-parallel schedule diverges
MEAN_SHIFT_WARN_SDS = 1e4
