"""Shared test fixtures: dtype tolerances and the per-equation random-case counter.

Every oracle test reports how many random cases it checked through ``record_cases(name, n)``; the
terminal summary prints the totals per equation so a run shows the coverage of each formula.
"""

import collections
import os

# CUDA kernels run in Numba's simulator unless a real GPU run is asked for; must be set before
# numba.cuda is first imported.
if os.environ.get("FACTORGRAPH_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import settings

from factorgraph import guards

# property tests draw the same examples on every run, so that CI's result is reproducible;
# ``pytest --hypothesis-profile explore`` draws new ones (it found the lower-tail cancellation that
# ``relu_moments`` had)
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

_CASES = collections.Counter()

#: relative tolerances per dtype for comparisons against oracles
RTOL = {np.float64: 1e-8, np.float32: 2e-3}


@pytest.fixture
def record_cases():
    """Call ``record_cases("s1_backward_to_b", n)`` after checking n random cases of an equation."""

    def _record(name, n):
        _CASES[name] += int(n)

    return _record


@pytest.fixture(autouse=True)
def _reset_guards():
    guards.reset()
    yield


@pytest.fixture(params=[np.float64, np.float32], ids=["f64", "f32"])
def dtype(request):
    return request.param


def pytest_terminal_summary(terminalreporter):
    if not _CASES:
        return
    terminalreporter.section("random cases checked per equation")
    for name in sorted(_CASES):
        terminalreporter.write_line(f"{name:40s} {_CASES[name]:8d}")
