"""Compiled kernels: Numba on the CPU (``*_cpu`` modules) and Numba CUDA on the GPU (``*_cuda``).

The NumPy functions of :mod:`factorgraph.equations` are the specification; every kernel has a test that
asserts it computes the same numbers.  Layers use the CPU kernels for NumPy arrays when
``enabled()`` (default on; ``FACTORGRAPH_KERNELS=0`` in the environment or ``set_enabled(False)``
turns them off, which runs the NumPy reference instead).
"""

import contextlib
import os

import numpy as np

from factorgraph import guards
from factorgraph.backend import get_array_module, to_device

_ENABLED = os.environ.get("FACTORGRAPH_KERNELS", "1") != "0"


def enabled():
    """True when layers should call the compiled CPU kernels."""
    return _ENABLED


def set_enabled(flag):
    """Switch the compiled CPU kernels on or off (returns the previous setting)."""
    global _ENABLED
    prev, _ENABLED = _ENABLED, bool(flag)
    return prev


_MODULES = {}
_THREADED = False
_POOLS = None  # threadpoolctl's controller, made once: each threadpool_limits() scans every loaded library


def _blas_limit(threads):
    """A context that limits the BLAS thread pools to ``threads`` (threadpoolctl's controllers of the BLAS
    libraries, found once; their own ``limit()`` collected every library's info on each entry, about 9 us
    per sweep)."""
    global _POOLS
    if _POOLS is None:
        import scipy.linalg.cython_blas  # noqa: F401  the BLAS of Numba's np.dot (chunk_cpu), a second library
        from threadpoolctl import ThreadpoolController

        _POOLS = ThreadpoolController().select(user_api="blas")
    libs = getattr(_POOLS, "lib_controllers", None)
    if libs is None:
        return _POOLS.limit(limits=threads, user_api="blas")
    return _set_threads(libs, threads)


@contextlib.contextmanager
def _set_threads(libs, threads):
    """Set each library's thread count to ``threads`` for the block, then back to what it was."""
    before = [lib.get_num_threads() for lib in libs]
    for lib, n in zip(libs, before):
        if n is not None:
            lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(libs, before):
            if n is not None:
                lib.set_num_threads(n)


@contextlib.contextmanager
def threaded(blas_threads=None):
    """Inside the block, elementwise CPU kernels over many units (LeakyReLU moment matching and
    messages, argmax probabilities) run on all Numba threads.  Prediction uses it, and the batched
    (``schedules.Parallel``) sweeps with ``blas_threads=1``: BLAS threads that spin between the chunk's
    matrix products and Numba's threads contend for the same cores (threading the kernels next to
    multi-threaded BLAS doubled a sweep's time on 2 cores; with BLAS on one thread it saved 10-25 %).
    ``blas_threads`` limits the BLAS thread pools for the block (threadpoolctl): NumPy's and SciPy's, which
    Numba's ``np.dot`` calls from inside the threaded chunk kernels (:mod:`factorgraph.kernels.chunk_cpu`)."""
    global _THREADED
    prev, _THREADED = _THREADED, True
    limits = contextlib.nullcontext() if blas_threads is None else _blas_limit(blas_threads)
    try:
        with limits:
            yield
    finally:
        _THREADED = prev


def use_threads(n, minimum):
    """True inside :func:`threaded` for at least ``minimum`` units (starting threads costs ~4 us)."""
    return _THREADED and n >= minimum


def module(array, name):
    """The kernel module ``<name>_cpu`` for a NumPy array (when :func:`enabled`), ``<name>_cuda`` for a
    device array, or ``None`` (use the NumPy reference).  Imported once (CUDA modules lazily)."""
    cpu = type(array) is np.ndarray
    if cpu and not _ENABLED:
        return None
    mod = _MODULES.get((name, cpu))  # (a tuple key: this runs several times per chunk)
    if mod is None:
        import importlib

        path = f"factorgraph.kernels.{name}_{'cpu' if cpu else 'cuda'}"
        mod = _MODULES[(name, cpu)] = importlib.import_module(path)
    return mod


_INDEX = [None, None]  # the last host index array given to device_index and its device copy


def device_index(idx, xp):
    """The int64 index array ``idx`` (a host array) in array module ``xp``.  On a device the copy of the last
    one is kept: every layer of a chunk indexes its caches with the same array, copied once."""
    if xp is np:
        return np.asarray(idx, np.int64)
    if _INDEX[0] is not idx:
        _INDEX[0], _INDEX[1] = idx, xp.asarray(np.asarray(idx, np.int64))
    return _INDEX[1]


