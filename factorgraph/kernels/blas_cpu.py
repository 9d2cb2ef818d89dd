"""Matrix products on strided blocks inside the Numba CPU kernels: BLAS ``gemm`` with leading dimensions.

Numba's ``np.dot`` takes C- or F-contiguous operands only (it copies any other view first) and always
overwrites its output, so the chunk kernels (:mod:`factorgraph.kernels.chunk_cpu`) kept transposed copies
of their inputs to make column blocks contiguous.  :func:`gemm` calls the BLAS function behind ``np.dot``
(``numba_xxgemm``, Numba's binding of SciPy's BLAS, the one its ``np.dot`` and ``np.linalg`` call) with the
operands' leading dimensions: a column block ``x[:, b:e]`` of a C-contiguous array is an operand as it
stands, an output block may be one too, and ``beta = 1`` adds the product to the output.  The same BLAS
routine as ``np.dot``; for some shapes OpenBLAS picks another inner kernel by the operands' layout, so the
sums may round differently from ``np.dot`` on transposed copies (``tests/test_blas_cpu.py`` checks the
products within the error bound of their sums).  ``numba_xxgemm`` is a symbol of Numba's C helpers, not
public API: a Numba without it fails to link the kernels (every chunk kernel test fails), never silently.
"""

import numpy as np
from numba import types
from numba.extending import overload, register_jitable


def _signature(dtype):
    p = types.CPointer(dtype)
    return types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                      p, p, types.intp, p, types.intp, p, p, types.intp)


_XXGEMM = {np.dtype(np.float32): types.ExternalFunction("numba_xxgemm", _signature(types.float32)),
           np.dtype(np.float64): types.ExternalFunction("numba_xxgemm", _signature(types.float64))}
_KIND = {np.dtype(np.float32): ord("s"), np.dtype(np.float64): ord("d")}


@register_jitable
def _operand(a):
    """``(trans, ld)`` of a 2-D array with unit stride along one axis, as BLAS (column-major) sees the
    transpose of the row-major matrix ``a``: its rows contiguous -> ``'n'``, its columns -> ``'t'``."""
    isz = a.itemsize
    rows, cols = a.shape
    if cols <= 1 or rows == 0 or a.strides[1] == isz:  # (empty arrays have zero strides)
        return ord("n"), max(a.strides[0] // isz, cols, 1)
    if rows == 1 or a.strides[0] == isz:
        return ord("t"), max(a.strides[1] // isz, rows, 1)
    raise ValueError("gemm needs operands with unit stride along one axis")


def gemm(a, b, c, beta):
    """``c = a @ b + beta * c`` for 2-D float32/float64 arrays ``a`` (m, k), ``b`` (k, n) and ``c`` (m, n)
    of one dtype, each with unit stride along one axis (``c`` along its rows; else ``ValueError``); returns
    ``c``.  Shapes are not checked: the kernels pass blocks of arrays they made."""
    raise NotImplementedError("gemm is called from Numba-compiled code")


@overload(gemm, jit_options={"cache": True})
def _gemm(a, b, c, beta):
    dtype = np.dtype(c.dtype.name)
    if dtype not in _XXGEMM or a.dtype != c.dtype or b.dtype != c.dtype:
        return None
    xxgemm, kind = _XXGEMM[dtype], _KIND[dtype]

    def impl(a, b, c, beta):
        m, k = a.shape
        n = b.shape[1]
        if m == 0 or n == 0:
            return c
        ta, lda = _operand(a)
        tb, ldb = _operand(b)
        if n > 1 and c.strides[1] != c.itemsize:
            raise ValueError("gemm needs an output with unit stride along its rows")
        ldc = max(c.strides[0] // c.itemsize, n, 1)
        scal = np.empty(2, c.dtype)
        scal[0] = 1.0
        scal[1] = beta
        # row-major c = a b is column-major c^T = b^T a^T
        xxgemm(kind, tb, ta, n, m, k, scal[0:].ctypes, b.ctypes, ldb, a.ctypes, lda, scal[1:].ctypes,
               c.ctypes, ldc)
        return c

    return impl
