"""Within-batch schedules on Fashion-MNIST: sequential (the thesis) against parallel chunks.

Trains the MLP 784-256-256-10 with an R-MP head (Regression 0.01) on the first n training images as one
batch for ``--its`` sweeps with each schedule, and reports test accuracy, NLL, ECE (argmax mapping) and
wall time.  ``Chunked(c, d)``: chunks of c examples send messages from the same marginals, damped by d.

    python examples/schedules_experiment.py                       # n = 640, 10 sweeps
    python examples/schedules_experiment.py --n 640 --its 20 --chunks 1 8 32 640 --damping 0.5 0.2
"""

import argparse
import time

import numpy as np

from factorgraph import datasets
from layers import create_factor_graph
from schedules import Chunked, Shuffled

MLP = [(784,), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 10),
       ("Regression", 0.01)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--its", type=int, default=10)
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 32, 640])
    p.add_argument("--damping", type=float, nargs="+", default=[0.5, 0.2])
    p.add_argument("--seed", type=int, default=98)
    args = p.parse_args(argv)
    d = datasets.load_fashion_mnist(n_train=args.n, seed=args.seed)
    mean, std = d.X_train.mean(), d.X_train.std(ddof=1)
    Xtr = ((d.X_train - mean) / std).reshape(args.n, 784)
    Xte = ((d.X_test[:2000] - mean) / std).reshape(2000, 784)
    Ytr = np.eye(10)[d.y_train]
    orders = [Shuffled()] + [Chunked(c, dmp) for c in args.chunks for dmp in args.damping]
    print(f"| schedule (n = {args.n}, {args.its} sweeps) | acc | NLL | ECE15 | time [s] |\n|---|---|---|---|---|")
    for order in orders:
        fg = create_factor_graph(MLP, batch_size=args.n, seed=args.seed)
        t0 = time.perf_counter()
        try:
            fg.train_batch(Xtr, Ytr, args.its, order=order)
            r = fg.evaluate(Xte, d.y_test[:2000])
            row = f"{r['accuracy']:.3f} | {r['nll']:.3f} | {r['ece']:.3f}"
        except (ArithmeticError, ValueError) as e:  # a diverging schedule
            row = f"failed: {type(e).__name__} | | "
        print(f"| {order} | {row} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
