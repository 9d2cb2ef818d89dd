"""Compiled kernels: Numba on the CPU (``*_cpu`` modules) and Numba CUDA on the GPU (``*_cuda``).

The NumPy functions of :mod:`factorgraph.equations` are the specification; every kernel has a test that
asserts it computes the same numbers.  Layers use the CPU kernels for NumPy arrays when
``enabled()`` (default on; ``FACTORGRAPH_KERNELS=0`` in the environment or ``set_enabled(False)``
turns them off, which runs the NumPy reference instead).
"""

import os

from factorgraph import guards

_ENABLED = os.environ.get("FACTORGRAPH_KERNELS", "1") != "0"


def enabled():
    """True when layers should call the compiled CPU kernels."""
    return _ENABLED


def set_enabled(flag):
    """Switch the compiled CPU kernels on or off (returns the previous setting)."""
    global _ENABLED
    prev, _ENABLED = _ENABLED, bool(flag)
    return prev


def record_counts(counts, names):
    """Add a kernel's guard counters to :mod:`factorgraph.guards`; raise on an improper division."""
    for name, n in zip(names, counts):
        if n:
            if name == "improper_division":
                raise guards.ImproperMessageError(f"division gave negative precision in {n} element(s)")
            guards.record(name, int(n))