class GuardCounts:
    """Guard counters of one layer's kernels.

    On the CPU one NumPy array, flushed into :mod:`factorgraph.guards` after every kernel call (so an
    improper division raises at once); on a device the shared :func:`factorgraph.guards.device_counts` of
    these names, which :func:`factorgraph.guards.flush` reads after each ``train_batch`` and ``predict``, so
    no host round-trip happens per example.
    """

    def __init__(self, names):
        self.names = names
        self._cpu = None

    def array(self, like):
        if type(like) is not np.ndarray:
            return guards.device_counts(self.names, get_array_module(like))
        if self._cpu is None:
            self._cpu = np.zeros(len(self.names), np.int64)
        return self._cpu

    def after_call(self, like):
        if type(like) is np.ndarray:
            self.flush()

    def flush(self):
        """Record the CPU counts (device counts are read by :func:`factorgraph.guards.flush`)."""
        if self._cpu is not None and np.count_nonzero(self._cpu):
            host = self._cpu.copy()  # a copy: the array is zeroed before recording, which may raise
            self._cpu[...] = 0
            record_counts(host, self.names)


def argmax_probs(m, beta2):
    """Argmax probabilities over the last axis of ``m`` by the compiled kernel of its device (the
    reference :func:`factorgraph.equations.argmax_probs` when kernels are off)."""
    mod = module(m.tau, "signals")
    if mod is None:
        from factorgraph.equations import argmax_probs as reference

        return reference(m, beta2)
    xp = get_array_module(m.tau)
    C = m.shape[-1]
    tau = xp.ascontiguousarray(m.tau).reshape(-1, C)
    rho = xp.ascontiguousarray(m.rho).reshape(-1, C)
    out = xp.empty(tau.shape, m.dtype)
    mod.argmax_probs(tau, rho, beta2, out)
    return out.reshape(m.shape)


def maxpool_predict(m, k, beta2):
    """Max-pool prediction of images ``m`` (N, H, W, C) over k x k windows (stride k) by the fused kernel
    of its device: argmax probabilities of each window, then their weighted sum (S1).  ``None`` where no
    kernel takes it (kernels off, or a window larger than the device kernel's scratch)."""
    mod = module(m.tau, "pool")
    if mod is None or k * k > mod.MAX_POOL_WINDOW or m.tau.ndim != 4:
        return None
    from factorgraph.gaussian import Gaussian

    xp = get_array_module(m.tau)
    N, H, W, C = m.shape
    out_t, out_r = xp.empty((N, H // k, W // k, C), m.dtype), xp.empty((N, H // k, W // k, C), m.dtype)
    mod.maxpool_predict(xp.ascontiguousarray(m.tau), xp.ascontiguousarray(m.rho), k, beta2, out_t, out_r)
    return Gaussian(out_t, out_r)


def leaky_moment_match(m, slope):
    """Moment-matched LeakyReLU output of ``m`` by the compiled kernel of its device (the reference
    :func:`factorgraph.equations.leaky_forward_moment_match` when kernels are off)."""
    mod = module(m.tau, "leaky")
    if mod is None:
        from factorgraph.equations import leaky_forward_moment_match as reference

        return reference(m, slope)
    from factorgraph.gaussian import Gaussian

    xp = get_array_module(m.tau)
    out = Gaussian(xp.empty(m.shape, m.dtype), xp.empty(m.shape, m.dtype))
    counts = xp.zeros(5, np.int64)
    mod.leaky_fwd_moment_match(xp.ascontiguousarray(m.tau).reshape(-1), xp.ascontiguousarray(m.rho).reshape(-1), slope,
                               out.tau.reshape(-1), out.rho.reshape(-1), counts)
    from factorgraph.kernels.leaky_cpu import GUARD_NAMES

    record_counts(to_device(counts, "cpu"), GUARD_NAMES)
    return out


def record_counts(counts, names):
    """Add a kernel's guard counters to :mod:`factorgraph.guards`; raise on an improper division."""
    for name, n in zip(names, counts):
        if n:
            if name == "improper_division":
                raise guards.ImproperMessageError(f"division gave negative precision in {n} element(s)")
            guards.record(name, int(n))
