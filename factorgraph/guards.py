"""Counters for guardrails and fallbacks.

Every clamp or fallback in the equation library records how many elements it touched, under a stable
name.  Nothing is ever silently turned into NaN or silently repaired: read ``counts()`` after a run.

>>> from factorgraph import guards
>>> guards.reset()
>>> guards.counts()
{}
"""

from collections import Counter

_COUNTS = Counter()


def record(name, mask_or_count):
    """Add the number of elements where a guard fired (a boolean mask or an int) to counter ``name``."""
    if isinstance(mask_or_count, (int,)):
        n = mask_or_count
    else:
        n = int(mask_or_count.sum())
    if n:
        _COUNTS[name] += n
    return n


def counts():
    """Return a dict ``{guard name: number of elements it fired on}`` since the last reset."""
    return dict(_COUNTS)


def get(name):
    """Return how often guard ``name`` fired since the last reset."""
    return _COUNTS.get(name, 0)


def reset():
    """Set all counters to zero."""
    _COUNTS.clear()


class ImproperMessageError(ArithmeticError):
    """A message operation would produce a negative precision beyond its tolerance."""
