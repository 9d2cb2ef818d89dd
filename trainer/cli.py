"""The ``factorgraph`` command line: ``train``, ``evaluate``, ``predict`` and ``graph``.

::

    factorgraph train                                   # digits (embedded), default MLP, a few seconds
    factorgraph train --data fashion-mnist --n-train 640 --staircase 9 --model \\
        '[[784],["Linear",256],["LeakyReLU",0.1],["Linear",10],["Argmax",true]]'
    factorgraph train --data uci:yacht:0 --out runs/yacht0
    factorgraph train --data toy1d --its 100
    factorgraph train --data mydata.npz --model model.toml --epochs 5 --its 2
    factorgraph train --data fashion-mnist --n-train 5120 --staircase 2 \\
        --order "Parallel(32, 0.5, max_step=1.0)"
    factorgraph evaluate --checkpoint runs/yacht0/checkpoint.npz [--data uci:yacht:1] [--out m.json]
    factorgraph predict --checkpoint runs/x/checkpoint.npz --input X.npz [--out preds.npz]
    factorgraph graph --model model.json --branches 2 --out graph.png

The model is a list of layer templates (see :mod:`layers.dsl`), given inline as JSON or as a ``.json`` /
``.toml`` file holding either the list or a table ``{templates = [...], batch_size = 320, seed = 98,
dtype = "float64"}``.  Data is named (``digits``, ``digits:<size>``, ``fashion-mnist``,
``uci:<name>[:<split>]``, ``toy1d``) or a path to an ``.npz`` file with arrays ``X``, ``y`` and
optionally ``X_test``, ``y_test`` (integer ``y`` of shape (n,) = class labels, float ``y`` = regression
targets; without a test part 20 % of the examples are held out).

``train`` writes into ``--out`` (default ``runs/<timestamp>``): ``checkpoint.npz`` (:meth:`Trainer.save`),
``model.json`` (templates, data spec, preprocessing, schedule and order), ``whitening.npz`` (with
``--whiten``), ``metrics.json`` (train and test metrics)
and PNG plots (a reliability diagram and relative calibration curve for classification, predictive bands
for 1-D regression).  Every bad input ends with a one-line message on stderr and exit status 2.
"""

import argparse
import contextlib
import json
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROG = "factorgraph"
MODEL_FORMAT = "factorgraph-cli-1"
#: seed of the data splits and of the toy data (the thesis' global seed)
DATA_SEED = 98
DEFAULT_SEED = 98
DEFAULT_BATCH = 320
DATA_NAMES = "digits, digits:<size>, fashion-mnist, uci:<name>[:<split>], toy1d, or a path to an .npz file"
MODEL_KEYS = ("templates", "batch_size", "seed", "dtype")


class CLIError(Exception):
    """A bad input: reported as one line on stderr with exit status 2."""


