"""Within-batch schedules on Fashion-MNIST: the sequential thesis schedule against batched ones.

Trains the MLP 784-256-256-10 or LeNet-5 with an R-MP head (Regression 0.01) on the first ``--n``
training images with the Trainer (batches of ``--batch``, epochs from ``--staircase``) once per
within-batch order, and reports test accuracy, NLL, ECE15 (argmax mapping), OOD AUROC (upsampled sklearn
digits) and training wall time; ``--torch`` adds PyTorch SGD epochs of the same architecture and batch size
timed in the same run.  Orders are Python expressions over :mod:`schedules`:

* ``Shuffled()``: the thesis schedule, one example at a time;
* ``Parallel(c, d)``: chunks of ``c`` examples as matrices, chunk messages damped by ``d`` (a number, or
  one per weighted layer: ``Parallel(64, (0.125, 0.35, 0.35), max_step=1.0)``);
* ``Chunked(c, d)``: per-example messages from the marginals of the chunk start;
* ``Chains(k, d)``: ``k`` sequential chains merged after every sweep.

Options ``--warm`` (warm-start each batch's activation messages) and ``--mix`` (recombine half batches
between epochs) apply to every order given; ``--whiten EPS`` ZCA-whitens the inputs first (for every order
and for the PyTorch epochs).  Instead of training, ``--throughput`` times one sweep over one batch per order
and ``--epochs`` whole Trainer epochs of one sweep per batch (with ``--torch``: against PyTorch SGD epochs,
in ``--rounds`` alternating rounds):

    python examples/schedules_experiment.py --n 5120 --arch mlp --whiten 1.0 --dtype float32 --batch 64 \
        --epochs --torch --rounds 5 --orders "Parallel(64, 0.2, max_step=0.3)"

    python examples/schedules_experiment.py --n 5120 --arch mlp \\
        --orders "Shuffled()" "Parallel(8, 0.5)" "Parallel(32, 0.5)" "Parallel(320, 0.2)" --torch
"""

import argparse
import json
import os
import time

import numpy as np

import schedules
from benchmark_fashion import ARCH, blas_line, torch_model
from factorgraph import datasets
from layers import create_factor_graph
from schedules import Staircase
from trainer import Trainer


def _order(spec):
    """An order from its expression, e.g. ``"Parallel(32, 0.5)"`` (names from :mod:`schedules`)."""
    return schedules.parse_order(spec)


def load(n, arch, seed, whiten=None):
    """``(X_train, y_train, X_test, y_test, X_ood)``: the first ``n`` training images of the seed's order,
    5000 test images, the upsampled digits; scalar-normalised with training statistics, then ZCA-whitened
    (:class:`factorgraph.datasets.Whitening`, fitted on the training images) when ``whiten`` is its
    ``eps``."""
    d = datasets.load_fashion_mnist(seed=seed)
    Xtr, ytr = d.X_train[:n], d.y_train[:n]
    mean, std = float(Xtr.mean()), float(Xtr.std(ddof=1))
    Xd, _ = datasets.load_digits(upsample_to=28)
    Xood = (Xd - Xd.mean()) / Xd.std(ddof=1)
    prep = lambda x: ((x - mean) / std).reshape(-1, 28, 28, 1)  # noqa: E731
    out = [prep(Xtr), ytr, prep(d.X_test[:5000]), d.y_test[:5000], Xood.reshape(-1, 28, 28, 1)]
    if whiten is not None:
        w = datasets.Whitening.fit(out[0], eps=whiten)
        out[0], out[2], out[4] = w(out[0]), w(out[2]), w(out[4])
    return tuple(out)


def _graph(arch, batch, seed, dtype="float64", device="cpu"):
    return create_factor_graph([(28, 28, 1)] + ARCH[arch] + [("Regression", 0.01)], batch_size=batch, seed=seed,
                               dtype=dtype).to(device)


