"""Counters for guardrails and fallbacks.

Every clamp or fallback in the equation library records how many elements it touched, under a stable
name.  Nothing is ever silently turned into NaN or silently repaired: read ``counts()`` after a run.

>>> from factorgraph import guards
>>> guards.reset()
>>> guards.counts()
{}
"""

from collections import Counter

import numpy as np

_COUNTS = Counter()
_DEFERRED = []  # (name, 0-d device array): counts of GPU masks, summed on the device, not yet read
_DEVICE = {}  # (array module, names) -> int64 array of counters that kernels add to, read and zeroed by flush


def record(name, mask_or_count):
    """Add the number of elements where a guard fired (a boolean mask or an int) to counter ``name``.

    A NumPy mask is counted at once (returns the count).  A device (CuPy) array, a mask or counts, is
    summed on the device and read at the next :func:`flush` (the graph flushes after every
    ``train_batch`` and ``predict``; :func:`counts` and :func:`get` flush first), so no host round-trip
    happens per call; returns ``None`` then."""
    if isinstance(mask_or_count, (int, np.integer)):
        n = int(mask_or_count)
    elif isinstance(mask_or_count, (np.ndarray, np.generic)):  # NumPy arrays and scalars (np.bool_)
        # a mask is counted without np.sum's Python-level dispatch (guards run several times per chunk)
        n = int(np.count_nonzero(mask_or_count) if mask_or_count.dtype == np.bool_ else np.sum(mask_or_count))
    else:
        _DEFERRED.append((name, mask_or_count.sum(dtype=np.int64)))
        return None
    if n:
        _COUNTS[name] += n
    return n


def fired(name, mask):
    """:func:`record` ``mask`` under ``name`` and say whether the caller must apply its fix: on the CPU
    whether any element fired; on a device always ``True`` (knowing would cost a host round-trip), so
    the fix must leave the elements where the mask is ``False`` unchanged."""
    n = record(name, mask)
    return True if n is None else n > 0


#: device counts under these names raise :class:`ImproperMessageError` when read (an improper division the
#: CPU refuses at once)
FATAL = ("improper_division",)


def device_counts(names, xp):
    """The counters of ``names`` (a tuple) as one int64 array of module ``xp`` (CuPy on the GPU), made once:
    kernels add to it (atomics) and :func:`flush` reads and zeroes it, so a kernel's guards cost no
    operation per call."""
    key = (xp.__name__, names)
    arr = _DEVICE.get(key)
    if arr is None:
        arr = _DEVICE[key] = xp.zeros(len(names), np.int64)
    return arr


def flush():
    """Read the counts of device masks and the :func:`device_counts` into the counters (one transfer per
    array module), zeroing the latter; raise :class:`ImproperMessageError` where a :data:`FATAL` count is
    non-zero."""
    if not _DEFERRED and not _DEVICE:
        return
    from factorgraph.backend import get_array_module, to_device

    parts = {}  # array module -> ([names], [1-d arrays])
    for (_, names), arr in _DEVICE.items():
        part = parts.setdefault(get_array_module(arr), ([], []))
        part[0].extend(names)
        part[1].append(arr)
    for name, value in _DEFERRED:
        part = parts.setdefault(get_array_module(value), ([], []))
        part[0].append(name)
        part[1].append(value.reshape(1))
    _DEFERRED.clear()
    fatal = 0
    for xp, (names, arrays) in parts.items():
        values = to_device(xp.concatenate(arrays), "cpu")
        for name, n in zip(names, values):
            if n:
                _COUNTS[name] += int(n)
                fatal += int(n) if name in FATAL else 0
    for arr in _DEVICE.values():
        arr[...] = 0
    if fatal:
        raise ImproperMessageError(f"division would give negative precision in {fatal} element(s) beyond "
                                   "tolerance (counted on the device)")


def counts():
    """Return a dict ``{guard name: number of elements it fired on}`` since the last reset."""
    flush()
    return dict(_COUNTS)


def get(name):
    """Return how often guard ``name`` fired since the last reset."""
    flush()
    return _COUNTS.get(name, 0)


def reset():
    """Set all counters to zero."""
    _DEFERRED.clear()
    _COUNTS.clear()
    for arr in _DEVICE.values():
        arr[...] = 0


class ImproperMessageError(ArithmeticError):
    """A message operation would produce a negative precision beyond its tolerance."""
