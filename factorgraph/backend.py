"""Array backend: NumPy always, CuPy when installed and a GPU is present.

This is the only module that imports ``cupy`` (lazily, on first use).  Everything else asks
``get_array_module(x)`` for the namespace of its arrays and ``special(xp)`` for the matching
``scipy.special``-like module, so one code path serves both devices.
"""

import importlib

import numpy as np
import scipy.special

_cupy = None
_cupy_checked = False


def _load_cupy():
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            _cupy = importlib.import_module("cupy")
        except Exception:  # ImportError, or a CUDA driver error raised at import
            _cupy = None
    return _cupy


def cupy_available():
    """True when cupy imports and sees at least one CUDA device."""
    cp = _load_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    """Return ``cupy`` if any argument is a cupy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def special(xp):
    """Return the special-function module (``log_ndtr``, ``ndtr``, ``erfc``) for namespace ``xp``."""
    if xp is np:
        return scipy.special
    return importlib.import_module("cupyx.scipy.special")


def resolve_device(device):
    """Validate a device name ("cpu" or "cuda") and return the array namespace for it."""
    if device == "cpu":
        return np
    if device == "cuda":
        cp = _load_cupy()
        if cp is None:
            raise RuntimeError(
                "device 'cuda' needs cupy, which is not installed; install the GPU extra: "
                "pip install 'factorgraph[gpu]'"
            )
        if not cupy_available():
            raise RuntimeError("device 'cuda' requested but cupy sees no CUDA device on this machine")
        return cp
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def to_device(x, device):
    """Copy array ``x`` to ``device`` ("cpu" or "cuda"); a no-op when it is already there."""
    xp = resolve_device(device)
    if xp is np:
        if _cupy is not None and isinstance(x, _cupy.ndarray):
            return _cupy.asnumpy(x)
        return np.asarray(x)
    return xp.asarray(x)


def check_dtype(dtype):
    """Return ``dtype`` as a numpy dtype, accepting only float32 and float64."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt
