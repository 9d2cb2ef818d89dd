"""The ``factorgraph`` command line (trainer.cli): train / evaluate / predict / graph end to end on tiny
models, and every bad input refused with one line on stderr and exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from trainer.cli import main  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
TINY = '[[64],["Linear",16],["LeakyReLU",0.1],["Linear",10],["Regression",0.01]]'


def run(*argv):
    return main([str(a) for a in argv])


def check_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG)


def refused(capsys, *argv):
    """Run argv, expect exit status 2 and return the one-line error on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "error:" in err and "Traceback" not in err
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    assert run("train", "--model", TINY, "--epochs", 1, "--out", out, "--no-progress") == 0
    return out


def test_train_digits_writes_checkpoint_metrics_plots(digits_run):
    for name in ("checkpoint.npz", "metrics.json", "model.json"):
        assert (digits_run / name).is_file()
    check_png(digits_run / "reliability.png")
    check_png(digits_run / "relative_calibration.png")
    m = json.loads((digits_run / "metrics.json").read_text())
    assert m["test"]["accuracy"] > 0.3 and m["train"]["accuracy"] > 0.3
    assert {"nll", "ece", "thesis_ece", "brier"} <= set(m["test"])
    info = json.loads((digits_run / "model.json").read_text())
    assert info["data"]["name"] == "digits" and info["target"] == "onehot" and info["head"] == "Regression"
    assert info["templates"] == json.loads(TINY)


def test_train_with_the_batched_order(tmp_path, capsys):
    out = tmp_path / "par"
    assert run("train", "--model", TINY, "--epochs", 2, "--order", "Parallel(16, (0.5, 0.25), max_step=1.0)",
               "--out", out, "--no-progress") == 0
    assert "order Parallel(16, damping=(0.5, 0.25), max_step=1.0)" in capsys.readouterr().out
    info = json.loads((out / "model.json").read_text())
    assert info["schedule"]["order"] == "Parallel(16, damping=(0.5, 0.25), max_step=1.0)"
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["accuracy"] > 0.5  # 10 classes
    with np.load(out / "checkpoint.npz") as f:  # one slot per chunk of the last batch
        assert f["fg.layer0.W.tau"].shape[0] <= 320 // 16


def test_whitened_run_stores_its_transform_for_evaluate_and_predict(tmp_path, capsys):
    from factorgraph.datasets import load_digits, Whitening

    out = tmp_path / "wh"
    assert run("train", "--model", TINY, "--epochs", 1, "--whiten", 0.1, "--out", out, "--no-progress") == 0
    info = json.loads((out / "model.json").read_text())
    assert info["whiten"] == {"eps": 0.1, "file": "whitening.npz"}
    m = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert run("evaluate", "--checkpoint", out / "checkpoint.npz") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test"]["accuracy"] == m["test"]["accuracy"] and again["test"]["nll"] == m["test"]["nll"]
    X, _ = load_digits()  # predict applies the stored scalar normalisation and whitening to raw inputs
    np.save(tmp_path / "x.npy", X[:5])
    assert run("predict", "--checkpoint", out / "checkpoint.npz", "--input", tmp_path / "x.npy",
               "--out", tmp_path / "p.npz") == 0
    from trainer import Trainer

    fg = Trainer.load(out / "checkpoint.npz").fg
    pre = info["preprocess"]
    with np.load(out / "whitening.npz") as f:
        w = Whitening(f["mean"], f["matrix"], float(f["scale"]))
    want = fg.predict_proba(w((X[:5] - pre["x_mean"]) / pre["x_std"]).reshape(5, -1), "argmax")
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_allclose(f["probabilities"], want, rtol=1e-12)
    (out / "whitening.npz").unlink()
    assert "cannot be read" in refused(capsys, "evaluate", "--checkpoint", out / "checkpoint.npz")


def test_evaluate_reproduces_test_metrics(digits_run, capsys):
    capsys.readouterr()
    out = digits_run / "eval.json"
    assert run("evaluate", "--checkpoint", digits_run / "checkpoint.npz", "--out", out) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((digits_run / "metrics.json").read_text())
    assert json.loads(out.read_text()) == printed
    for part in ("train", "test"):
        for k, v in saved[part].items():
            assert printed[part][k] == pytest.approx(v, rel=1e-12, abs=1e-12), (part, k)


def test_evaluate_other_mapping(digits_run, capsys):
    capsys.readouterr()
    assert run("evaluate", "--checkpoint", digits_run / "checkpoint.npz", "--mapping", "probit") == 0
    m = json.loads(capsys.readouterr().out)
    assert m["mapping"] == "probit" and 0 < m["test"]["nll"] < 10


def test_train_with_no_options_uses_embedded_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run("train") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test"]["accuracy"] > 0.9
    info = json.loads((run_dir / "model.json").read_text())
    assert info["templates"] == [[64], ["Linear", 64], ["LeakyReLU", 0.1], ["Linear", 10],
                                 ["Regression", 0.01]]


