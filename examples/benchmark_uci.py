"""UCI regression benchmark, PBP protocol (../shared/data/uci/README.md).

Per dataset and split: inputs and targets standardised with the training split's statistics, one hidden
layer of ``n_hidden`` units (50; Protein 100) with LeakyReLU 0.1 and a Regression head.  The noise
variance beta^2 (in standardised units) is chosen per split from a small grid by the log-likelihood on
a held-out 10 % of the training split, then the model is retrained on the whole training split.
Training: the Trainer with batch 320 and the staircase schedule 1,1,2,2,...,N,N (``--staircase``, 9).
Reported: test RMSE and mean test log-likelihood in original target units, mean +- standard error over
splits, next to the published PBP, MC-dropout and TAGI numbers.

    python examples/benchmark_uci.py                            # boston concrete energy yacht wine, all splits
    python examples/benchmark_uci.py --datasets yacht --splits 3
    python examples/benchmark_uci.py --workers 15                 # splits in parallel processes
"""

import argparse
import json
import math
import os
import time

import numpy as np

from factorgraph import datasets, metrics
from layers import create_factor_graph
from schedules import Staircase
from trainer import Trainer

PUBLISHED = {  # (RMSE, LL): PBP, MC dropout, TAGI
    "boston": ((3.01, -2.57), (2.90, -2.40), (3.15, -2.58)),
    "concrete": ((5.67, -3.16), (4.82, -2.93), (5.87, -3.20)),
    "energy": ((1.80, -2.04), (0.54, -1.21), (1.32, -1.81)),
    "kin8nm": ((0.10, 0.90), (0.08, 1.14), (0.095, 0.89)),
    "naval": ((0.01, 3.73), (0.00, 4.45), (0.007, 3.54)),
    "power": ((4.12, -2.84), (4.01, -2.80), (4.13, -2.88)),
    "protein": ((4.73, -2.97), (4.27, -2.87), (4.62, -2.95)),
    "wine": ((0.64, -0.97), (0.62, -0.93), (0.64, -0.98)),
    "yacht": ((1.02, -1.63), (0.67, -1.25), (1.04, -1.60)),
}
BETA2_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit(X, y, n_hidden, beta2, staircase, seed):
    d = X.shape[1]
    fg = create_factor_graph([(d,), ("Linear", n_hidden), ("LeakyReLU", 0.1), ("Linear", 1), ("Regression", beta2)],
                             batch_size=min(320, len(X)), seed=seed)
    Trainer(fg, X, y, progress=False).train(schedule=Staircase(staircase))
    return fg


def run_split(name, split, staircase, seed):
    data = datasets.load_uci(name, split)
    X, y = data.X_train, data.y_train
    rng = np.random.default_rng(seed + split)
    perm = rng.permutation(len(X))
    n_val = max(1, len(X) // 10)
    val, tr = perm[:n_val], perm[n_val:]
    scores = []
    for b in BETA2_GRID:
        fg = fit(X[tr], y[tr], data.n_hidden, b, staircase, seed)
        mean, var = fg.predict(X[val])
        scores.append(metrics.gaussian_nll(mean, var, y[val]))
    beta2 = BETA2_GRID[int(np.argmin(scores))]
    t0 = time.perf_counter()
    fg = fit(X, y, data.n_hidden, beta2, staircase, seed)
    dt = time.perf_counter() - t0
    mean, var = fg.predict(data.X_test)
    mean_o, var_o = data.to_original(mean, var)
    rmse = metrics.rmse(mean_o, data.y_test_orig)
    ll = -metrics.gaussian_nll(mean_o, var_o, data.y_test_orig)
    return rmse, ll, beta2, dt


def _run(job):
    return run_split(*job)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["boston", "concrete", "energy", "yacht", "wine"])
    p.add_argument("--splits", type=int, default=None, help="first k splits (default: all)")
    p.add_argument("--staircase", type=int, default=9)
    p.add_argument("--workers", type=int, default=1, help="processes running splits in parallel")
    p.add_argument("--seed", type=int, default=98)
    p.add_argument("--out", default="examples/out/uci")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows, raw = [], {}
    jobs = {}
    for name in args.datasets:
        n_splits = datasets.load_uci(name, 0).n_splits
        k = n_splits if args.splits is None else min(args.splits, n_splits)
        jobs[name] = [(name, s, args.staircase, args.seed) for s in range(k)]
    flat = [j for js in jobs.values() for j in js]
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_run, flat))
    else:
        results = [_run(j) for j in flat]
    by_job = dict(zip(flat, results))
    for name in args.datasets:
        k = len(jobs[name])
        res = [by_job[j] for j in jobs[name]]
        r = np.array([x[0] for x in res])
        ll = np.array([x[1] for x in res])
        se = lambda v: v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")  # noqa: E731
        pbp, mcd, tagi = PUBLISHED[datasets._uci_name(name)]
        rows.append(f"| {name} | {k} | {r.mean():.3f} +- {se(r):.3f} | {ll.mean():.3f} +- {se(ll):.3f} | "
                    f"{pbp[0]}; {pbp[1]} | {mcd[0]}; {mcd[1]} | {tagi[0]}; {tagi[1]} | "
                    f"{np.mean([x[3] for x in res]):.1f} |")
        raw[name] = res
        print(rows[-1], flush=True)
    table = ("| dataset | splits | ours RMSE | ours test LL | PBP RMSE; LL | MC dropout | TAGI | train time/split [s] |\n"
             "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(raw, f, indent=1)
    print("\n" + table)


if __name__ == "__main__":
    main()
