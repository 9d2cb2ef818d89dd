"""Kernel benchmarks (issue 6): thesis layer shapes, a Fashion-MNIST epoch next to PyTorch, the
memory-traffic limit, and LeNet-5 prediction throughput.  Medians of ``--repeats`` runs, one process.

(a) forward + backward over 10 examples for the thesis Table 5.4 shapes: first/hidden linear 784->1000,
    LeakyReLU 784, first/hidden conv 28x28x4 -> 24x24x8 k5, MaxPool 2 on 24x24x8, and the
    regression / softmax / argmax heads with 100 classes;
(b) thesis Table 5.5: 784-100-10, batch 320, 3200 Fashion-MNIST examples, 2 iterations (one Trainer epoch),
    next to PyTorch SGD (batch 64, lr 1e-3) for 2 epochs on the same data;
(c) the memory-traffic limit of (b): a NumPy copy moving as many bytes as one sequential example-pass must
    read and write (every weight's marginal and message slot), timed in the same run, with the slot
    messages streamed from DRAM (they do not fit in cache) and the rest cache-resident; the all-cached
    and all-streamed copies are printed as bounds;
(d) prediction throughput of LeNet-5 (images/s) in float32 and float64 next to PyTorch inference.

    python examples/bench_kernels.py                  # CPU kernels and NumPy reference
    python examples/bench_kernels.py --cuda           # also the GPU path
"""

import argparse
import os
import statistics
import time

import numpy as np

from factorgraph import kernels
from factorgraph.gaussian import Gaussian
from layers import create_factor_graph


def median_time(fn, repeats):
    fn()  # warm up / compile
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _rand_msg(rng, shape, xp=np):
    return Gaussian(xp.asarray(rng.normal(0, 1, shape)), xp.asarray(rng.uniform(0.5, 2.0, shape)))


LAYER_CASES = {
    # name: (templates, index of the timed layer, input shape of that layer)
    "first linear 784->1000": ([(784,), ("Linear", 1000), ("Regression", 0.01)], 0),
    "hidden linear 784->1000": ([(784,), ("Linear", 784), ("Linear", 1000), ("Regression", 0.01)], 1),
    "LeakyReLU 784": ([(784,), ("Linear", 784), ("LeakyReLU", 0.1), ("Flatten",), ("Regression", 0.01)], 1),
    "first conv 28x28x4->24x24x8 k5": ([(28, 28, 4), ("Conv", 8, 5), ("Flatten",), ("Regression", 0.01)], 0),
    "hidden conv 28x28x4->24x24x8 k5": ([(28, 28, 1), ("Conv", 4, 1), ("Conv", 8, 5), ("Flatten",),
                                         ("Regression", 0.01)], 1),
    "MaxPool 2 on 24x24x8": ([(24, 24, 8), ("Conv", 8, 1), ("MaxPool", 2), ("Flatten",), ("Regression", 0.01)], 1),
    "Regression head, 100 outputs": ([(100,), ("Linear", 100), ("Regression", 0.01)], 1),
    "Argmax head, 100 classes": ([(100,), ("Linear", 100), ("Argmax", True)], 1),
    "Softmax head, 100 classes": ([(100,), ("Linear", 100), ("Softmax",)], 1),
}


def bench_layer(templates, idx, device, repeats, n=10):
    rng = np.random.default_rng(0)
    fg = create_factor_graph(templates, batch_size=n, seed=0).to(device)
    xp = fg._xp()
    layer = fg.layers[idx]
    m_in = xp.asarray(rng.normal(size=(n,) + layer.input_shape)) if layer.constant_input else None
    msgs_in = [_rand_msg(rng, layer.input_shape, xp) for _ in range(n)]
    if layer.is_signal:
        y = (xp.asarray(rng.normal(size=(n,) + layer.output_shape_)) if layer.kind == "Regression"
             else xp.asarray(rng.integers(0, layer.output_shape_[0], n)))
    backs = [_rand_msg(rng, layer.output_shape_, xp) for _ in range(n)]

    def run():
        for i in range(n):
            layer.forward(m_in[i] if m_in is not None else msgs_in[i], i)
            if layer.is_signal:
                layer.backward_signal(y[i], i)
            else:
                layer.backward(backs[i], i)
        fg._flush_guards()  # device sync

    return median_time(run, repeats)


