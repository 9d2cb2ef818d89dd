"""The thesis 1-D toy study (SPEC 10.3): fit, depth, width and out-of-distribution coverage.

    g(x) = 0.5 x + 0.2 sin(2 pi x) + 0.3 sin(4 pi x),   y = g(x) + N(0, 0.05^2)

Studies (each writes a PNG of the predictive mean with 1/2/3-sigma bands):

* depth: 250 points (200 train) on [0, 2), width 16, 1..5 hidden blocks, 500 iterations of
  ``train_batch`` (one batch), beta^2 = 0.05^2, seeds 98 and 1293;
* width: 100 points (80 train) on [0, 1), one hidden layer of width 4/16/32/64/128;
* ood: points on [-0.5, 0.5), 1-32-32-1 trained by the Trainer (1 epoch x 500 iterations, B = 200) over
  several seeds; on a grid from min-20 to max+20 the z-score ``z = Phi(g(x); predictive)`` gives the
  1/2/3-sigma coverage (z in (0.16, 0.84), (0.025, 0.975), (0.0015, 0.9985)); the table reports the
  median over x < -10 and x > 10 of the per-x coverage across seeds, next to the thesis figures.

Usage::

    python examples/regression_1d.py                 # all studies, defaults below
    python examples/regression_1d.py --study ood --seeds 20 --its 500
"""

import argparse
import os
import time

import numpy as np
from scipy.stats import norm

from layers import create_factor_graph
from trainer import Trainer

BETA2 = 0.05 ** 2
THESIS_COVERAGE = {"x < -10": (55, 83, 98), "x > 10": (43, 74, 94)}
SIGMA_INTERVALS = ((0.16, 0.84), (0.025, 0.975), (0.0015, 0.9985))


def g(x):
    return 0.5 * x + 0.2 * np.sin(2 * np.pi * x) + 0.3 * np.sin(4 * np.pi * x)


def make_data(n, stretch, offset, seed):
    """Draw ``n`` points x = stretch * U[0, 1) + offset, keep 80 % for training (SPEC 10.3)."""
    rng = np.random.default_rng(seed)
    x = stretch * rng.random((n, 1)) + offset
    y = g(x) + 0.05 * rng.normal(size=x.shape)
    k = int(0.8 * n)
    return (x[:k], y[:k]), (x[k:], y[k:])


def mlp(width, blocks):
    t = [(1,), ("Linear", width), ("LeakyReLU", 0.1)]
    for _ in range(blocks - 1):
        t += [("Linear", width), ("LeakyReLU", 0.1)]
    return t + [("Linear", 1), ("Regression", BETA2)]


def plot_bands(ax, fg, train, lo, hi, title):
    grid = np.linspace(lo, hi, 400)[:, None]
    mean, var = fg.predict(grid)
    mean, sd = mean[:, 0], np.sqrt(var[:, 0])
    for k, alpha in ((3, 0.12), (2, 0.2), (1, 0.3)):
        ax.fill_between(grid[:, 0], mean - k * sd, mean + k * sd, color="tab:blue", alpha=alpha, lw=0,
                        label=f"{k} sigma")
    ax.plot(grid[:, 0], g(grid[:, 0]), "k--", lw=1, label="g(x)")
    ax.plot(grid[:, 0], mean, "tab:blue", lw=1.5, label="mean")
    ax.scatter(train[0][:, 0], train[1][:, 0], s=4, c="tab:red", label="train")
    ax.set_title(title, fontsize=9)


def study_depth(out, its, seeds, plt):
    rows = []
    fig, axes = plt.subplots(len(seeds), 5, figsize=(18, 3.2 * len(seeds)), squeeze=False)
    for r, seed in enumerate(seeds):
        train, test = make_data(250, 2.0, 0.0, seed)
        for c, blocks in enumerate(range(1, 6)):
            fg = create_factor_graph(mlp(16, blocks), batch_size=len(train[0]), seed=seed)
            t0 = time.perf_counter()
            fg.train_batch(*train, its)
            dt = time.perf_counter() - t0
            tr, te = fg.evaluate(*train), fg.evaluate(*test)
            rows.append((seed, blocks, tr["rmse"], te["rmse"], te["nll"], dt))
            plot_bands(axes[r, c], fg, train, -1, 3, f"seed {seed}, {blocks} hidden, test RMSE {te['rmse']:.3f}")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "depth.png"), dpi=110)
    plt.close(fig)
    print("\nDepth study (width 16, 200 train points, %d iterations)" % its)
    print("seed  hidden  train RMSE  test RMSE  test NLL  time [s]")
    for s, b, a, e, nll, dt in rows:
        print(f"{s:5d}  {b:6d}  {a:10.4f}  {e:9.4f}  {nll:8.3f}  {dt:8.1f}")
    return rows


