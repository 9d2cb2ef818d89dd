"""Device copies of the CPU per-element functions, so CPU and CUDA kernels share one implementation.

``device_functions(module, names)`` re-binds each named ``@njit`` function of ``module`` (its
``py_func``) into a namespace where the other named functions are their CUDA device versions, and wraps
it with ``numba.cuda.jit(device=True)``.  ``launch(kernel, config, *args)`` launches a kernel with less
host time than ``kernel[config](*args)`` for CuPy arrays.  Imported only by the ``*_cuda`` modules (which
import ``numba.cuda``), never at library import time.
"""

import ctypes
import types

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 registers np.row_stack, which NumPy 2.5 removed
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402


def device_functions(namespace_modules, names):
    """Return ``{name: cuda device function}`` for the named njit functions found in the modules."""
    ns = {}
    for mod in namespace_modules:
        ns.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    for name in names:
        f = ns[name].py_func
        g = types.FunctionType(f.__code__, ns, name, f.__defaults__, f.__closure__)
        ns[name] = cuda.jit(device=True)(g)
    return {name: ns[name] for name in names}


def grid(n, threads=128):
    """Blocks for ``n`` threads of ``threads`` each."""
    return (max(1, (n + threads - 1) // threads), threads)


# --- launching -----------------------------------------------------------------------------------------
# Numba's dispatch converts every CuPy argument through DLPack and types it anew at each launch: 283 us of
# host time for a kernel with 8 arrays on the H100 machine, where the GPU work of a chunk's kernel takes a
# few us.  ``launch`` types the arguments once per kernel and argument kinds, then passes the compiled
# kernel's parameters itself (17.5 us there): an array is the seven-plus-2*ndim fields Numba's
# ``_Kernel._prepare_args`` passes (meminfo, parent, size, itemsize, data pointer, shape, byte strides), a
# scalar the C type of its Numba type.  Anything else (NumPy arrays, the CUDA simulator, other argument
# types, a Numba whose internals differ) takes Numba's own launch.

_ARRAY = object()  # marks an array parameter in a cached entry
_C_TYPES = None  # Numba scalar type -> its C type (as Numba's launch passes it; a boolean as a Python bool)
_FAST = {}  # (kernel, argument kinds) -> (cuda.core kernel, parameter kinds), or None: Numba's launch
_CONFIGS = {}
_CORE = None  # (cuda.core launch, LaunchConfig, the default stream), or False where unavailable


def _core():
    global _CORE
    if _CORE is None:
        try:
            from cuda.core import LaunchConfig, launch as core_launch
            from numba.cuda.cudadrv.driver import _to_core_stream

            _CORE = (core_launch, LaunchConfig, _to_core_stream(0))
        except Exception:  # an older numba-cuda, or the simulator
            _CORE = False
    return _CORE


def _kind(a):
    t = type(a)
    if t is _CUPY_ARRAY:
        f = a.flags
        return (a.dtype.char, a.ndim, f.c_contiguous, f.f_contiguous)
    if t in _SCALARS:
        return t
    raise TypeError


_SCALARS = frozenset((float, int, bool, np.float64, np.float32, np.int64))
_CUPY_ARRAY = None  # cupy.ndarray once looked up, False without CuPy or cuda.core


def _compiled(kernel, args):
    """The cached entry of a kernel for these arguments (after Numba launched it once), or ``None``."""
    global _C_TYPES
    try:
        from numba.core import types as nt

        if _C_TYPES is None:
            _C_TYPES = {nt.float64: ctypes.c_double, nt.float32: ctypes.c_float, nt.int64: ctypes.c_int64,
                        nt.int32: ctypes.c_int32, nt.uint64: ctypes.c_uint64, nt.boolean: bool}
        compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
        if compiled.debug or compiled.cooperative or getattr(compiled, "launch_config_sensitive", False):
            return None
        kinds = []
        for ty in compiled.argument_types:
            if isinstance(ty, nt.Array):
                kinds.append(_ARRAY)
            elif ty in _C_TYPES:
                kinds.append(_C_TYPES[ty])
            else:
                return None
        return compiled._codelibrary.get_cufunc().kernel, tuple(kinds)
    except Exception:
        return None


def launch(kernel, config, *args):
    """``kernel[config](*args)`` (``config`` = ``(blocks, threads)``, as :func:`grid` gives), with CuPy
    arrays and scalars passed straight to the compiled kernel (see above); the same kernel on the same
    stream (the default one, as Numba's launch without a stream)."""
    global _CUPY_ARRAY
    if _CUPY_ARRAY is None:
        from factorgraph.backend import _load_cupy

        cp = _load_cupy()
        _CUPY_ARRAY = cp.ndarray if cp is not None and _core() else False
    if not _CUPY_ARRAY:
        return kernel[config](*args)
    try:
        key = (kernel, *map(_kind, args))
    except TypeError:
        return kernel[config](*args)
    entry = _FAST.get(key, False)
    if entry is False:  # first launch of these kinds: Numba compiles (or loads) and launches it
        kernel[config](*args)
        _FAST[key] = _compiled(kernel, args)
        return None
    if entry is None:
        return kernel[config](*args)
    fn, kinds = entry
    params = []
    for kind, a in zip(kinds, args):
        if kind is _ARRAY:
            params += (0, 0, a.size, a.itemsize, a.data.ptr, *a.shape, *a.strides)
        else:
            params.append(kind(a))
    lc = _CONFIGS.get(config)
    if lc is None:
        lc = _CONFIGS[config] = _CORE[1](grid=config[0], block=config[1])
    _CORE[0](_CORE[2], lc, fn, *params)
    return None