def bench_epoch(device, repeats, n=3200):
    from factorgraph import datasets
    from trainer import Trainer

    d = datasets.load_fashion_mnist(n_train=n)
    X = ((d.X_train - d.X_train.mean()) / d.X_train.std()).reshape(n, 784)
    Y = np.eye(10)[d.y_train]
    templates = [(784,), ("Linear", 100), ("LeakyReLU", 0.1), ("Linear", 10), ("Regression", 0.01)]

    def run():
        fg = create_factor_graph(templates, batch_size=320, seed=0).to(device)
        Trainer(fg, X, Y, progress=False).train(num_epochs=1, num_training_its=2)

    return median_time(run, repeats), X, d.y_train


def bench_torch_sgd(X, y, repeats):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)

    def run():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.LeakyReLU(0.1), torch.nn.Linear(100, 10))
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(2):
            for s in range(0, len(Xt), 64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(Xt[s:s + 64]), yt[s:s + 64]).backward()
                opt.step()

    return median_time(run, repeats)


def traffic_bytes(templates, itemsize=8):
    """Bytes one sequential example-pass must move, as ``(total, dram)``.  Per weight, constant-input
    layers read the marginal and the slot's message in the forward (4 arrays) and read + write both in the
    backward (8); hidden layers read the marginal in the forward (2) and read + write marginal and message
    in the backward (8).  Of these, only the slot's message must come from and go back to DRAM once (read
    2, write 2 arrays): the 320 slots do not fit in cache, the marginals and the slot just read do."""
    fg = create_factor_graph(templates, batch_size=1, seed=0)
    total = dram = 0
    for _, layer in fg.weighted_layers():
        p = sum(int(np.prod(s.shape)) for s in layer.params.values())
        total += p * itemsize * ((4 if layer.constant_input else 2) + 8)
        dram += p * itemsize * 4
    return total, dram


