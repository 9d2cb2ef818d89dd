"""Transcendental functions over arrays, four or eight lanes per call, for the CPU kernels.

Numba compiles ``math.erfc``/``exp``/``log``/``log1p`` to one scalar libm call per element (26, 9, 9, 20 ns
on the development machine), and without Intel's SVML it cannot vectorise them.  glibc ships vector variants
in ``libmvec`` (``_ZGVdN4v_erfc`` etc.: four doubles in one AVX2 register, erfc since glibc 2.35); where the
CPU has AVX2 and ``libmvec`` has them, :func:`erfc_map` and friends call those through a Numba intrinsic
(3.4 ns per erfc), else the scalar functions.  ``AVAILABLE`` says which.  Where the CPU also has AVX-512 and
``libmvec`` its eight-lane variants (``_ZGVeN8v_erfc`` etc.; ``WIDE``), the maps take eight lanes per call
(erfc 2.8 -> 1.7 ns, exp 1.5 -> 0.9 ns, log 2.0 -> 1.2 ns per element on a 2-core AVX-512 machine; the
same results in that measurement but one log, 1 ulp apart).  Accuracy: special values (0, +-inf, NaN,
overflow, underflow) exactly as the scalar functions; elsewhere within 4 eps relative of them, erfc within
1e-13 relative in its far tail (arguments beyond 20, values below 1e-170), as ``tests/test_vecmath.py``
checks for every width the machine has.

The maps take ``(x, out, n)`` with ``n`` a multiple of 4 (callers pad their scratch arrays); the eight-lane
maps need C-contiguous float64 arrays (the kernels' scratch rows).
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
_SYMBOLS8 = {k: f"_ZGVeN8v_{k}" for k in _SYMBOLS}


def _wide_ready():
    """True where the CPU has AVX-512F and the loaded ``libmvec`` every symbol of ``_SYMBOLS8``."""
    if not AVAILABLE:
        return False
    try:
        import llvmlite.binding as llb

        if "+avx512f" not in llb.get_host_cpu_features().flatten().split(","):
            return False
        lib = ctypes.CDLL(ctypes.util.find_library("mvec") or "libmvec.so.1")
        for symbol in _SYMBOLS8.values():
            getattr(lib, symbol)
        return True
    except (OSError, AttributeError, RuntimeError, ImportError):
        return False


WIDE = _wide_ready()


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


def _lanes8(symbol):
    """A Numba intrinsic ``f(x, out, i)``: ``out[i:i + 8] = f(x[i:i + 8])`` by one call of the AVX-512
    vector function ``symbol`` (``<8 x double>`` in and out); ``x``, ``out`` C-contiguous float64 arrays,
    ``i + 8 <= len`` (unchecked)."""
    from llvmlite import ir

    @intrinsic
    def lanes(typingctx, x, out, i):
        for a in (x, out):
            ok = isinstance(a, types.Array) and a.dtype == types.float64 and a.layout == "C" and a.ndim == 1
            if not ok:
                raise TypeError(f"the eight-lane maps take 1-D C-contiguous float64 arrays, got {a}")
        sig = types.none(x, out, types.intp)

        def codegen(context, builder, signature, args):
            vec = ir.VectorType(ir.DoubleType(), 8)
            src = context.make_array(signature.args[0])(context, builder, args[0])
            dst = context.make_array(signature.args[1])(context, builder, args[1])
            load = builder.bitcast(cgutils.gep(builder, src.data, args[2]), vec.as_pointer())
            store = builder.bitcast(cgutils.gep(builder, dst.data, args[2]), vec.as_pointer())
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec]), symbol)
            builder.store(builder.call(fn, [builder.load(load, align=8)]), store, align=8)
            return context.get_dummy_value()

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


def _map8(lanes8, lanes4):
    """:func:`_map` eight lanes per call of ``lanes8``, the last four (``n % 8 == 4``) by ``lanes4``."""
    @njit(inline="always")
    def apply(x, out, n):
        top = n - n % 8
        for i in range(0, top, 8):
            lanes8(x, out, i)
        if top < n:
            out[top], out[top + 1], out[top + 2], out[top + 3] = lanes4(x[top], x[top + 1], x[top + 2],
                                                                        x[top + 3])

    return apply


_FUNCTIONS = {"erfc": math.erfc, "exp": math.exp, "log": math.log, "log1p": math.log1p}
_LANES = {k: _lanes4(_SYMBOLS[k]) if AVAILABLE else _scalar4(f) for k, f in _FUNCTIONS.items()}
#: the maps of every width this machine has (the tests check each), widest last
WIDTHS = {4: {k: _map(_LANES[k]) for k in _FUNCTIONS}}
if WIDE:
    WIDTHS[8] = {k: _map8(_lanes8(_SYMBOLS8[k]), _LANES[k]) for k in _FUNCTIONS}
erfc_map, exp_map, log_map, log1p_map = (WIDTHS[max(WIDTHS)][k] for k in ("erfc", "exp", "log", "log1p"))
