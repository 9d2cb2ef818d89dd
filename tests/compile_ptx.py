"""Compile every Numba CUDA kernel of the library to PTX for sm_90, for float64 and float32.

Run as a script (a separate process: the CUDA simulator must be off).  Needs ``numba-cuda[cu13]`` (NVVM
from PyPI) but no GPU: device functions are compiled for the requested capability.  Prints one line per
kernel and signature and exits non-zero on any failure.
"""

import sys

import numpy as np


def main():
    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    class _Sm90:  # device functions ask the current device for its capability; there is none here
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: _Sm90()

    from factorgraph.kernels import (chunk_cuda, leaky_cuda, linear_cuda, patches_cuda, pool_cuda, signals_cuda,
                                     sites_cuda)

    def sig(*args):
        return tuple(numba.typeof(a) for a in args)

    n_ok = 0
    for dt in (np.float64, np.float32):
        v, m = np.zeros(3, dt), np.zeros((3, 2), dt)
        i64, c = np.zeros(3, np.int64), np.zeros(7, np.int64)
        s = dt(0.1)
        img, win = np.zeros((1, 4, 4, 2), dt), np.zeros((1, 2, 2, 2), dt)
        specs = {
            linear_cuda.KERNELS["linear_const_fwd"]: sig(v, m, m, m, m, v, v, v, v, v, v, c),
            linear_cuda.KERNELS["linear_s1_rows"]: sig(v, m, m, m, m, m, m, s, v, v, v, v, c),
            linear_cuda.KERNELS["linear_var_input"]: sig(v, v, v, v, v, v, c),
            linear_cuda.KERNELS["linear_var_fwd"]: sig(v, v, m, m, v, v, v, v, v, v, c),
            linear_cuda.KERNELS["linear_var_to_x"]: sig(v, v, m, m, v, v, v, v, v, v, c),
            linear_cuda.KERNELS["linear_s2_weights"]: sig(v, v, m, m, m, m, m, m, s, v, v, v, v, c),
            leaky_cuda.KERNELS["leaky_moment_match"]: sig(v, v, s, v, v, c),
            leaky_cuda.KERNELS["leaky_fwd_marginal"]: sig(v, v, v, v, s, v, v, c),
            leaky_cuda.KERNELS["leaky_bwd_marginal"]: sig(v, v, v, v, s, v, v, c),
            leaky_cuda.KERNELS["leaky_fwd_marginal_slots"]: sig(v, v, v, v, v, v, i64, 3, s, v, v, c),
            leaky_cuda.KERNELS["leaky_bwd_marginal_slots"]: sig(v, v, v, v, v, v, i64, 3, s, v, v, c),
            patches_cuda.KERNELS["patches_s1_to_b"]: sig(m, m, m, m, m, m, m, m, m, c),
            patches_cuda.KERNELS["patches_s2_to_b"]: sig(m, m, m, m, m, m, m, m, m, m, c),
            patches_cuda.KERNELS["patches_s2_to_a"]: sig(m, m, m, m, m, m, m, m, m, m),
            patches_cuda.KERNELS["fold"]: sig(m, m, i64, i64, m, m),
            patches_cuda.KERNELS["gather"]: sig(m, np.zeros((3, 2), np.int64), s, np.zeros((3, 3, 2), dt)),
            signals_cuda.KERNELS["argmax_bwd"]: sig(m, m, i64, s, s, True, m, m, c),
            signals_cuda.KERNELS["softmax_bwd"]: sig(m, m, i64, np.zeros(12), np.zeros(12), m, m, c),
            signals_cuda.KERNELS["argmax_probs"]: sig(m, m, s, m),
            sites_cuda.KERNELS["replace_site"]: sig(v, v, v, v, v, v, s, s, i64),
            sites_cuda.KERNELS["cavity_moments"]: sig(v, v, v, v, s, s, s, s, v, v, v, v, i64),
            sites_cuda.KERNELS["marginal_check"]: sig(v, v, v, v, 3.0, np.zeros((2, 3)), 1),
            chunk_cuda.KERNELS["chunk_cavity"]: sig(v, v, v, v, s, s, s, s, v, v, c),
            chunk_cuda.KERNELS["chunk_marginal"]: sig(v, v, s, s, s, v, v, v, v),
            chunk_cuda.KERNELS["chunk_replace"]: sig(*(v,) * 10, 2, s, s, True, True, c),
            chunk_cuda.KERNELS["chunk_input_marginal"]: sig(m, m, m, m, i64, s, s, s, s, m, m, m, m, c),
            chunk_cuda.KERNELS["chunk_store_inputs"]: sig(m, m, m, m, s, s, s, m, m, m, m, i64, c),
            chunk_cuda.KERNELS["chunk_add_bias"]: sig(m, m, v, v, s, m, m),
            chunk_cuda.KERNELS["chunk_gh_bias"]: sig(m, m, m, m, v, v, s, m, m, m, c),
            chunk_cuda.KERNELS["chunk_add_product"]: sig(m, m, m),
            pool_cuda.KERNELS["maxpool_fwd"]: sig(img, img, 2, s, win, win, img, True),
            pool_cuda.KERNELS["maxpool_bwd"]: sig(img, img, img, win, win, win, win, 2, img, img, c),
        }
        for kernel, types in specs.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, types, cc=(9, 0))
            assert ".target sm_90" in ptx, kernel.py_func.__name__
            print(f"PTX ok  sm_90  {np.dtype(dt).name:8s} {kernel.py_func.__name__:16s} {len(ptx):7d} chars")
            n_ok += 1
    print(f"{n_ok} kernels compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
