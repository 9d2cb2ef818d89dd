"""Time per example-pass (forward_pass + backward_pass of one example) for a few network shapes.

Reports the median over repeats of the mean time per example in one ``train_batch`` sweep, with the
compiled CPU kernels and with the NumPy reference, side by side in one run.

    python examples/benchmark_passes.py                 # 784-100-10 (batch 320) and 1-16-16-1 (batch 200)
    python examples/benchmark_passes.py --repeats 5
"""

import argparse
import statistics
import time

import numpy as np

from factorgraph import kernels
from layers import create_factor_graph

CASES = {
    "784-100-10, batch 320, Regression": (
        [(784,), ("Linear", 100), ("LeakyReLU", 0.1), ("Linear", 10), ("Regression", 0.01)], 320),
    "1-16-16-1, batch 200, Regression": (
        [(1,), ("Linear", 16), ("LeakyReLU", 0.1), ("Linear", 16), ("LeakyReLU", 0.1), ("Linear", 1),
         ("Regression", 0.05 ** 2)], 200),
}


def time_per_pass(templates, batch, use_kernels, repeats, n_examples, seed=0):
    rng = np.random.default_rng(seed)
    shape = templates[0]
    X = rng.normal(size=(batch,) + shape)
    d_out = templates[-2][1]
    Y = rng.normal(size=(batch, d_out))
    prev = kernels.set_enabled(use_kernels)
    try:
        fg = create_factor_graph(templates, batch_size=batch, seed=seed)
        fg.train_batch(X[:2], Y[:2], 1)  # compile / warm up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(n_examples):
                fg.forward_pass(X[i], i)
                fg.backward_pass(Y[i], i)
            times.append((time.perf_counter() - t0) / n_examples)
    finally:
        kernels.set_enabled(prev)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--examples", type=int, default=100, help="examples per timed sweep")
    args = p.parse_args(argv)
    print("| network | kernels [us/example] | NumPy reference [us/example] | speed-up |")
    print("|---|---|---|---|")
    for name, (templates, batch) in CASES.items():
        tk = time_per_pass(templates, batch, True, args.repeats, args.examples)
        tn = time_per_pass(templates, batch, False, args.repeats, args.examples)
        print(f"| {name} | {tk * 1e6:.0f} | {tn * 1e6:.0f} | {tn / tk:.1f}x |")


if __name__ == "__main__":
    main()