def _sync(device):
    """Wait for the GPU's queued work (timings of asynchronous device code need it)."""
    if device == "cuda":
        import cupy

        cupy.cuda.runtime.deviceSynchronize()


def run_order(spec, arch, data, args):
    Xtr, ytr, Xte, yte, Xood = data
    fg = _graph(arch, args.batch, args.seed, args.dtype, args.device)
    extra = {k: True for k, on in (("warm_start", args.warm), ("mixing", args.mix)) if on}
    schedule = Staircase(args.staircase)
    ends = []  # wall time at the end of each epoch

    def epoch_end(tr, epoch):
        _sync(args.device)
        ends.append(time.perf_counter())

    t0 = time.perf_counter()
    try:
        tr = Trainer(fg, Xtr, np.eye(10)[ytr], order=_order(spec), progress=False,
                     callbacks={"on_epoch_end": epoch_end}, **extra)
        tr.train(schedule=schedule)
        _sync(args.device)
    except (ArithmeticError, ValueError) as e:  # a diverging schedule
        return {"order": spec, "failed": f"{type(e).__name__}: {e}"[:120], "time_s": time.perf_counter() - t0}
    t = time.perf_counter() - t0
    r = fg.evaluate(Xte, yte, X_ood=Xood)
    # seconds per example-pass of each epoch after the first (which also loads or compiles the kernels), for
    # the PyTorch epochs' median
    later = [(b - a) / (its * len(Xtr)) for a, b, its in zip(ends, ends[1:], schedule.iterations[1:])]
    return {"order": spec, "accuracy": r["accuracy"], "nll": r["nll"], "ece": r["ece"], "ood_auroc": r["ood_auroc"],
            "time_s": t, "us_per_example_pass": 1e6 * t / (schedule.total * len(Xtr)),
            "epoch_us_per_example_pass": 1e6 * float(np.median(later))}


def throughput(arch, data, orders, batch, dtype="float64", reps=5, device="cpu"):
    """Median time of one sweep of ``train_batch`` over one batch, per order (after a warm-up sweep)."""
    Xtr, ytr = data[0][:batch], data[1][:batch]
    out = {}
    for spec in orders:
        fg = _graph(arch, batch, 0, dtype, device)
        times = []
        try:
            for rep in range(reps + 1):  # the first sweep warms up (compilation, caches)
                _sync(device)
                t0 = time.perf_counter()
                fg.train_batch(Xtr, np.eye(10)[ytr], 1, order=_order(spec))
                _sync(device)
                times.append(time.perf_counter() - t0)
        except ArithmeticError:  # a diverging order
            out[spec] = float("nan")
            continue
        out[spec] = float(np.median(times[1:])) / batch
    return out


def epoch_times(arch, data, orders, batch, dtype="float64", reps=3, device="cpu", seed=98):
    """Median time per example of a whole Trainer epoch (reset, one sweep and the update of every batch),
    per order, after a warm-up epoch."""
    Xtr, ytr = data[0], data[1]
    out = {}
    for spec in orders:
        fg = _graph(arch, batch, seed, dtype, device)
        tr = Trainer(fg, Xtr, np.eye(10)[ytr], order=_order(spec), progress=False)
        times = []
        try:
            for rep in range(reps + 1):  # the first epoch warms up (compilation, caches)
                _sync(device)
                t0 = time.perf_counter()
                tr.train_epoch(1)
                _sync(device)
                times.append(time.perf_counter() - t0)
        except ArithmeticError:  # a diverging order
            out[spec] = float("nan")
            continue
        out[spec] = float(np.median(times[1:])) / len(Xtr)
    return out


