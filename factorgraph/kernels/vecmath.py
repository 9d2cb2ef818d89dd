"""Transcendental functions over arrays, four lanes per call, for the CPU kernels.

Numba compiles ``math.erfc``/``exp``/``log``/``log1p`` to one scalar libm call per element (26, 9, 9, 20 ns
on the development machine), and without Intel's SVML it cannot vectorise them.  glibc ships vector variants
in ``libmvec`` (``_ZGVdN4v_erfc`` etc.: four doubles in one AVX2 register, erfc since glibc 2.35); where the
CPU has AVX2 and ``libmvec`` has them, :func:`erfc_map` and friends call those through a Numba intrinsic
(3.4 ns per erfc), else the scalar functions.  ``AVAILABLE`` says which.  Accuracy: special values (0, +-inf,
NaN, overflow, underflow) exactly as the scalar functions; elsewhere within 4 eps relative of them, erfc
within 1e-13 relative in its far tail (arguments beyond 20, values below 1e-170), as ``tests/test_vecmath.py``
checks.

The maps take ``(x, out, n)`` with ``n`` a multiple of 4 (callers pad their scratch arrays).
"""

import ctypes
import ctypes.util
import math

from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_SYMBOLS = {"erfc": "_ZGVdN4v_erfc", "exp": "_ZGVdN4v_exp", "log": "_ZGVdN4v_log", "log1p": "_ZGVdN4v_log1p"}


def _libmvec_ready():
    """Load ``libmvec`` into the process's symbol space for the JIT when the CPU and glibc can serve every
    symbol of ``_SYMBOLS``; False otherwise (never raises)."""
    try:
        import llvmlite.binding as llb

        if "+avx2" not in llb.get_host_cpu_features().flatten().split(","):
            return False
        name = ctypes.util.find_library("mvec") or "libmvec.so.1"
        lib = ctypes.CDLL(name)
        for symbol in _SYMBOLS.values():
            getattr(lib, symbol)
        llb.load_library_permanently(name)
        return True
    except (OSError, AttributeError, RuntimeError, ImportError):
        return False


AVAILABLE = _libmvec_ready()


def _lanes4(symbol):
    """A Numba intrinsic ``f(a, b, c, d) -> (f(a), f(b), f(c), f(d))`` calling the AVX2 vector function
    ``symbol`` (``<4 x double>`` in, ``<4 x double>`` out) once."""
    from llvmlite import ir

    @intrinsic
    def lanes(typingctx, a, b, c, d):
        sig = types.UniTuple(types.float64, 4)(types.float64, types.float64, types.float64, types.float64)

        def codegen(context, builder, signature, args):
            vec = ir.VectorType(ir.DoubleType(), 4)
            v = ir.Constant(vec, ir.Undefined)
            for i, x in enumerate(args):
                v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), i))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), symbol)
            r = builder.call(fn, [v])
            parts = [builder.extract_element(r, ir.Constant(ir.IntType(32), i)) for i in range(4)]
            return context.make_tuple(builder, signature.return_type, parts)

        return sig, codegen

    return lanes


def _scalar4(fn):
    """The fallback of :func:`_lanes4`: ``fn`` (a ``math`` function) on each of four arguments."""
    @njit(inline="always")
    def lanes(a, b, c, d):
        return fn(a), fn(b), fn(c), fn(d)

    return lanes


def _map(lanes):
    """``out[:n] = f(x[:n])`` for ``n % 4 == 0``, four lanes per call of ``lanes``."""
    @njit(inline="always")
    def apply(x, out, n):
        for i in range(0, n, 4):
            out[i], out[i + 1], out[i + 2], out[i + 3] = lanes(x[i], x[i + 1], x[i + 2], x[i + 3])

    return apply


_FUNCTIONS = {"erfc": math.erfc, "exp": math.exp, "log": math.log, "log1p": math.log1p}
_LANES = {k: _lanes4(_SYMBOLS[k]) if AVAILABLE else _scalar4(f) for k, f in _FUNCTIONS.items()}
erfc_map, exp_map, log_map, log1p_map = (_map(_LANES[k]) for k in ("erfc", "exp", "log", "log1p"))
