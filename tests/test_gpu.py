"""The GPU path: ``fg.to("cuda")`` gives the same results as the CPU, and fails clearly without a GPU.

The equality tests need cupy and a CUDA device (marker ``gpu``); they are skipped elsewhere.  Run on a
GPU machine with ``FACTORGRAPH_REAL_GPU=1 pytest -m gpu``.
"""

import numpy as np
import pytest

from factorgraph.backend import cupy_available
from layers import create_factor_graph
from trainer import Trainer

HAS_GPU = cupy_available()

NETS = {
    "mlp-regression": [(3,), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 2),
                       ("Regression", 0.05)],
    "mlp-argmax": [(3,), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 3), ("Argmax", True)],
    "mlp-softmax": [(3,), ("Linear", 8), ("LeakyReLU", 0.1), ("Linear", 3), ("Softmax",)],
    "cnn": [(6, 6, 1), ("Conv", 3, 3, {"padding": 1}), ("LeakyReLU", 0.1), ("MaxPool", 2), ("Conv", 4, 2),
            ("LeakyReLU", 0.1), ("AvgPool",), ("Linear", 2), ("Regression", 0.1)],
}


def _data(templates, n=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n,) + templates[0])
    head = templates[-1][0]
    if head == "Regression":
        Y = rng.normal(size=(n, templates[-2][1]))
    else:
        Y = rng.integers(0, templates[-2][1], n)
    return X, Y


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_to_cuda_without_gpu_is_a_clear_error():
    fg = create_factor_graph(NETS["mlp-regression"], batch_size=4, seed=0)
    with pytest.raises(RuntimeError, match="cupy|CUDA device"):
        fg.to("cuda")
    assert fg.device == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        fg.to("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs cupy and a CUDA device")
@pytest.mark.parametrize("name", sorted(NETS))
def test_gpu_training_equals_cpu_training(name):
    templates = NETS[name]
    X, Y = _data(templates)
    fg_cpu = create_factor_graph(templates, batch_size=16, seed=3)
    fg_gpu = create_factor_graph(templates, batch_size=16, seed=3).to("cuda")
    fg_cpu.train_batch(X, Y, 2)
    fg_gpu.train_batch(X, Y, 2)
    p_cpu, p_gpu = fg_cpu.predict(X), fg_gpu.predict(X)
    if isinstance(p_cpu, tuple):
        p_cpu, p_gpu = p_cpu[0], p_gpu[0]
    assert isinstance(p_gpu, np.ndarray)
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-7, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs cupy and a CUDA device")
def test_trainer_on_gpu_equals_cpu_and_saves(tmp_path):
    templates = NETS["mlp-regression"]
    X, Y = _data(templates, n=40)
    runs = []
    for device in ("cpu", "cuda"):
        fg = create_factor_graph(templates, batch_size=16, seed=3).to(device)
        tr = Trainer(fg, X, Y, progress=False)
        tr.train(num_epochs=2, num_training_its=2)
        tr.save(tmp_path / f"{device}.npz")
        runs.append(fg.predict(X)[0])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-7, atol=1e-9)
    back = Trainer.load(tmp_path / "cuda.npz")  # loads onto the CPU: same state, other math library
    np.testing.assert_allclose(back.fg.predict(X)[0], runs[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(back.to("cuda").fg.predict(X)[0] if hasattr(back, "to") else
                               back.fg.to("cuda").predict(X)[0], runs[1], rtol=1e-12, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs cupy and a CUDA device")
@pytest.mark.parametrize("order", ["Parallel(4, 0.5)", "Parallel(4, 0.5, max_step=1.0)",
                                   "Parallel(8, 0.5, exact=True)", "Parallel(4, 0.5, expansion=1)"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_gpu_parallel_schedule_equals_cpu(name, order):
    """The batched (chunk) path on CuPy arrays: the same guard counts, marginals and predictions as on the
    CPU."""
    import schedules
    from factorgraph import guards

    templates = NETS[name]
    X, Y = _data(templates)
    fgs = [create_factor_graph(templates, batch_size=16, seed=3).to(device) for device in ("cpu", "cuda")]
    counts = []
    for fg in fgs:
        guards.reset()
        fg.train_batch(X, Y, 2, order=eval(order, vars(schedules)))
        counts.append(guards.counts())
    assert counts[1] == counts[0]  # the GPU's guard counts (read from the device after the batch) equal the CPU's
    p_cpu, p_gpu = (fg.predict(X) for fg in fgs)
    if isinstance(p_cpu, tuple):
        p_cpu, p_gpu = p_cpu[0], p_gpu[0]
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-7, atol=1e-9)
    for (l, layer_cpu), (_, layer_gpu) in zip(fgs[0].weighted_layers(), fgs[1].weighted_layers()):
        for key, slots in layer_cpu.params.items():
            q_gpu = layer_gpu.params[key].q
            np.testing.assert_allclose(q_gpu.tau.get(), slots.q.tau, rtol=1e-7, atol=1e-9, err_msg=f"{l}.{key}")
            np.testing.assert_allclose(q_gpu.rho.get(), slots.q.rho, rtol=1e-7, atol=1e-9, err_msg=f"{l}.{key}")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs cupy and a CUDA device")
def test_fast_launch_equals_numba_launch():
    """``kernels._device.launch`` passes CuPy arrays (contiguous, strided, 2-D, int64) and scalars (float,
    int, bool, float32) to the compiled kernel itself: the same results as Numba's launch, and it took the
    fast path."""
    import cupy as cp
    from numba import cuda

    from factorgraph.kernels import _device

    @cuda.jit
    def kern(a, b, idx, s, n, flag, f32, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            v = a[i] * s + b[idx[i], i % b.shape[1]] + n + f32
            out[i] = -v if flag else v

    rng = np.random.default_rng(0)
    a = cp.asarray(rng.normal(size=40))[::2]  # strided
    b = cp.asarray(rng.normal(size=(7, 5)))
    idx = cp.asarray(rng.integers(0, 7, 20))
    for flag in (True, False):
        want, got = cp.zeros(20), cp.zeros(20)
        kern[_device.grid(20, 32)](a, b, idx, 1.5, 3, flag, np.float32(0.25), want)
        for _ in range(2):  # the first launch goes through Numba and fills the cache
            got[...] = 0
            _device.launch(kern, _device.grid(20, 32), a, b, idx, 1.5, 3, flag, np.float32(0.25), got)
        cp.testing.assert_array_equal(got, want)
    entries = [v for k, v in _device._FAST.items() if k[0] is kern]
    assert len(entries) == 1 and entries[0] is not None  # one entry for these argument kinds, fast