def torch_epochs(arch, data, batch, epochs, seed, device="cpu"):
    """Median wall time of a PyTorch SGD epoch (same architecture, batch size, data and
    model on ``device``), and its test accuracy."""
    import torch
    import torch.nn as nn

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    Xtr, ytr, Xte, yte, _ = data
    tt = lambda x: torch.tensor(np.transpose(x, (0, 3, 1, 2)), dtype=torch.float32, device=device)  # noqa: E731
    model = torch_model(arch).to(device)
    X, y = tt(Xtr), torch.tensor(ytr, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(X), device=device)
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        acc = float((model(tt(Xte)).argmax(1).cpu().numpy() == yte).mean())
    return float(np.median(times)), acc


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)

    shown = [r for r in rows if "failed" not in r and "time_s" in r]  # not failed orders, not the PyTorch line
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2 + 0.2 * len(shown)))
    for r in shown:  # one colour per order, named in the legend below (the names are long)
        for ax, key in zip(axes, ("accuracy", "nll", "ece")):
            ax.scatter(r["time_s"], r[key], s=36, label=r["order"])
    times = [r["time_s"] for r in shown]
    wide = bool(times) and max(times) > 10 * min(times)  # a log axis only where it spans a decade
    for ax, key in zip(axes, ("test accuracy", "test NLL", "ECE15")):
        if wide:  # plain-number labels at 1-2-5 steps; no minor labels (they overlapped within a decade)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training wall time [s]")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.15 + 0.045 * len(shown), top=0.9, wspace=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5120)
    p.add_argument("--arch", choices=sorted(ARCH), default="mlp")
    p.add_argument("--batch", type=int, default=320)
    p.add_argument("--staircase", type=int, default=4, help="top of the staircase epoch schedule")
    p.add_argument("--orders", nargs="+", default=["Shuffled()", "Parallel(8, 0.5)", "Parallel(32, 0.5)",
                                                   "Parallel(320, 0.2)"])
    p.add_argument("--warm", action="store_true", help="warm-start activation messages of each new batch")
    p.add_argument("--mix", action="store_true", help="recombine half batches between epochs")
    p.add_argument("--whiten", type=float, default=None, metavar="EPS",
                   help="ZCA-whiten the inputs (fitted on the training images, eps EPS; 0.1 in the README)")
    p.add_argument("--torch", action="store_true", help="time PyTorch SGD epochs in the same run")
    p.add_argument("--throughput", action="store_true",
                   help="only time one sweep over one batch per order (median of 5) and exit")
    p.add_argument("--epochs", action="store_true",
                   help="only time whole Trainer epochs of one sweep per batch per order (median of 3) "
                        "and exit")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --throughput or --epochs: repeat the timings (and PyTorch's) this many times, "
                        "alternating, and report the median round with the range")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--seed", type=int, default=98)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="device of the message passing and of the PyTorch epochs")
    p.add_argument("--out", default="examples/out")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    data = load(args.n, args.arch, args.seed, args.whiten)
    if args.device == "cpu":
        print(blas_line(args.torch), flush=True)
    if args.throughput or args.epochs:
        # rounds alternate the orders and PyTorch, so a slow phase of a shared machine hits them alike
        runs, torch_runs = [], []
        for _ in range(args.rounds):
            timing = (epoch_times(args.arch, data, args.orders, args.batch, args.dtype, device=args.device,
                                  seed=args.seed) if args.epochs else
                      throughput(args.arch, data, args.orders, args.batch, args.dtype, device=args.device))
            runs.append(timing)
            if args.torch:
                torch_runs.append(torch_epochs(args.arch, data, args.batch, 5, args.seed, args.device)[0] / args.n)
        res = {spec: float(np.median([r[spec] for r in runs])) for spec in args.orders}
        base = res.get("Shuffled()")
        spread = args.rounds > 1
        reps = 3 if args.epochs else 5
        what = f"median of {reps}" + (f", {args.rounds} rounds: median [min - max]" if spread else "")
        timed = ("a Trainer epoch of one sweep per batch" if args.epochs
                 else f"one sweep over {args.batch} examples")
        print(f"| order ({args.arch}, {args.dtype}, {args.device}, batch {args.batch}, {timed}, {what}) | "
              f"us / example-pass | "
              f"speed-up vs Shuffled() |\n|---|---|---|")
        for spec, t in res.items():
            if np.isnan(t):
                print(f"| {spec} | diverged | |")
                continue
            ts = [1e6 * r[spec] for r in runs]
            span = f" [{min(ts):.0f} - {max(ts):.0f}]" if spread else ""
            print(f"| {spec} | {1e6 * t:.0f}{span} | {f'{base / t:.1f}x' if base else '-'} |")
        if args.torch:
            t = float(np.median(torch_runs))
            span = f" [{1e6 * min(torch_runs):.1f} - {1e6 * max(torch_runs):.1f}]" if spread else ""
            ratios = "".join(f"; {spec}: {res[spec] / t:.2f}x PyTorch" + (
                " (rounds: " + " / ".join(f"{r[spec] / tr:.2f}" for r, tr in zip(runs, torch_runs)) + ")"
                if spread else "") for spec in args.orders if spec != "Shuffled()")
            print(f"PyTorch SGD epoch over n = {args.n} (batch {args.batch}): {t * args.n:.3f} s = "
                  f"{1e6 * t:.1f}{span} us / example{ratios}")
        return
    os.makedirs(args.out, exist_ok=True)
    tag = (f"{args.arch}_n{args.n}" + ("_cuda" if args.device == "cuda" else "")
           + ("_warm" if args.warm else "") + ("_mix" if args.mix else "")
           + (f"_whiten{args.whiten:g}" if args.whiten is not None else ""))
    rows = []
    print(f"| order ({args.arch}, {args.device}, n = {args.n}, batch {args.batch}, Staircase({args.staircase})"
          f"{', warm' if args.warm else ''}{', mix' if args.mix else ''}"
          f"{f', whitened (eps {args.whiten:g})' if args.whiten is not None else ''}) "
          f"| acc | NLL | ECE15 | OOD AUROC "
          f"| train time [s] | us / example-pass | epochs after the first: median us / example-pass "
          f"|\n|---|---|---|---|---|---|---|---|", flush=True)
    for spec in args.orders:
        r = run_order(spec, args.arch, data, args)
        rows.append(r)
        if "failed" in r:
            print(f"| {spec} | failed ({r['failed']}) | | | | {r['time_s']:.0f} | | |", flush=True)
        else:
            print(f"| {spec} | {r['accuracy']:.3f} | {r['nll']:.3f} | {r['ece']:.3f} | {r['ood_auroc']:.3f} | "
                  f"{r['time_s']:.1f} | {r['us_per_example_pass']:.0f} | "
                  f"{r['epoch_us_per_example_pass']:.0f} |", flush=True)
    if args.torch:
        t, acc = torch_epochs(args.arch, data, args.batch, 5, args.seed, args.device)
        rows.append({"order": "torch SGD epoch", "epoch_s": t, "accuracy_5_epochs": acc})
        ratios = "".join(f"; {r['order']}: {r['epoch_us_per_example_pass'] / (1e6 * t / args.n):.2f}x"
                         for r in rows if "epoch_us_per_example_pass" in r)
        print(f"PyTorch SGD (lr 1e-2, batch {args.batch}): median epoch {t:.3f} s over 5 epochs = "
              f"{1e6 * t / args.n:.1f} us / example (test acc after 5 epochs {acc:.3f}); the orders' later "
              f"epochs against it{ratios}", flush=True)
    with open(os.path.join(args.out, f"schedules_{tag}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    inputs = "scalar-normalised" if args.whiten is None else f"whitened (eps {args.whiten:g})"
    plot(rows, os.path.join(args.out, f"schedules_{tag}.png"),
         f"{args.arch}, Fashion-MNIST n = {args.n}, {inputs}, seed {args.seed}")


if __name__ == "__main__":
    main()
