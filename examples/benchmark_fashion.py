"""Fashion-MNIST benchmark: message passing (R-MP, AM-MP, SM-MP) next to PyTorch SGD and Adam.

The thesis MNIST study (SPEC 10.2) on Fashion-MNIST: MLP 784-256-256-10 (LeakyReLU 0.1) and LeNet-5,
batch 320, the staircase schedule 1,1,2,2,...,9,9, training subsets of size n (first n of a seeded
permutation), inputs normalised with the training pixels' scalar mean and std.  Heads:

* R-MP: Regression(0.01) on one-hot targets, probabilities by the argmax mapping (noise 0.3, SPEC 6.2),
  and two alternative mappings: the probit softmax of the predictive ("R-MP probit") and an argmax noise
  chosen by held-out likelihood on a validation split ("R-MP tuned");
* AM-MP: Argmax(regularize=True);  SM-MP: Softmax.

Baselines (torch, optional ``bench`` extra), same architecture and data: SGD lr 1e-3, batch 64, 90 epochs
(the thesis setting), and Adam lr 1e-3, batch 64, early-stopped on the validation NLL (at most 90 epochs;
``--torch-epochs`` changes both).  ``--order`` picks the within-batch order of the message passing;
``--whiten EPS`` ZCA-whitens the inputs of every method.
The 10 000 test images are split into 1 000 validation (used only for early stopping and the tuned
mapping) and 9 000 test images.  OOD set: sklearn's 8x8 digits upsampled to 28x28, normalised with
their own statistics (SPEC 10.1 convention).

    python examples/benchmark_fashion.py --n 640
    python examples/benchmark_fashion.py --n 640 5120 --arch mlp lenet --out examples/out/fashion
    python examples/benchmark_fashion.py --n 60000 --arch mlp --heads R-MP --baselines Adam --staircase 2 \
        --order "Parallel(32, 0.5)" --torch-epochs 10          # full training set, batched schedule
"""

import argparse
import json
import os
import time

import numpy as np

from factorgraph import datasets, metrics
from layers import create_factor_graph
import schedules
from schedules import Staircase
from trainer import Trainer

ARCH = {
    "mlp": [("Flatten",), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 256), ("LeakyReLU", 0.1), ("Linear", 10)],
    "lenet": [("Conv", 6, 5, {"padding": 2}), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 16, 5), ("LeakyReLU", 0.1),
              ("MaxPool", 2), ("Flatten",), ("Linear", 120), ("LeakyReLU", 0.1), ("Linear", 84), ("LeakyReLU", 0.1),
              ("Linear", 10)],
}


