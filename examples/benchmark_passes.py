"""Time per example-pass (forward + backward of one example) for a few network shapes.

Times one forward and one backward pass per example over ``--examples`` examples (the inner loop of
``train_batch``, without its input validation and without the exact marginal recompute that ends a
sweep) and reports the median over ``--repeats`` of the time per example, for each engine in one run:
the NumPy reference, the compiled CPU kernels and, with ``--cuda``, the GPU (synchronised at the end).

    python examples/benchmark_passes.py
    python examples/benchmark_passes.py --cuda --examples 320
"""

import argparse
import statistics
import time

import numpy as np

from factorgraph import kernels
from layers import create_factor_graph

CASES = {
    "784-100-10, batch 320": ([(784,), ("Linear", 100), ("LeakyReLU", 0.1), ("Linear", 10), ("Regression", 0.01)],
                              320),
    "1-16-16-1, batch 200": ([(1,), ("Linear", 16), ("LeakyReLU", 0.1), ("Linear", 16), ("LeakyReLU", 0.1),
                              ("Linear", 1), ("Regression", 0.05 ** 2)], 200),
    "784-256-256-10, batch 320": ([(784,), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 256),
                                   ("LeakyReLU", 0.1), ("Linear", 10), ("Regression", 0.01)], 320),
    "LeNet-5, batch 320": ([(28, 28, 1), ("Conv", 6, 5, {"padding": 2}), ("LeakyReLU", 0.1), ("MaxPool", 2),
                            ("Conv", 16, 5), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Flatten",), ("Linear", 120),
                            ("LeakyReLU", 0.1), ("Linear", 84), ("LeakyReLU", 0.1), ("Linear", 10),
                            ("Regression", 0.01)], 320),
}
# the thesis conv layer shape (input 28x28x4, output 24x24x8, kernel 5) as a hidden (variable-input) layer:
# a 1x1 first conv makes the 4 input channels variables
CASES["conv 28x28x4 -> 24x24x8 k5 (hidden), batch 320"] = (
    [(28, 28, 1), ("Conv", 4, 1), ("Conv", 8, 5), ("Flatten",), ("Linear", 10), ("Regression", 0.01)], 320)


def time_per_pass(templates, batch, engine, repeats, n_examples, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_examples,) + templates[0])
    Y = rng.normal(size=(n_examples, templates[-2][1]))
    prev = kernels.set_enabled(engine != "numpy")
    try:
        fg = create_factor_graph(templates, batch_size=batch, seed=seed)
        if engine == "cuda":
            fg.to("cuda")
        fg.train_batch(X[:2], Y[:2], 1)  # compile / warm up
        xp = fg._xp()
        Xd, Yd = xp.asarray(X), xp.asarray(Y)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(n_examples):
                fg._forward(Xd[i], i)
                fg._backward(Yd[i], i)
            fg._flush_guards()  # reads the device's guard counters: a sync on the GPU
            times.append((time.perf_counter() - t0) / n_examples)
    finally:
        kernels.set_enabled(prev)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--examples", type=int, default=64, help="examples per timed sweep")
    p.add_argument("--cuda", action="store_true", help="also time the GPU path (needs cupy and a GPU)")
    p.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy reference")
    p.add_argument("--cases", nargs="*", default=None, help="substrings selecting cases")
    args = p.parse_args(argv)
    engines = (["numpy"] if not args.no_numpy else []) + ["kernels"] + (["cuda"] if args.cuda else [])
    print("| network | " + " | ".join(f"{e} [us/example]" for e in engines) + " |")
    print("|---|" + "---|" * len(engines))
    for name, (templates, batch) in CASES.items():
        if args.cases and not any(c in name for c in args.cases):
            continue
        ts = [time_per_pass(templates, batch, e, args.repeats, args.examples) for e in engines]
        print(f"| {name} | " + " | ".join(f"{t * 1e6:.0f}" for t in ts) + " |", flush=True)


if __name__ == "__main__":
    main()
