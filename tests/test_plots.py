"""Plots: each function writes a non-empty PNG and returns its path."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from factorgraph import metrics, plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def probs(n, C, seed, concentration):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(C, concentration), size=n)
    y = np.array([rng.choice(C, p=p) for p in P])
    return P, y


def check_png(path, returned):
    assert returned == str(path)
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG)


def test_reliability_diagram(tmp_path):
    P, y = probs(300, 10, 0, 0.3)
    path = tmp_path / "sub" / "reliability.png"  # parent folders are created
    check_png(path, plots.reliability_diagram(P, y, path))


def test_relative_calibration_plot(tmp_path):
    curves = {"sharp": probs(200, 10, 1, 0.2), "flat": probs(200, 10, 2, 2.0)}
    path = tmp_path / "relcal.png"
    check_png(path, plots.relative_calibration_plot(curves, path))
    with pytest.raises(ValueError, match="empty"):
        plots.relative_calibration_plot({}, path)


def test_roc_plot(tmp_path):
    P_in, _ = probs(200, 10, 3, 0.2)
    P_ood, _ = probs(100, 10, 4, 2.0)
    curves = {"model": (metrics.ood_scores(P_in), metrics.ood_scores(P_ood)),
              "ties": (np.zeros(5), np.r_[np.zeros(3), np.ones(2)])}
    path = tmp_path / "roc.png"
    check_png(path, plots.roc_plot(curves, path))


def test_predictive_bands(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 2, 100)
    mean, var = np.sin(x), 0.01 + 0.1 * x ** 2
    xt = rng.uniform(0, 1, (20, 1))
    path = tmp_path / "bands.png"
    check_png(path, plots.predictive_bands(x[:, None], mean[:, None], var, path, x_train=xt,
                                           y_train=np.sin(xt)))
    path2 = tmp_path / "bands2.png"
    check_png(path2, plots.predictive_bands(x, mean, var, path2))
    with pytest.raises(ValueError, match="non-negative"):
        plots.predictive_bands(x, mean, -var, path2)



def test_schedules_experiment_plot_names_each_shown_order_once(tmp_path, monkeypatch):
    import pathlib
    import sys

    import matplotlib.figure

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    from schedules_experiment import plot

    legends = []
    real = matplotlib.figure.Figure.legend
    monkeypatch.setattr(matplotlib.figure.Figure, "legend",
                        lambda self, h, labels, **kw: legends.append(list(labels)) or real(self, h, labels, **kw))
    rows = [{"order": "Shuffled()", "accuracy": 0.79, "nll": 0.69, "ece": 0.09, "time_s": 70.0},
            {"order": "ByEpoch(Parallel(32, 0.5), (3, Parallel(32, 0.25)))", "accuracy": 0.8, "nll": 0.62,
             "ece": 0.06, "time_s": 12.0},
            {"order": "Parallel(320, 0.5)", "failed": "ImproperMessageError: diverged", "time_s": 1.0},
            {"order": "torch SGD epoch", "epoch_s": 0.1, "accuracy_5_epochs": 0.5}]
    path = tmp_path / "schedules.png"
    plot(rows, path, "title")
    assert path.read_bytes().startswith(PNG) and len(path.read_bytes()) > 1000
    assert legends == [["Shuffled()", "ByEpoch(Parallel(32, 0.5), (3, Parallel(32, 0.25)))"]]


def test_schedules_experiment_refuses_fewer_than_one_round(capsys):
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    from schedules_experiment import main

    with pytest.raises(SystemExit):
        main(["--throughput", "--rounds", "0"])  # before any data is loaded
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_schedules_experiment_epoch_times_trains_whole_epochs(monkeypatch):
    """``--epochs`` times whole Trainer epochs: a warm-up epoch and ``reps`` timed ones per order, each a
    positive time per example (small random images, two batches)."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    import schedules_experiment
    from trainer import Trainer

    rng = np.random.default_rng(0)
    data = (rng.normal(size=(16, 28, 28, 1)), rng.integers(0, 10, 16), None, None, None)
    epochs = []
    real = Trainer.train_epoch
    counted = lambda tr, its=1: epochs.append(tr.num_batches) or real(tr, its)  # noqa: E731
    monkeypatch.setattr(Trainer, "train_epoch", counted)
    order = "Parallel(8, 0.2, max_step=0.3)"
    got = schedules_experiment.epoch_times("mlp", data, [order], 8, "float32", reps=2)
    assert epochs == [2, 2, 2]
    assert set(got) == {order} and 0 < got[order] < 1


def test_schedules_experiment_run_order_times_each_epoch(monkeypatch):
    """A training run reports the median time per example-pass of the epochs after the first (the first
    also loads the kernels), each epoch's time divided by its sweeps: ``Staircase(2)`` runs 1, 1, 2, 2
    sweeps; with epochs of 10, 1, 4 and 6 s (a fake clock) the later ones take 1, 2, 3 s per sweep of 16
    examples, median 2 / 16 s."""
    import argparse
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    import schedules_experiment
    from factorgraph.model import FactorGraph
    from trainer import Trainer

    clock = [0.0]
    monkeypatch.setattr(schedules_experiment.time, "perf_counter", lambda: clock[0])
    calls = []

    def fake_epoch(tr, its=1):
        clock[0] += (10.0, 1.0, 4.0, 6.0)[len(calls)]
        calls.append(its)
        tr.callbacks["on_epoch_end"](tr, len(calls))

    monkeypatch.setattr(Trainer, "train_epoch", fake_epoch)
    metrics = {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, "ood_auroc": 0.5}
    monkeypatch.setattr(FactorGraph, "evaluate", lambda self, X, y, X_ood=None: metrics)
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(16, 28, 28, 1)), rng.integers(0, 10, 16), None, None, None)
    args = argparse.Namespace(batch=8, seed=0, dtype="float32", device="cpu", warm=False, mix=False,
                              staircase=2)
    r = schedules_experiment.run_order("Parallel(8, 0.2, max_step=0.3)", "mlp", data, args)
    assert calls == [1, 1, 2, 2]
    assert r["epoch_us_per_example_pass"] == pytest.approx(1e6 * 2.0 / 16)
    assert r["us_per_example_pass"] == pytest.approx(1e6 * 21.0 / (6 * 16))


def test_schedules_experiment_plot_log_axis_has_plain_labels(tmp_path, monkeypatch):
    """Wall times spanning more than a decade get a log axis labelled 1-2-5 in plain numbers, without the
    minor labels that overlapped within a decade."""
    import pathlib
    import sys

    import matplotlib.figure
    import matplotlib.ticker

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    from schedules_experiment import plot

    figures = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **kw: figures.append(self) or real(self, *a, **kw))
    rows = [{"order": "Shuffled()", "accuracy": 0.79, "nll": 0.69, "ece": 0.09, "time_s": 33.1},
            {"order": "Parallel(320, 0.2, max_step=0.3)", "accuracy": 0.8, "nll": 0.66, "ece": 0.05,
             "time_s": 2.8}]
    path = tmp_path / "schedules.png"
    plot(rows, path, "title")
    assert path.read_bytes().startswith(PNG)
    for ax in figures[0].axes:
        assert ax.get_xscale() == "log"
        assert isinstance(ax.xaxis.get_minor_formatter(), matplotlib.ticker.NullFormatter)
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks == [5.0, 10.0, 20.0]
        assert [ax.xaxis.get_major_formatter()(t) for t in ticks] == ["5", "10", "20"]