def blas_line(with_torch=False):
    """One line naming the BLAS kernels behind the timings: the loaded OpenBLAS libraries' cores
    (threadpoolctl; SciPy's is the one the chunk kernels call) with ``OPENBLAS_CORETYPE`` /
    ``OPENBLAS_L2_SIZE`` as set, and with ``with_torch`` PyTorch's BLAS and CPU capability.  Some machines
    pin OpenBLAS to an older core in the environment (AVX2 ``Haswell`` on an AVX-512 CPU runs these
    products at about half speed): a timing means little without this line."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's OpenBLAS)
    from threadpoolctl import threadpool_info

    libs = [f"{i.get('prefix', '?')} {i.get('version', '?')} {i.get('architecture', '?')}"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    env = ", ".join(f"{k}={os.environ[k]}" if k in os.environ else f"{k} unset"
                    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    line = f"BLAS: {'; '.join(libs) or 'none found'} ({env})"
    if with_torch:
        import torch

        mkl = "MKL" if torch.backends.mkl.is_available() else "no MKL"
        cap = torch.backends.cpu.get_cpu_capability()
        line += f"; PyTorch {torch.__version__} ({mkl}, CPU capability {cap})"
    return line


HEADS = {"R-MP": ("Regression", 0.01), "AM-MP": ("Argmax", True), "SM-MP": ("Softmax",)}


def load(n, seed, whiten=None):
    """Training, validation, test and OOD sets, scalar-normalised with training statistics and, when
    ``whiten`` is an ``eps``, ZCA-whitened (:class:`factorgraph.datasets.Whitening` fitted on the training
    images) for every method alike."""
    d = datasets.load_fashion_mnist(seed=seed)
    Xtr, ytr = d.X_train[:n], d.y_train[:n]
    mean, std = float(Xtr.mean()), float(Xtr.std(ddof=1))
    norm = lambda x: (x - mean) / std  # noqa: E731
    Xd, _ = datasets.load_digits(upsample_to=28)
    Xood = (Xd - Xd.mean()) / Xd.std(ddof=1)
    X = [norm(Xtr), norm(d.X_test[:1000]), norm(d.X_test[1000:]), Xood]
    if whiten is not None:
        w = datasets.Whitening.fit(X[0], eps=whiten)
        X = [w(x) for x in X]
    return X[0], ytr, X[1], d.y_test[:1000], X[2], d.y_test[1000:], X[3]


def run_mp(arch, head, data, its_top, seed, progress, device="cpu", order=None, dtype="float64"):
    Xtr, ytr, Xva, yva, Xte, yte, Xood = data
    fg = create_factor_graph([(28, 28, 1)] + ARCH[arch] + [HEADS[head]], batch_size=320, seed=seed,
                             dtype=dtype).to(device)
    Y = np.eye(10)[ytr] if head == "R-MP" else ytr
    t0 = time.perf_counter()
    Trainer(fg, Xtr, Y, progress=progress, order=order).train(schedule=Staircase(its_top))
    train_time = time.perf_counter() - t0
    rows = {}
    if head == "R-MP":
        noise = fg.fit_argmax_noise(Xva, yva)
        for name, mapping in ((head, "argmax"), (f"{head} probit", "probit"), (f"{head} tuned ({noise:.2g})", noise)):
            rows[name] = fg.evaluate(Xte, yte, X_ood=Xood, mapping=mapping)
    else:
        rows[head] = fg.evaluate(Xte, yte, X_ood=Xood)
    for r in rows.values():
        r["time_s"] = train_time
    return rows


def torch_model(arch):
    import torch.nn as nn

    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.LeakyReLU(0.1), nn.Linear(256, 256),
                             nn.LeakyReLU(0.1), nn.Linear(256, 10))
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                         nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.LeakyReLU(0.1),
                         nn.Linear(120, 84), nn.LeakyReLU(0.1), nn.Linear(84, 10))


def run_torch(arch, opt_name, data, seed, epochs=90):
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    Xtr, ytr, Xva, yva, Xte, yte, Xood = data
    tt = lambda x: torch.tensor(np.transpose(x, (0, 3, 1, 2)), dtype=torch.float32)  # noqa: E731
    Xtr_t, ytr_t, Xva_t, Xte_t, Xood_t = tt(Xtr), torch.tensor(ytr), tt(Xva), tt(Xte), tt(Xood)
    model = torch_model(arch)
    opt = (torch.optim.SGD if opt_name == "SGD" else torch.optim.Adam)(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    probs = lambda x: torch.softmax(model(x), dim=1).detach().numpy().astype(np.float64)  # noqa: E731
    best, best_state = np.inf, None
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr_t))
        for s in range(0, len(perm), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            loss_fn(model(Xtr_t[idx]), ytr_t[idx]).backward()
            opt.step()
        if opt_name == "Adam":  # early stopping on the validation NLL
            model.eval()
            with torch.no_grad():
                v = metrics.nll(probs(Xva_t), yva)
            if v < best:
                best, best_state = v, {k: t.clone() for k, t in model.state_dict().items()}
    train_time = time.perf_counter() - t0
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        r = metrics.classification_metrics(probs(Xte_t), yte, probs(Xood_t))
    r["time_s"] = train_time
    return {f"{opt_name} (torch)": r}


def table(results):
    cols = ["accuracy", "nll", "ece", "thesis_ece", "relative_calibration_auc", "ood_auroc", "time_s"]
    lines = ["| n | arch | method | acc | NLL | ECE15 | thesis ECE | rel-cal AUC | OOD AUROC | train time [s] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (n, arch), rows in results.items():
        for name, r in rows.items():
            vals = " | ".join(f"{r[c]:.3f}" if c != "time_s" else f"{r[c]:.1f}" for c in cols)
            lines.append(f"| {n} | {arch} | {name} | {vals} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[640])
    p.add_argument("--arch", nargs="+", default=["mlp"], choices=sorted(ARCH))
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--baselines", nargs="*", default=["SGD", "Adam"], choices=["SGD", "Adam"])
    p.add_argument("--staircase", type=int, default=9, help="top of the staircase 1,1,...,N,N (thesis: 9)")
    p.add_argument("--seed", type=int, default=98)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the message passing")
    p.add_argument("--order", default="Shuffled()",
                   help="within-batch order, a schedules expression such as 'Parallel(32, 0.5)'")
    p.add_argument("--torch-epochs", type=int, default=90, help="epochs of the PyTorch baselines")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="message passing precision")
    p.add_argument("--whiten", type=float, default=None, metavar="EPS",
                   help="ZCA-whiten the inputs of every method (fitted on the training images, eps EPS)")
    p.add_argument("--out", default="examples/out/fashion")
    args = p.parse_args(argv)
    order = schedules.parse_order(args.order)
    os.makedirs(args.out, exist_ok=True)
    print(blas_line(bool(args.baselines)), flush=True)
    results = {}
    for n in args.n:
        data = load(n, args.seed, args.whiten)
        for arch in args.arch:
            rows = {}
            for head in args.heads:
                rows.update(run_mp(arch, head, data, args.staircase, args.seed, args.progress or None, args.device,
                                   order, args.dtype))
                print(f"n={n} {arch} {head} done", flush=True)
            for opt in args.baselines:
                print(f"n={n} {arch} torch {opt}", flush=True)
                rows.update(run_torch(arch, opt, data, args.seed, args.torch_epochs))
            results[(n, arch)] = rows
            print(table({(n, arch): rows}), flush=True)
    md = table(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({f"{n}/{a}": r for (n, a), r in results.items()}, f, indent=1)
    print("\n" + md)


if __name__ == "__main__":
    main()
