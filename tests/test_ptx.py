"""Every CUDA kernel compiles to PTX for sm_90 (no GPU needed; needs numba-cuda's NVVM)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_every_cuda_kernel_compiles_to_ptx_for_sm90():
    pytest.importorskip("numba_cuda", reason="numba-cuda[cu13] not installed")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    script = Path(__file__).with_name("compile_ptx.py")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "64 kernels compiled" in out.stdout, out.stdout[-2000:]