def study_width(out, its, seed, plt):
    rows = []
    widths = (4, 16, 32, 64, 128)
    fig, axes = plt.subplots(1, len(widths), figsize=(18, 3.2), squeeze=False)
    train, test = make_data(100, 1.0, 0.0, seed)
    for c, width in enumerate(widths):
        fg = create_factor_graph(mlp(width, 1), batch_size=len(train[0]), seed=seed)
        t0 = time.perf_counter()
        fg.train_batch(*train, its)
        dt = time.perf_counter() - t0
        tr, te = fg.evaluate(*train), fg.evaluate(*test)
        rows.append((width, tr["rmse"], te["rmse"], te["nll"], dt))
        plot_bands(axes[0, c], fg, train, -0.5, 1.5, f"width {width}, test RMSE {te['rmse']:.3f}")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "width.png"), dpi=110)
    plt.close(fig)
    print(f"\nWidth study (one hidden layer, 80 train points, {its} iterations, seed {seed})")
    print("width  train RMSE  test RMSE  test NLL  time [s]")
    for w, a, e, nll, dt in rows:
        print(f"{w:5d}  {a:10.4f}  {e:9.4f}  {nll:8.3f}  {dt:8.1f}")
    return rows


def ood_coverage(fg, grid):
    """Per grid point, which of the 1/2/3-sigma intervals contain g(x) (booleans, shape (len(grid), 3))."""
    mean, var = fg.predict(grid[:, None])
    z = norm.cdf(g(grid), loc=mean[:, 0], scale=np.sqrt(var[:, 0]))
    return np.stack([(lo < z) & (z < hi) for lo, hi in SIGMA_INTERVALS], axis=1)


def study_ood(out, its, seeds, plt):
    hits, last = [], None
    lo, hi = -0.5, 0.5
    grid = np.arange(lo - 20, hi + 20 + 1e-9, 0.05)
    t0 = time.perf_counter()
    for seed in seeds:
        train, _ = make_data(250, 1.0, -0.5, seed)
        fg = create_factor_graph(mlp(32, 2), batch_size=200, seed=seed)
        Trainer(fg, *train, progress=False).train(num_epochs=1, num_training_its=its)
        hits.append(ood_coverage(fg, grid))
        last = (fg, train)
    dt = time.perf_counter() - t0
    cover = np.mean(hits, axis=0)  # fraction of seeds, per grid point and interval
    table = {}
    for name, mask in (("x < -10", grid < -10), ("x > 10", grid > 10)):
        table[name] = tuple(100 * np.median(cover[mask], axis=0))
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    plot_bands(axes[0], last[0], last[1], lo - 20, hi + 20, f"1-32-32-1, seed {seeds[-1]}")
    axes[0].set_ylim(-25, 25)
    for k in range(3):
        axes[1].plot(grid, 100 * cover[:, k], label=f"{k + 1} sigma")
    axes[1].set_xlabel("x")
    axes[1].set_ylabel(f"coverage over {len(seeds)} seeds [%]")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ood.png"), dpi=110)
    plt.close(fig)
    print(f"\nOOD coverage (1-32-32-1, {len(seeds)} seeds, {its} iterations, {dt:.0f} s)")
    print("region     ours 1/2/3 sigma [%]    thesis 1/2/3 sigma [%]")
    for name, (a, b, c) in table.items():
        t = THESIS_COVERAGE[name]
        print(f"{name:9s}  {a:5.0f} {b:5.0f} {c:5.0f}          {t[0]:5d} {t[1]:5d} {t[2]:5d}")
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=("all", "depth", "width", "ood"), default="all")
    p.add_argument("--its", type=int, default=500, help="message-passing iterations (thesis: 500)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds of the OOD study (thesis: 100)")
    p.add_argument("--out", default="examples/out/regression_1d", help="directory for the PNG plots")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    if args.study in ("all", "depth"):
        study_depth(args.out, args.its, (98, 1293), plt)
    if args.study in ("all", "width"):
        study_width(args.out, args.its, 98, plt)
    if args.study in ("all", "ood"):
        study_ood(args.out, args.its, list(range(1, args.seeds + 1)), plt)
    print(f"\nplots written to {args.out}/")


if __name__ == "__main__":
    main()
