"""Device copies of the CPU per-element functions, so CPU and CUDA kernels share one implementation.

``device_functions(module, names)`` re-binds each named ``@njit`` function of ``module`` (its
``py_func``) into a namespace where the other named functions are their CUDA device versions, and wraps
it with ``numba.cuda.jit(device=True)``.  Imported only by the ``*_cuda`` modules (which import
``numba.cuda``), never at library import time.
"""

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