def test_predict_writes_probabilities(digits_run, tmp_path):
    from factorgraph.datasets import load_digits

    X, _ = load_digits()
    np.savez(tmp_path / "x.npz", X=X[:7])  # raw 8x8 images; the CLI normalises and flattens them
    np.save(tmp_path / "x.npy", X[:3].reshape(3, 64))
    assert run("predict", "--checkpoint", digits_run / "checkpoint.npz", "--input", tmp_path / "x.npz",
               "--out", tmp_path / "p.npz") == 0
    with np.load(tmp_path / "p.npz") as f:
        assert f["probabilities"].shape == (7, 10) and f["labels"].shape == (7,)
        assert f["mean"].shape == f["var"].shape == f["epistemic"].shape == (7, 10)
        np.testing.assert_allclose(f["probabilities"].sum(1), 1, atol=1e-6)
        np.testing.assert_allclose(f["var"], f["epistemic"] + f["aleatoric"])
        P7 = f["probabilities"]
    assert run("predict", "--checkpoint", digits_run / "checkpoint.npz", "--input", tmp_path / "x.npy",
               "--out", tmp_path / "q.npz") == 0
    with np.load(tmp_path / "q.npz") as f:
        np.testing.assert_allclose(f["probabilities"], P7[:3])


def test_graph_writes_png(tmp_path, capsys):
    out = tmp_path / "graph.png"
    assert run("graph", "--model", TINY, "--branches", 2, "--out", out) == 0
    check_png(out)
    text = capsys.readouterr().out
    assert "Schedule 'forward'" in text and "Schedule 'backward'" in text and "Schedule 'predict'" in text


def test_train_toy1d_regression(tmp_path):
    model = '[[1],["Linear",8],["LeakyReLU",0.1],["Linear",1],["Regression",0.0025]]'
    assert run("train", "--data", "toy1d", "--model", model, "--its", 5, "--out", tmp_path,
               "--no-progress") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test"]["n"] == 50 and np.isfinite(m["test"]["rmse"]) and "coverage_2sigma" in m["test"]
    check_png(tmp_path / "bands.png")
    assert json.loads((tmp_path / "model.json").read_text())["target"] == "float"


def test_train_uci_yacht_and_predict_in_original_units(tmp_path):
    from factorgraph.datasets import load_uci

    assert run("train", "--data", "uci:yacht:0", "--epochs", 2, "--out", tmp_path, "--no-progress") == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["test"]["n"] == 31 and m["test_original_units"]["rmse"] > m["test"]["rmse"]
    u = load_uci("yacht", 0)
    Xraw = u.X_test * u.x_std + u.x_mean
    np.save(tmp_path / "x.npy", Xraw)
    assert run("predict", "--checkpoint", tmp_path / "checkpoint.npz", "--input", tmp_path / "x.npy",
               "--out", tmp_path / "p.npz") == 0
    with np.load(tmp_path / "p.npz") as f:
        assert f["mean"].shape == f["var"].shape == (31, 1) and "probabilities" not in f.files
        rmse = float(np.sqrt(np.mean((f["mean"] - u.y_test_orig) ** 2)))
    assert rmse == pytest.approx(m["test_original_units"]["rmse"], rel=1e-9)