def bench_copy(nbytes, repeats, streamed=False):
    """Seconds of a NumPy copy that reads and writes ``nbytes / 2`` each: from and to the same buffers
    every time (cache-resident), or (``streamed``) walking through 1 GiB of buffers, as the sequential
    schedule walks through its message slots, so every byte comes from and goes to DRAM."""
    size = max(1, nbytes // 16)
    n_buf = max(2, (1 << 30) // (size * 16)) if streamed else 1
    src, dst = np.ones((n_buf, size)), np.ones((n_buf, size))
    k = [0]

    def copy():
        np.copyto(dst[k[0] % n_buf], src[k[0] % n_buf])
        k[0] += 1

    return median_time(copy, repeats)


LENET = [(28, 28, 1), ("Conv", 6, 5, {"padding": 2}), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 16, 5),
         ("LeakyReLU", 0.1), ("MaxPool", 2), ("Flatten",), ("Linear", 120), ("LeakyReLU", 0.1), ("Linear", 84),
         ("LeakyReLU", 0.1), ("Linear", 10), ("Regression", 0.01)]


def bench_predict(dtype, device, repeats, n=2000):
    X = np.random.default_rng(0).normal(size=(n, 28, 28, 1))
    fg = create_factor_graph(LENET, batch_size=320, seed=0, dtype=dtype).to(device)
    return n / median_time(lambda: fg.predict(X), repeats)


def bench_torch_predict(dtype, repeats, n=2000):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.LeakyReLU(0.1),
                          nn.Linear(120, 84), nn.LeakyReLU(0.1), nn.Linear(84, 10)).to(dtype)
    X = torch.randn(n, 1, 28, 28, dtype=dtype)

    def run():
        with torch.no_grad():
            for s in range(0, n, 320):
                model(X[s:s + 320])

    return n / median_time(run, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cuda", action="store_true")
    p.add_argument("--parts", default="abcd")
    args = p.parse_args(argv)
    engines = [("numpy", "cpu"), ("kernels", "cpu")] + ([("cuda", "cuda")] if args.cuda else [])

    def engine_run(name, fn):
        prev = kernels.set_enabled(name != "numpy")
        try:
            return fn()
        finally:
            kernels.set_enabled(prev)

    if "a" in args.parts:
        print("\n(a) forward + backward over 10 examples [ms]\n")
        print("| layer | " + " | ".join(e for e, _ in engines) + " |\n|---|" + "---|" * len(engines))
        for name, (templates, idx) in LAYER_CASES.items():
            ts = [engine_run(e, lambda: bench_layer(templates, idx, dev, args.repeats)) for e, dev in engines]
            print(f"| {name} | " + " | ".join(f"{t * 1e3:.2f}" for t in ts) + " |", flush=True)
    if "b" in args.parts or "c" in args.parts:
        print("\n(b) 784-100-10, batch 320, 3200 Fashion-MNIST examples, 2 iterations [s]\n")
        rows = []
        for e, dev in engines[1:]:
            t, X, y = engine_run(e, lambda: bench_epoch(dev, max(1, args.repeats // 2)))
            rows.append((f"message passing ({e})", t))
        try:
            rows.append(("PyTorch SGD, 2 epochs, batch 64", bench_torch_sgd(X, y, args.repeats)))
        except ImportError:
            pass
        for name, t in rows:
            print(f"| {name} | {t:.2f} s |")
        t_kernel = rows[0][1]
        per_pass = t_kernel / (3200 * 2)
        nbytes, dram = traffic_bytes([(784,), ("Linear", 100), ("LeakyReLU", 0.1), ("Linear", 10),
                                      ("Regression", 0.01)])
        t_cached = bench_copy(nbytes, args.repeats * 10)
        t_mixed = bench_copy(dram, args.repeats * 10, streamed=True) + bench_copy(nbytes - dram, args.repeats * 10)
        t_dram = bench_copy(nbytes, args.repeats * 10, streamed=True)
        print(f"\n(c) per example-pass: {per_pass * 1e6:.0f} us (kernels, including batch bookkeeping).  "
              f"Memory-traffic limit, a NumPy copy of the {nbytes / 1e6:.2f} MB it must move: "
              f"{t_mixed * 1e6:.0f} us with the slot messages ({dram / 1e6:.2f} MB) streamed from DRAM and the "
              f"rest cache-resident (ratio {per_pass / t_mixed:.1f}x); bounds: all cache-resident "
              f"{t_cached * 1e6:.0f} us ({per_pass / t_cached:.1f}x), all streamed {t_dram * 1e6:.0f} us "
              f"({per_pass / t_dram:.1f}x)")
        print(f"    thesis figure for (b): 8.9 s on 4 vCPUs, i.e. {8.9 * 4 / 6400 * 1e6:.0f} core-us per example-pass; "
              f"ours {per_pass * 1e6:.0f} us on one core: {8.9 * 4 / 6400 / per_pass:.1f}x")
    if "d" in args.parts:
        print("\n(d) LeNet-5 prediction throughput [images/s]\n")
        for dtype in (np.float32, np.float64):
            ours = [engine_run(e, lambda: bench_predict(dtype, dev, args.repeats)) for e, dev in engines[1:]]
            try:
                import torch

                theirs = bench_torch_predict(torch.float32 if dtype == np.float32 else torch.float64, args.repeats)
            except ImportError:
                theirs = float("nan")
            cells = " | ".join(f"{e}: {v:.0f}" for (e, _), v in zip(engines[1:], ours))
            print(f"| {np.dtype(dtype).name} | {cells} | PyTorch: {theirs:.0f} | ratio {theirs / ours[0]:.1f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
