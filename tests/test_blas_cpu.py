"""``blas_cpu.gemm``: the BLAS product on strided blocks that the dense chunk kernels use instead of
transposed copies, against the exact product (float64 / longdouble sums) within the standard error bound of
a dot product of length ``k`` (``k eps |a| |b|``; a wrong stride or transpose is off by O(1))."""

import numpy as np
import pytest
from numba import njit

from factorgraph.kernels.blas_cpu import gemm


@njit(cache=True)
def _gemm(a, b, c, beta):
    return gemm(a, b, c, beta)


def _check(c, a, b, c0=None, beta=0.0):
    """``c == a @ b + beta c0`` within ``2 k eps (|a| |b| + |beta c0|)`` elementwise."""
    exact = np.dot(a.astype(np.longdouble), b.astype(np.longdouble))
    bound = np.dot(np.abs(a).astype(np.longdouble), np.abs(b).astype(np.longdouble))
    if c0 is not None:
        exact = exact + beta * c0.astype(np.longdouble)
        bound = bound + np.abs(beta * c0.astype(np.longdouble))
    k = max(a.shape[1], 1)
    assert np.all(np.abs(c - exact) <= 2 * (k + 1) * np.finfo(c.dtype).eps * bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("U,K,J,lo,hi", [(64, 784, 256, 64, 128), (64, 784, 256, 768, 784),
                                         (16, 400, 120, 0, 64), (64, 120, 84, 0, 120), (5, 84, 10, 3, 84)])
def test_gemm_on_blocks_is_the_product_of_the_blocks(dtype, U, K, J, lo, hi):
    rng = np.random.default_rng(U + K + lo)
    x = rng.normal(size=(U, K)).astype(dtype)
    w = rng.normal(size=(K, J)).astype(dtype)
    g = rng.normal(size=(U, J)).astype(dtype)
    n = hi - lo
    # the forward: c += x[:, lo:hi] @ w[lo:hi] (a column block as the left operand, beta = 1)
    c0 = rng.normal(size=(U, J)).astype(dtype)
    _check(_gemm(x[:, lo:hi], w[lo:hi], c0.copy(), 1.0), x[:, lo:hi], w[lo:hi], c0, 1.0)
    # the weight messages: x[:, lo:hi]^T @ g (a transposed column block)
    _check(_gemm(x[:, lo:hi].T, g, np.full((n, J), np.nan, dtype), 0.0), x[:, lo:hi].T, g)
    # the messages to the inputs: a column block of the output, g @ w[lo:hi]^T
    full = np.zeros((U, K), dtype)
    _gemm(g, w[lo:hi].T, full[:, lo:hi], 0.0)
    _check(full[:, lo:hi], g, w[lo:hi].T)
    assert not full[:, :lo].any() and not full[:, hi:].any()  # nothing written outside the block


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_edge_shapes(dtype):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1, 7)).astype(dtype), rng.normal(size=(7, 1)).astype(dtype)
    tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(_gemm(a, b, np.zeros((1, 1), dtype), 0.0), a @ b, **tol)
    np.testing.assert_allclose(_gemm(b, a, np.zeros((7, 7), dtype), 0.0), b @ a, **tol)
    c = rng.normal(size=(3, 4)).astype(dtype)
    z30, z04 = np.zeros((3, 0), dtype), np.zeros((0, 4), dtype)
    np.testing.assert_array_equal(_gemm(z30, z04, c.copy(), 1.0), c)  # k = 0: c = beta c
    np.testing.assert_array_equal(_gemm(z30, z04, c.copy(), 0.0), 0 * c)
    empty = _gemm(np.zeros((0, 5), dtype), np.zeros((5, 4), dtype), np.zeros((0, 4), dtype), 0.0)
    assert empty.shape == (0, 4)


def test_gemm_rejects_operands_without_a_unit_stride():
    a = np.ones((6, 6))
    with pytest.raises(ValueError, match="unit stride along one axis"):
        _gemm(a[::2, ::2], a[:3, :3], np.zeros((3, 3)), 0.0)
    with pytest.raises(ValueError, match="unit stride along its rows"):
        _gemm(a[:3, :3], a[:3, :3], np.zeros((3, 6))[:, ::2], 0.0)
