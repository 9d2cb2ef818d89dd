"""The message-equation library: pure functions over natural-parameter arrays, no layer state.

================================  ============================================================
function                          message
================================  ============================================================
``s1_forward``                    weighted sum with constant coefficients, forward (S1)
``s1_backward_to_b``              S1 backward to the weights, product over uses
``s1_backward_to_bias``           S1 backward to the bias, product over uses
``s1_term_message``               S1 backward to one summand, elementwise
``s1_reduce_forward/backward``    S1 over the last axis with per-element weights (pooling windows)
``patch_index`` / ``fold_messages``  im2col geometry, gather and deterministic fold of messages
``s2_forward``                    inner product of variables, forward (S2)
``s2_forward_moments``            the same given the inputs' means and variances
``s2_backward``                   S2 backward to both operands
``s1_backward_to_b_gemm``         S1 weight messages of many uses by matrix products (order 0 or 1 in e)
``s2_backward_gemm``              S2 backward of many uses by matrix products (order 0 or 1 in e)
``relu_moments``                  R1, R2 of max(a, 0)
``block52`` / ``block52_log``     truncated product integrals B0, B1, B2
``leaky_forward_moment_match``    LeakyReLU moment matching (prediction, fallback)
``leaky_forward_marginal``        LeakyReLU training forward by marginal approximation
``leaky_backward_marginal``       LeakyReLU training backward by marginal approximation
``argmax_probs``                  argmax probabilities with noise 0.3
``argmax_backward``               argmax likelihood backward with both stabilizers
``probit_softmax``                probit-approximated softmax prediction
``softmax_backward``              softmax likelihood backward by 1-D quadrature per logit
================================  ============================================================
"""

from factorgraph.equations.argmax import argmax_backward, argmax_log_probs, argmax_probs
from factorgraph.equations.inner_product import s2_backward, s2_backward_gemm, s2_forward, s2_forward_moments
from factorgraph.equations.leaky_relu import backward_marginal as leaky_backward_marginal
from factorgraph.equations.leaky_relu import forward_marginal as leaky_forward_marginal
from factorgraph.equations.leaky_relu import forward_moment_match as leaky_forward_moment_match
from factorgraph.equations.rectified import block52, block52_log, relu_moments, truncated_moments
from factorgraph.equations.softmax import probit_scaled_means, probit_softmax, softmax_backward
from factorgraph.equations.im2col import (
    conv_output_size,
    fold_messages,
    fold_plan,
    gather_constants,
    gather_messages,
    patch_index,
)
from factorgraph.equations.weighted_sum import (
    s1_backward_to_b,
    s1_backward_to_b_gemm,
    s1_backward_to_bias,
    s1_forward,
    s1_reduce_backward,
    s1_reduce_forward,
    s1_term_message,
)

__all__ = [
    "argmax_backward", "argmax_log_probs", "argmax_probs", "block52", "block52_log",
    "leaky_backward_marginal", "leaky_forward_marginal", "leaky_forward_moment_match",
    "probit_scaled_means", "probit_softmax", "relu_moments", "s1_backward_to_b", "s1_backward_to_b_gemm", "s2_backward_gemm",
    "s1_backward_to_bias", "s1_forward", "s1_term_message", "s2_backward", "s2_forward", "s2_forward_moments",
    "truncated_moments", "conv_output_size", "fold_messages", "fold_plan", "gather_constants", "gather_messages",
    "patch_index", "s1_reduce_backward", "s1_reduce_forward", "softmax_backward",
]