@contextlib.contextmanager
def _user_errors(prefix=""):
    """Turn the library's input errors into :class:`CLIError` (with ``prefix``)."""
    try:
        yield
    except CLIError:
        raise
    except (ValueError, TypeError, KeyError, FileNotFoundError, ImportError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CLIError(f"{prefix}{msg}") from None


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        return o.item()
    return o


def _write_json(path, obj):
    Path(path).write_text(json.dumps(_jsonable(obj), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
@dataclass
class Data:
    """A train/test pair in model space (after preprocessing) with what is needed to undo it."""

    name: str
    task: str  # "classification" or "regression"
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = None
    #: raw -> model space: (X - x_mean) / x_std, (y - y_mean) / y_std (None: identity)
    preprocess: dict = field(default_factory=dict)
    default_model: dict = field(default_factory=dict)
    default_schedule: object = None
    #: targets in original units for UCI sets (metrics in original units)
    y_test_orig: np.ndarray = None
    y_train_orig: np.ndarray = None

    @property
    def spec(self):
        return {"name": self.name, "n_train": int(self.X_train.shape[0]), "n_test": int(self.X_test.shape[0]),
                "data_seed": DATA_SEED}


def _take(X, y, n, what, name):
    if n is None:
        return X, y
    if n > X.shape[0]:
        raise CLIError(f"--{what.replace('_', '-')} {n} is larger than the {X.shape[0]} {what.split('_')[1]} "
                       f"examples of {name}")
    return X[:n], y[:n]


def _classifier_default(example_shape, C, hidden=(64,)):
    t = [[int(np.prod(example_shape))]]
    for h in hidden:
        t += [["Linear", h], ["LeakyReLU", 0.1]]
    return {"templates": t + [["Linear", int(C)], ["Regression", 0.01]], "batch_size": DEFAULT_BATCH}


def _regressor_default(d_in, d_out, hidden=50, beta2=0.01, batch_size=DEFAULT_BATCH):
    return {"templates": [[int(d_in)], ["Linear", int(hidden)], ["LeakyReLU", 0.1], ["Linear", int(d_out)],
                          ["Regression", beta2]], "batch_size": batch_size}


def _normalise_images(name, Xtr, ytr, Xte, yte):
    from factorgraph.datasets import normalise

    r = normalise(Xtr, Xte)
    return Data(name, "classification", r.train, ytr, r.test, yte, num_classes=10,
                preprocess={"x_mean": r.mean, "x_std": r.std})


def toy1d(n=250, seed=DATA_SEED):
    """The thesis 1-D toy (SPEC 10.3): x = 2 U[0, 1), y = g(x) + N(0, 0.05^2) with
    g(x) = 0.5 x + 0.2 sin(2 pi x) + 0.3 sin(4 pi x); the first 80 % train, the rest test."""
    rng = np.random.default_rng(seed)
    x = 2.0 * rng.random((n, 1))
    y = 0.5 * x + 0.2 * np.sin(2 * np.pi * x) + 0.3 * np.sin(4 * np.pi * x) + 0.05 * rng.normal(size=x.shape)
    k = int(0.8 * n)
    return x[:k], y[:k], x[k:], y[k:]


def _load_npz(path):
    from factorgraph.datasets import train_test_split

    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CLIError(f"cannot read {path} as an .npz file: {e}") from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise CLIError(f"{path} must hold arrays X and y (optionally X_test, y_test); missing "
                       f"{', '.join(missing)}; found {', '.join(sorted(arrays)) or 'nothing'}")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise CLIError(f"{path} must hold both X_test and y_test or neither")
    for k, a in arrays.items():
        if k in ("X", "y", "X_test", "y_test") and (a.dtype == object or not np.issubdtype(a.dtype, np.number)
                                                     and a.dtype != bool):
            raise CLIError(f"{path}: array {k} must be numeric, got dtype {a.dtype}")
    X, y = arrays["X"], arrays["y"]
    if X.ndim < 2 or X.shape[0] == 0:
        raise CLIError(f"{path}: X must have shape (n, ...) with n >= 1, got {X.shape}")
    integer = np.issubdtype(y.dtype, np.integer) or y.dtype == bool
    task = "classification" if integer else "regression"

    def targets(y, Xk, k):
        if y.shape[0] != Xk.shape[0]:
            raise CLIError(f"{path}: {k} has {y.shape[0]} rows but X{k[1:]} has {Xk.shape[0]}")
        if task == "classification":
            if y.ndim != 1:
                raise CLIError(f"{path}: integer {k} must hold class labels of shape (n,), got {y.shape}")
            if y.size and y.min() < 0:
                raise CLIError(f"{path}: class labels in {k} must be >= 0, got {y.min()}")
            return y.astype(np.int64)
        if (np.issubdtype(y.dtype, np.integer) or y.dtype == bool) and y.ndim:
            raise CLIError(f"{path}: {k} must be float regression targets like y, got dtype {y.dtype}")
        return y.reshape(y.shape[0], -1).astype(np.float64) if y.ndim == 1 else y.astype(np.float64)

    y = targets(y, X, "y")
    if "X_test" in arrays:
        Xte, yte = arrays["X_test"], arrays["y_test"]
        if Xte.shape[1:] != X.shape[1:]:
            raise CLIError(f"{path}: X_test examples have shape {Xte.shape[1:]} but X examples {X.shape[1:]}")
        yte = targets(yte, Xte, "y_test")
        Xtr, ytr = X, y
    else:
        if X.shape[0] < 2:
            raise CLIError(f"{path}: need at least 2 examples to hold out a test part, got {X.shape[0]}")
        Xtr, ytr, Xte, yte = train_test_split(X, y, 0.2, seed=DATA_SEED)
    if task == "regression" and ytr.shape[1:] != yte.shape[1:]:
        raise CLIError(f"{path}: y has targets of shape {ytr.shape[1:]} but y_test {yte.shape[1:]}")
    d_in = int(np.prod(X.shape[1:]))
    if task == "classification":
        C = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
        C = max(C, 2)
        return Data(str(path), task, Xtr, ytr, Xte, yte, num_classes=C,
                    default_model=_classifier_default(X.shape[1:], C), default_schedule=("staircase", 3))
    return Data(str(path), task, Xtr, ytr, Xte, yte, default_model=_regressor_default(d_in, ytr.shape[1]),
                default_schedule=("staircase", 5))


def load_data(name, n_train=None, n_test=None):
    """Load the data set ``name`` (see :data:`DATA_NAMES`) as :class:`Data`; ``n_train`` / ``n_test`` keep
    the first n examples of the (seeded, permuted) training / test part."""
    from factorgraph import datasets

    if not isinstance(name, str) or not name.strip():
        raise CLIError(f"empty data name; use {DATA_NAMES}")
    key = name.strip()
    low = key.lower()
    if low == "digits" or low.startswith("digits:"):
        size = None
        if ":" in low:
            s = low.split(":", 1)[1]
            if not s.isdigit() or int(s) < 1:
                raise CLIError(f"bad data name {name!r}: digits:<size> needs a positive image size "
                               f"such as 28")
            size = int(s) if int(s) != 8 else None
        with _user_errors("digits: "):
            X, y = datasets.load_digits(upsample_to=size)
            Xtr, ytr, Xte, yte = datasets.train_test_split(X, y, 0.2, seed=DATA_SEED)
        Xtr, ytr = _take(Xtr, ytr, n_train, "n_train", key)
        Xte, yte = _take(Xte, yte, n_test, "n_test", key)
        d = _normalise_images(key, Xtr, ytr, Xte, yte)
        d.default_model = _classifier_default(Xtr.shape[1:], 10)
        d.default_schedule = ("staircase", 3)
        return d
    if low in ("fashion-mnist", "fashion_mnist", "fashionmnist", "fmnist"):
        with _user_errors("fashion-mnist: "):
            dd = datasets.load_fashion_mnist(n_train=n_train, n_test=n_test, seed=DATA_SEED)
        d = _normalise_images("fashion-mnist", *dd)
        d.default_model = _classifier_default(dd.X_train.shape[1:], 10, hidden=(256, 256))
        d.default_schedule = ("staircase", 3)
        return d
    if low.startswith("uci:") or low == "uci":
        parts = key.split(":")
        if len(parts) not in (2, 3) or not parts[1]:
            raise CLIError(f"bad data name {name!r}: use uci:<name>[:<split>] with a name from "
                           f"{', '.join(datasets.list_uci())}")
        split = 0
        if len(parts) == 3:
            if not parts[2].isdigit():
                raise CLIError(f"bad data name {name!r}: the split must be a non-negative integer, "
                               f"got {parts[2]!r}")
            split = int(parts[2])
        with _user_errors(f"{key}: "):
            u = datasets.load_uci(parts[1], split)
        Xtr, ytr = _take(u.X_train, u.y_train, n_train, "n_train", key)
        Xte, yte = _take(u.X_test, u.y_test, n_test, "n_test", key)
        return Data(f"uci:{u.name}:{u.split}", "regression", Xtr, ytr, Xte, yte,
                    preprocess={"x_mean": u.x_mean, "x_std": u.x_std, "y_mean": u.y_mean, "y_std": u.y_std},
                    default_model=_regressor_default(Xtr.shape[1], 1, hidden=u.n_hidden),
                    default_schedule=("staircase", 5),
                    y_train_orig=u.y_train_orig[:Xtr.shape[0]], y_test_orig=u.y_test_orig[:Xte.shape[0]])
    if low in ("toy1d", "toy"):
        Xtr, ytr, Xte, yte = toy1d()
        Xtr, ytr = _take(Xtr, ytr, n_train, "n_train", key)
        Xte, yte = _take(Xte, yte, n_test, "n_test", key)
        m = {"templates": [[1], ["Linear", 16], ["LeakyReLU", 0.1], ["Linear", 16], ["LeakyReLU", 0.1],
                           ["Linear", 1], ["Regression", 0.05 ** 2]], "batch_size": 200}
        return Data("toy1d", "regression", Xtr, ytr, Xte, yte, default_model=m,
                    default_schedule=("constant", 1, 100))
    path = Path(key)
    if path.suffix.lower() == ".npz" or path.exists():
        if not path.is_file():
            raise CLIError(f"data file not found: {key}")
        if path.suffix.lower() != ".npz":
            raise CLIError(f"data file {key} must be an .npz file with arrays X and y")
        d = _load_npz(path.resolve())
        d.X_train, d.y_train = _take(d.X_train, d.y_train, n_train, "n_train", key)
        d.X_test, d.y_test = _take(d.X_test, d.y_test, n_test, "n_test", key)
        return d
    raise CLIError(f"unknown dataset {name!r}; use {DATA_NAMES}")


# ---------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------
def _to_templates(raw, where):
    if not isinstance(raw, list) or not raw:
        raise CLIError(f"{where}: templates must be a non-empty list such as "
                       f'[[64],["Linear",10],["Regression",0.01]], got {json.dumps(raw)[:80]}')
    out = []
    for k, t in enumerate(raw):
        if k == 0:
            out.append(tuple(t) if isinstance(t, list) else t)
        elif isinstance(t, list):
            out.append(tuple(t))
        else:
            raise CLIError(f"{where}: template {k} must be a list [name, *args] such as [\"Linear\", 10], "
                           f"got {json.dumps(t)}")
    return out


def parse_model(arg):
    """``--model``: inline JSON (a list of templates or an object) or a .json / .toml file.  Returns a
    dict with ``templates`` (as tuples) and, where given, ``batch_size``, ``seed``, ``dtype``."""
    text = arg.strip()
    if text.startswith(("[", "{")):
        where = "--model"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"--model is not valid JSON ({e}); expected a list of layer templates such as "
                           f'[[64],["Linear",10],["Regression",0.01]]') from None
    else:
        path = Path(text)
        where = str(path)
        if not path.is_file():
            raise CLIError(f"model file not found: {arg} (--model takes a JSON list of layer templates or a "
                           f".json/.toml file)")
        try:
            if path.suffix.lower() == ".toml":
                import tomllib

                with open(path, "rb") as f:
                    raw = tomllib.load(f)
            else:
                raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CLIError(f"{path}: malformed JSON ({e})") from None
        except ValueError as e:  # tomllib.TOMLDecodeError, UnicodeDecodeError
            raise CLIError(f"{path}: malformed TOML ({e})") from None
    if isinstance(raw, list):
        raw = {"templates": raw}
    if not isinstance(raw, dict):
        raise CLIError(f"{where}: expected a list of templates or an object with 'templates', "
                       f"got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(MODEL_KEYS))
    if unknown:
        raise CLIError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(MODEL_KEYS)}")
    if "templates" not in raw:
        raise CLIError(f"{where}: missing 'templates' (the list of layer templates)")
    model = {"templates": _to_templates(raw["templates"], where)}
    for k in ("batch_size", "seed"):
        if k in raw and raw[k] is not None:
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k == "batch_size" else 0):
                kind = "positive" if k == "batch_size" else "non-negative"
                raise CLIError(f"{where}: {k} must be a {kind} integer, got {v!r}")
            model[k] = v
    if "dtype" in raw:
        if raw["dtype"] not in ("float32", "float64"):
            raise CLIError(f"{where}: dtype must be \"float32\" or \"float64\", got {raw['dtype']!r}")
        model["dtype"] = raw["dtype"]
    return model


def build_graph(templates, batch_size, seed, dtype):
    from layers.dsl import create_factor_graph

    with _user_errors("invalid model: "):
        return create_factor_graph(templates, batch_size, seed=seed, dtype=dtype)


def _head(fg):
    return fg.signal.kind


def fit_data(fg, data, X):
    """Reshape ``X`` (n, ...) to the graph's input shape (row-major) or raise a clear error."""
    X = np.asarray(X)
    shape = fg.input_shape
    if X.shape[1:] == shape:
        return X
    if int(np.prod(X.shape[1:])) == int(np.prod(shape)):
        return X.reshape((X.shape[0],) + shape)
    raise CLIError(f"the model's input shape {shape} ({int(np.prod(shape))} values) does not fit {data} "
                   f"examples of shape {tuple(X.shape[1:])} ({int(np.prod(X.shape[1:]))} values)")


WHITENING_FILE = "whitening.npz"


def _load_whitening(checkpoint, info):
    """The :class:`factorgraph.datasets.Whitening` a run was trained with (``None`` without one)."""
    from factorgraph.datasets import Whitening

    if not info.get("whiten"):
        return None
    path = Path(checkpoint).parent / info["whiten"]["file"]
    try:
        return Whitening.load(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise CLIError(f"the model was trained on whitened inputs but {path} cannot be read: {e}") from None


def _whiten(w, X, what):
    if w is None:
        return X
    with _user_errors(f"{what}: "):
        return w(X)


def targets_for(fg, data):
    """Training targets and evaluation targets for the graph's head: ``(Y_train, kind)`` with ``kind`` one of
    ``labels`` (Argmax/Softmax on class labels), ``onehot`` (a regression head on one-hot targets; evaluated
    with labels) or ``float`` (regression)."""
    probs = fg.signal.output == "probabilities"
    out = fg.output_shape
    if data.task == "classification":
        C = int(out[0]) if len(out) == 1 else None
        top = int(max(data.y_train.max(initial=0), data.y_test.max(initial=0)))
        need = max(data.num_classes or 0, top + 1)
        if C is None or C < need:
            raise CLIError(f"the model outputs shape {tuple(out)} but {data.name} has {need} classes "
                           f"(labels 0..{need - 1}); end the model with [\"Linear\", {need}] before the head")
        if C < 2:
            raise CLIError(f"a classifier needs at least 2 outputs, the model has {C}")
        if probs:
            return data.y_train, "labels"
        return np.eye(C)[data.y_train], "onehot"
    if probs:
        raise CLIError(f"the {_head(fg)} head needs integer class labels, but {data.name} holds float "
                       f"regression targets (class labels must be stored as integers); use a "
                       f"[\"Regression\", beta2] head")
    if tuple(data.y_train.shape[1:]) != tuple(out):
        raise CLIError(f"the model predicts shape {tuple(out)} per example but {data.name} targets have "
                       f"shape {tuple(data.y_train.shape[1:])}")
    return data.y_train, "float"


def make_schedule(args, default):
    from schedules import Constant, Staircase

    if args.staircase is not None and (args.epochs is not None or args.its is not None):
        raise CLIError("use either --staircase N or --epochs/--its, not both")
    if args.staircase is not None:
        return Staircase(args.staircase)
    if args.epochs is not None or args.its is not None:
        return Constant(args.epochs or 1, args.its or 1)
    if default[0] == "staircase":
        return Staircase(default[1])
    return Constant(default[1], default[2])


def parse_order(s):
    """An argparse type: :func:`schedules.parse_order` (a bad expression is a one-line usage error)."""
    from schedules import parse_order as parse

    try:
        return parse(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_mapping(s):
    if s in ("argmax", "probit"):
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'argmax', 'probit' or a noise variance >= 0, "
                                         f"got {s!r}") from None
    if not np.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"the noise variance must be finite and >= 0, got {s!r}")
    return v


# ---------------------------------------------------------------------------------------------------
# metrics, plots
# ---------------------------------------------------------------------------------------------------
def compute_metrics(fg, data, X_train, X_test, target, mapping="argmax"):
    """Train and test metrics (``fg.evaluate``); for UCI also the test metrics in original target units."""
    from factorgraph import metrics

    out = {}
    with _user_errors("evaluation: "):
        for part, X, y in (("train", X_train, data.y_train), ("test", X_test, data.y_test)):
            if X.shape[0]:
                out[part] = fg.evaluate(X, y, mapping=mapping) if target != "float" else fg.evaluate(X, y)
        if data.y_test_orig is not None and target == "float" and X_test.shape[0]:
            p = data.preprocess
            mean, var = fg.predict(X_test)
            out["test_original_units"] = metrics.regression_metrics(
                mean * p["y_std"] + p["y_mean"], var * p["y_std"] ** 2, data.y_test_orig)
    return out


def write_plots(fg, data, X_train, X_test, target, out_dir, mapping="argmax"):
    """PNG plots into ``out_dir``; returns the paths written (a warning, not an error, without matplotlib)."""
    from factorgraph import plots

    paths = []
    try:
        if target in ("labels", "onehot") and X_test.shape[0]:
            P = fg.predict_proba(X_test, mapping)
            paths.append(plots.reliability_diagram(P, data.y_test, out_dir / "reliability.png",
                                                   title=f"{data.name} test, {_head(fg)} head"))
            paths.append(plots.relative_calibration_plot({_head(fg): (P, data.y_test)},
                                                         out_dir / "relative_calibration.png"))
        elif target == "float" and fg.input_shape == (1,) and fg.output_shape == (1,):
            lo = float(min(X_train.min(), X_test.min() if X_test.size else X_train.min()))
            hi = float(max(X_train.max(), X_test.max() if X_test.size else X_train.max()))
            pad = 0.5 * (hi - lo) or 1.0
            grid = np.linspace(lo - pad, hi + pad, 400)[:, None]
            mean, var = fg.predict(grid)
            title = f"{data.name}: predictive mean and 1/2/3 sd"
            paths.append(plots.predictive_bands(grid, mean, var, out_dir / "bands.png", x_train=X_train,
                                                y_train=data.y_train, title=title))
    except ImportError as e:
        print(f"{PROG}: warning: plots skipped ({e})", file=sys.stderr)
    return paths


def _summary(m):
    keys = ("accuracy", "nll", "ece", "thesis_ece", "rmse", "coverage_2sigma")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _progress(args):
    return False if args.no_progress else None


# ---------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------
def cmd_train(args):
    from factorgraph import guards
    from trainer import Trainer

    model = parse_model(args.model) if args.model is not None else None
    data = load_data(args.data, args.n_train, args.n_test)
    if model is None:
        model = {"templates": _to_templates(data.default_model["templates"], "default model")}
    batch_size = (args.batch_size or model.get("batch_size")
                  or data.default_model.get("batch_size", DEFAULT_BATCH))
    seed = args.seed if args.seed is not None else model.get("seed", DEFAULT_SEED)
    dtype = args.dtype or model.get("dtype", "float64")
    schedule = make_schedule(args, data.default_schedule)
    fg = build_graph(model["templates"], batch_size, seed, dtype)
    whitening = None
    if args.whiten is not None:
        from factorgraph.datasets import Whitening

        with _user_errors(f"{data.name}: --whiten: "):
            whitening = Whitening.fit(data.X_train, eps=args.whiten)
    X_train = fit_data(fg, data.name, _whiten(whitening, data.X_train, data.name))
    X_test = fit_data(fg, data.name, _whiten(whitening, data.X_test, data.name))
    Y, target = targets_for(fg, data)
    with _user_errors(f"{data.name}: "):
        tr = Trainer(fg, X_train, Y, order=args.order, progress=_progress(args))
        fg._check_inputs(X_test, "X_test")

    out_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create output folder {out_dir}: {e}") from None

    print(f"data: {data.name} ({X_train.shape[0]} train, {X_test.shape[0]} test, {data.task}); "
          f"model: {fg.num_parameters()} parameters, {_head(fg)} head, batch {fg.batch_size}; {schedule}"
          f"{f', order {args.order}' if args.order is not None else ''}")
    guards.reset()
    t0 = time.perf_counter()
    tr.train(schedule=schedule)
    seconds = time.perf_counter() - t0
    m = compute_metrics(fg, data, X_train, X_test, target, args.mapping)
    m.update({"train_seconds": seconds, "guards": guards.counts(), "mapping": args.mapping})

    tr.save(out_dir / "checkpoint.npz")
    if whitening is not None:
        whitening.save(out_dir / WHITENING_FILE)
    info = {
        "format": MODEL_FORMAT,
        "templates": model["templates"],
        "batch_size": fg.batch_size,
        "seed": seed,
        "dtype": fg.dtype.name,
        "input_shape": fg.input_shape,
        "output_shape": fg.output_shape,
        "head": _head(fg),
        "target": target,
        "task": data.task,
        "num_classes": data.num_classes,
        "data": data.spec,
        "preprocess": data.preprocess,
        "schedule": {"name": schedule.name, "iterations": schedule.iterations,
                     "order": str(args.order or "Shuffled()")},
        "mapping": args.mapping,
        "whiten": {"eps": args.whiten, "file": WHITENING_FILE} if whitening is not None else None,
    }
    _write_json(out_dir / "model.json", info)
    _write_json(out_dir / "metrics.json", m)
    pngs = write_plots(fg, data, X_train, X_test, target, out_dir, args.mapping)
    print(f"trained in {seconds:.1f} s")
    for part in ("train", "test", "test_original_units"):
        if part in m:
            print(f"{part}: {_summary(m[part])}")
    names = (["checkpoint.npz", "model.json", "metrics.json"]
             + ([WHITENING_FILE] if whitening is not None else []) + [Path(p).name for p in pngs])
    print(f"wrote {out_dir}/{{{','.join(names)}}}")
    return 0


def _load_checkpoint(path):
    from trainer import Trainer

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(p):
        raise CLIError(f"{path} is not a checkpoint (an .npz file written by `factorgraph train`)")
    try:
        tr = Trainer.load(p, progress=False)
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise CLIError(f"cannot load checkpoint {path}: {e}") from None
    info = {}
    mj = p.parent / "model.json"
    if mj.is_file():
        try:
            info = json.loads(mj.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CLIError(f"cannot read {mj}: {e}") from None
    return tr, info


def cmd_evaluate(args):
    tr, info = _load_checkpoint(args.checkpoint)
    fg = tr.fg
    if args.data is not None:
        data = load_data(args.data, args.n_train, args.n_test)
    elif info.get("data"):
        spec = info["data"]
        data = load_data(spec["name"], args.n_train or spec.get("n_train"), args.n_test or spec.get("n_test"))
    else:
        raise CLIError(f"no model.json next to {args.checkpoint} names the data; pass --data")
    w = _load_whitening(args.checkpoint, info)
    X_train = fit_data(fg, data.name, _whiten(w, data.X_train, data.name))
    X_test = fit_data(fg, data.name, _whiten(w, data.X_test, data.name))
    _, target = targets_for(fg, data)
    mapping = args.mapping if args.mapping is not None else info.get("mapping", "argmax")
    m = compute_metrics(fg, data, X_train, X_test, target, mapping)
    m["data"] = data.spec
    m["mapping"] = mapping
    text = json.dumps(_jsonable(m), indent=2)
    print(text)
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        except OSError as e:
            raise CLIError(f"cannot write {args.out}: {e}") from None
    return 0


def _read_input(path):
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"input file not found: {path}")
    try:
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as f:
                keys = list(f.files)
                if "X" in keys:
                    return f["X"]
                if len(keys) == 1:
                    return f[keys[0]]
            raise CLIError(f"{path} must hold an array X (found {', '.join(keys) or 'nothing'})")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise CLIError(f"cannot read {path}: {e}") from None
    raise CLIError(f"--input must be an .npy or .npz file, got {path}")


def cmd_predict(args):
    tr, info = _load_checkpoint(args.checkpoint)
    fg = tr.fg
    X = _read_input(args.input)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise CLIError(f"{args.input}: X must be numeric, got dtype {X.dtype}")
    if X.ndim == len(fg.input_shape) and X.shape == fg.input_shape:
        X = X[None]
    if X.ndim < 2:
        shape = ", ".join(map(str, fg.input_shape))
        raise CLIError(f"{args.input}: X must have shape (n, {shape}), got {X.shape}")
    pre = info.get("preprocess") or {}
    X = X.astype(np.float64)
    if "x_mean" in pre:
        x_mean, x_std = np.asarray(pre["x_mean"]), np.asarray(pre["x_std"])
        if x_mean.ndim and X.shape[-1] != x_mean.shape[-1] and X.ndim == 2:
            raise CLIError(f"{args.input}: X has {X.shape[-1]} features but the model was trained on "
                           f"{x_mean.shape[-1]}")
        X = (X - x_mean) / x_std
    X = fit_data(fg, args.input, _whiten(_load_whitening(args.checkpoint, info), X, args.input))
    mapping = args.mapping if args.mapping is not None else info.get("mapping", "argmax")
    out = {}
    with _user_errors(f"{args.input}: "):
        if fg.signal.output == "probabilities":
            out["probabilities"] = fg.predict(X)
        else:
            mean, epi, ale = fg.predict(X, split=True)
            if "y_mean" in pre:
                s2 = float(pre["y_std"]) ** 2
                mean, epi, ale = mean * float(pre["y_std"]) + float(pre["y_mean"]), epi * s2, ale * s2
            out.update(mean=mean, var=epi + ale, epistemic=epi, aleatoric=ale)
            if info.get("target") == "onehot":
                out["probabilities"] = fg.predict_proba(X, mapping)
        if "probabilities" in out:
            out["labels"] = out["probabilities"].argmax(axis=1)
    dest = Path(args.out)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        np.savez(dest, **out)
    except OSError as e:
        raise CLIError(f"cannot write {dest}: {e}") from None
    print(f"wrote {dest}: " + ", ".join(f"{k} {v.shape}" for k, v in out.items()))
    return 0


def cmd_graph(args):
    if args.model is not None:
        model = parse_model(args.model)
    else:
        d = _classifier_default((64,), 10)
        model = {"templates": _to_templates(d["templates"], "default model")}
    batch_size = args.batch_size or model.get("batch_size") or DEFAULT_BATCH
    fg = build_graph(model["templates"], batch_size, model.get("seed", DEFAULT_SEED),
                     model.get("dtype", "float64"))
    if args.branches < 0 or args.branches > fg.batch_size:
        raise CLIError(f"--branches must be between 0 and the batch size {fg.batch_size}, "
                       f"got {args.branches}")
    print(repr(fg))
    for name in ("forward", "backward", "predict"):
        print(fg.schedules[name])
    out = Path(args.out)
    try:
        fg.draw(out, branches=args.branches)
    except ImportError as e:
        raise CLIError(f"drawing needs matplotlib (pip install 'factorgraph[plot]'): {e}") from None
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot draw to {out}: {e}") from None
    G = fg.graph(args.branches)
    print(f"wrote {out} ({G.number_of_nodes()} nodes, {G.number_of_edges()} edges, {args.branches} training "
          f"branches and the predictive branch)")
    return 0


# ---------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------
def _int_at_least(lo, what):
    """An argparse type: an integer >= ``lo`` (``what`` names it in the error)."""

    def parse(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {s!r}")
        return v

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


def _positive_float(s):
    """An argparse type: a finite number > 0."""
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is None or not 0 < v < np.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}")
    return v


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Bayesian neural networks trained by Gaussian message "
                                "passing: train, evaluate, predict, draw the factor graph.")
    sub = p.add_subparsers(dest="command", metavar="{train,evaluate,predict,graph}", required=True)
    model_help = ("layer templates as inline JSON, e.g. '[[64],[\"Linear\",64],[\"LeakyReLU\",0.1],"
                  "[\"Linear\",10],[\"Regression\",0.01]]', or a .json/.toml file with {templates, "
                  "batch_size, seed, dtype}")
    data_help = f"data set: {DATA_NAMES}"

    t = sub.add_parser("train", help="train a model and write checkpoint, metrics and plots",
                       description="Train a model; writes checkpoint.npz, model.json, metrics.json and PNG "
                                   "plots into --out.")
    t.add_argument("--model", help=model_help + " (default: a small MLP with a Regression head for the data)")
    t.add_argument("--data", default="digits", help=data_help + " (default: digits)")
    t.add_argument("--n-train", type=_positive_int, help="keep the first N training examples")
    t.add_argument("--n-test", type=_positive_int, help="keep the first N test examples")
    t.add_argument("--batch-size", type=_positive_int,
                   help="examples per batch (default: from the model file, else 320; toy1d 200)")
    t.add_argument("--seed", type=_nonneg_int, help="seed of the graph's priors and orders (default 98)")
    t.add_argument("--dtype", choices=("float64", "float32"), help="floating point type (default float64)")
    t.add_argument("--epochs", type=_positive_int, help="constant schedule: number of epochs (default 1)")
    t.add_argument("--its", type=_positive_int, help="constant schedule: iterations per epoch (default 1)")
    t.add_argument("--staircase", type=_positive_int, metavar="N",
                   help="staircase schedule 1,1,2,2,...,N,N (default: staircase 3; toy1d 1 epoch x 100 "
                        "iterations; UCI staircase 5)")
    t.add_argument("--order", type=parse_order,
                   help="within-batch order, e.g. 'Parallel(64, 0.25, max_step=1.0)' (the batched schedule; "
                        "default Shuffled(), the thesis schedule)")
    t.add_argument("--whiten", type=_positive_float, metavar="EPS",
                   help="ZCA-whiten the inputs (fitted on the training part, eps EPS, e.g. 0.1; stored next "
                        "to the checkpoint and applied by evaluate and predict)")
    t.add_argument("--mapping", type=parse_mapping, default="argmax",
                   help="probabilities of a regression head on one-hot targets: argmax (noise 0.3), probit, "
                        "or an argmax noise variance (default argmax)")
    t.add_argument("--out", help="output folder (default runs/<timestamp>)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: shown on a terminal)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on its data (or --data)",
                       description="Load a checkpoint and print train and test metrics as JSON.")
    e.add_argument("--checkpoint", required=True, help="checkpoint.npz written by train")
    e.add_argument("--data",
                   help=data_help + " (default: the data named in model.json next to the checkpoint)")
    e.add_argument("--n-train", type=_positive_int, help="keep the first N training examples")
    e.add_argument("--n-test", type=_positive_int, help="keep the first N test examples")
    e.add_argument("--mapping", type=parse_mapping, help="probability mapping of a regression head "
                                                         "(default: the one used in training)")
    e.add_argument("--out", help="also write the metrics JSON to this file")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="predictions of a checkpoint for new inputs",
                       description="Predict for the inputs in an .npy file or an .npz file (array X), in the "
                                   "units of the named data (the training preprocessing is applied). Writes "
                                   "probabilities and labels (classification) or mean, var, epistemic, "
                                   "aleatoric (regression).")
    r.add_argument("--checkpoint", required=True, help="checkpoint.npz written by train")
    r.add_argument("--input", required=True, help=".npy or .npz file (array X) of inputs (n, ...)")
    r.add_argument("--mapping", type=parse_mapping,
                   help="probability mapping of a regression head on one-hot targets (default: the one "
                        "used in training)")
    r.add_argument("--out", default="predictions.npz", help="output .npz (default predictions.npz)")
    r.set_defaults(func=cmd_predict)

    g = sub.add_parser("graph", help="draw the factor graph and print its schedules",
                       description="Build the model, print it and its forward/backward/predict schedules, "
                                   "and draw the factor graph with a few training branches.")
    g.add_argument("--model", help=model_help + " (default: the digits MLP)")
    g.add_argument("--batch-size", type=_positive_int,
                   help="batch size (default: from the model file, else 320)")
    g.add_argument("--branches", type=_nonneg_int, default=2, help="training branches to draw (default 2)")
    g.add_argument("--out", default="graph.png", help="image file (default graph.png)")
    g.set_defaults(func=cmd_graph)
    return p


def main(argv=None):
    """Entry point of the ``factorgraph`` console script; returns 0, or exits with status 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        msg = " ".join(str(e).split())
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