def test_npz_data_classification_and_regression(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    labels = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    np.savez(tmp_path / "cls.npz", X=X, y=labels)
    softmax = '[[3],["Linear",8],["LeakyReLU",0.1],["Linear",3],["Argmax",false]]'
    assert run("train", "--data", tmp_path / "cls.npz", "--model", softmax, "--batch-size", 50, "--epochs", 1,
               "--out", tmp_path / "c", "--no-progress") == 0
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["test"]["n"] == 24 and m["train"]["n"] == 96
    assert json.loads((tmp_path / "c" / "model.json").read_text())["target"] == "labels"

    np.savez(tmp_path / "reg.npz", X=X[:80], y=X[:80, 0] * 2.0, X_test=X[80:], y_test=X[80:, 0] * 2.0)
    assert run("train", "--data", tmp_path / "reg.npz", "--epochs", 1, "--out", tmp_path / "r",
               "--no-progress") == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["test"]["n"] == 40 and m["train"]["n"] == 80 and "rmse" in m["test"]
    assert run("evaluate", "--checkpoint", tmp_path / "r" / "checkpoint.npz") == 0


def test_model_from_toml_and_json_files(tmp_path):
    (tmp_path / "m.toml").write_text(
        'batch_size = 100\nseed = 3\ntemplates = [[64], ["Linear", 8], ["LeakyReLU", 0.1], ["Linear", 10], '
        '["Regression", 0.01]]\n')
    assert run("train", "--model", tmp_path / "m.toml", "--n-train", 200, "--n-test", 50, "--epochs", 1,
               "--out", tmp_path / "t", "--no-progress") == 0
    info = json.loads((tmp_path / "t" / "model.json").read_text())
    assert info["batch_size"] == 100 and info["seed"] == 3 and info["data"]["n_train"] == 200
    (tmp_path / "m.json").write_text(json.dumps({"templates": [[8, 8, 1], ["Flatten"], ["Linear", 10],
                                                               ["Regression", 0.01]]}))
    out = tmp_path / "g.png"
    assert run("graph", "--model", tmp_path / "m.json", "--branches", 1, "--out", out) == 0
    check_png(out)


def test_python_m_factorgraph_help():
    r = subprocess.run([sys.executable, "-m", "factorgraph", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    for cmd in ("train", "evaluate", "predict", "graph"):
        assert cmd in r.stdout


def test_importing_factorgraph_does_not_import_trainer():
    code = "import sys, factorgraph, factorgraph.__main__; print('trainer' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False"


@pytest.mark.parametrize("argv, expected", [
    (["train", "--data", "nope"], "unknown dataset 'nope'"),
    (["train", "--data", "uci:nope"], "unknown UCI dataset 'nope'"),
    (["train", "--data", "uci:yacht:99"], "split must be an integer in [0, 20)"),
    (["train", "--model", '[[64],["Linear",10'], "--model is not valid JSON"),
    (["train", "--model", '[[64],["Linar",10],["Regression",0.01]]'], "template 1: unknown layer 'Linar'"),
    (["train", "--model", '[[64],["Linear",-3],["Regression",0.01]]'], "template 1"),
    (["train", "--model", '[[64],["Regression",0.01],["Linear",10]]'], "template 1"),
    (["train", "--model", '{"templates":[[64],["Linear",10],["Regression",0.01]],"epochs":3}'],
     "unknown key"),
    (["train", "--model", "missing.toml"], "model file not found: missing.toml"),
    (["train", "--data", "missing.npz"], "data file not found: missing.npz"),
    (["train", "--model", '[[784],["Linear",10],["Regression",0.01]]'], "input shape (784,)"),
    (["train", "--model", '[[64],["Linear",5],["Regression",0.01]]'], "has 10 classes"),
    (["train", "--data", "toy1d", "--model", '[[1],["Linear",3],["Softmax"]]'], "needs integer class labels"),
    (["train", "--data", "toy1d", "--model", '[[1],["Linear",3],["Regression",0.01]]'],
     "targets have shape (1,)"),
    (["train", "--n-train", "100000"], "larger than the"),
    (["train", "--staircase", "2", "--epochs", "3"], "either --staircase"),
    (["train", "--order", "Parallel(0)"], "bad order 'Parallel(0)': ValueError: chunk_size"),
    (["train", "--order", "__import__('os')"], "NameError"),
    (["train", "--order", "3"], "'3' is not an order"),
    (["train", "--whiten", "0"], "--whiten: must be a positive number"),
    (["train", "--model", TINY, "--order", "Parallel(8, (0.5, 0.5, 0.5))"],
     "3 dampings but the graph has 2 weighted layers"),
    (["train", "--epochs", "0"], "--epochs"),
    (["evaluate", "--checkpoint", "missing/checkpoint.npz"], "checkpoint not found"),
    (["graph", "--model", '[[64],["Linear",10],["Regression",0.01]]', "--branches", "999"], "--branches"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, expected):
    err = refused(capsys, *argv)
    assert expected in err


def test_bad_input_files(capsys, tmp_path, digits_run):
    ckpt = digits_run / "checkpoint.npz"
    (tmp_path / "bad.json").write_text("[[64], [\"Linear\", 10],")
    assert "malformed JSON" in refused(capsys, "train", "--model", tmp_path / "bad.json")
    (tmp_path / "bad.toml").write_text("templates = [[64]\n")
    assert "malformed TOML" in refused(capsys, "train", "--model", tmp_path / "bad.toml")
    np.savez(tmp_path / "noy.npz", X=np.zeros((5, 2)))
    assert "missing y" in refused(capsys, "train", "--data", tmp_path / "noy.npz")
    np.savez(tmp_path / "rows.npz", X=np.zeros((5, 2)), y=np.zeros(4, dtype=int))
    assert "rows" in refused(capsys, "train", "--data", tmp_path / "rows.npz")
    np.savez(tmp_path / "nan.npz", X=np.full((10, 64), np.nan), y=np.arange(10) % 10)
    assert "NaN" in refused(capsys, "train", "--data", tmp_path / "nan.npz", "--model", TINY)
    assert "not a checkpoint" in refused(capsys, "evaluate", "--checkpoint", digits_run / "model.json")
    assert "input file not found" in refused(capsys, "predict", "--checkpoint", ckpt,
                                             "--input", tmp_path / "x.npz")
    np.save(tmp_path / "x6.npy", np.zeros((4, 6)))
    assert "input shape (64,)" in refused(capsys, "predict", "--checkpoint", ckpt,
                                          "--input", tmp_path / "x6.npy")
    assert "does not fit toy1d" in refused(capsys, "evaluate", "--checkpoint", ckpt, "--data", "toy1d")
