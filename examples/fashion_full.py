"""Full Fashion-MNIST (60 000 training images) with a batched schedule, next to PyTorch Adam.

Trains the MLP 784-256-256-10 (R-MP head, batch 320) with ``--order`` (default ``Parallel(32, 0.5)``) and
the staircase epoch schedule ``Staircase(--staircase)``, then PyTorch Adam (lr 1e-3, batch 64,
``--adam-epochs`` epochs) on the same data in the same run; reports test accuracy, NLL, ECE15 and OOD
AUROC on the 10 000 test images and both training times.

    python examples/fashion_full.py --order "Parallel(32, 0.5)" --staircase 2 --adam-epochs 10
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from schedules_experiment import ARCH  # noqa: E402

from factorgraph import datasets, metrics  # noqa: E402
from layers import create_factor_graph  # noqa: E402
from schedules import Chains, Parallel, Shuffled, Staircase  # noqa: E402,F401 (used by eval)
from trainer import Trainer  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--order", default="Parallel(32, 0.5)")
    p.add_argument("--staircase", type=int, default=2)
    p.add_argument("--adam-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=98)
    args = p.parse_args(argv)
    d = datasets.load_fashion_mnist(seed=args.seed)
    Xtr, ytr = d.X_train[:args.n], d.y_train[:args.n]
    mean, std = float(Xtr.mean()), float(Xtr.std(ddof=1))
    prep = lambda x: ((x - mean) / std).reshape(-1, 784)  # noqa: E731
    Xtr, Xte, yte = prep(Xtr), prep(d.X_test), d.y_test
    Xd, _ = datasets.load_digits(upsample_to=28)
    Xood = ((Xd - Xd.mean()) / Xd.std(ddof=1)).reshape(-1, 784)

    fg = create_factor_graph(ARCH["mlp"] + [("Regression", 0.01)], batch_size=320, seed=args.seed)
    t0 = time.perf_counter()
    Trainer(fg, Xtr, np.eye(10)[ytr], order=eval(args.order), progress=False).train(
        schedule=Staircase(args.staircase))
    t_mp = time.perf_counter() - t0
    r = fg.evaluate(Xte, yte, X_ood=Xood)
    print(f"| method (n = {args.n}) | acc | NLL | ECE15 | OOD AUROC | train time [s] |\n|---|---|---|---|---|---|")
    print(f"| R-MP {args.order}, Staircase({args.staircase}) | {r['accuracy']:.3f} | {r['nll']:.3f} | "
          f"{r['ece']:.3f} | {r['ood_auroc']:.3f} | {t_mp:.0f} |", flush=True)

    import torch
    import torch.nn as nn

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = nn.Sequential(nn.Linear(784, 256), nn.LeakyReLU(0.1), nn.Linear(256, 256), nn.LeakyReLU(0.1),
                          nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(args.adam_epochs):
        perm = torch.randperm(len(X))
        for s in range(0, len(X), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
    t_adam = time.perf_counter() - t0
    with torch.no_grad():
        prob = lambda x: torch.softmax(model(torch.tensor(x, dtype=torch.float32)), 1).numpy().astype(float)  # noqa
        r = metrics.classification_metrics(prob(Xte), yte, prob(Xood))
    print(f"| Adam (torch), {args.adam_epochs} epochs | {r['accuracy']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | "
          f"{r['ood_auroc']:.3f} | {t_adam:.0f} |", flush=True)


if __name__ == "__main__":
    main()
