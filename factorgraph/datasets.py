"""Data loaders: Fashion-MNIST (IDX files), scikit-learn's bundled 8x8 digits, the UCI regression sets of
the PBP benchmark, and the subset/normalisation helpers of SPEC 10.1.

Image sets come as float arrays of shape (n, 28, 28, 1) (channels last, values in [0, 1]) with integer
labels of shape (n,); regression sets as float matrices X (n, d) and y (n, 1).  Normalisation always uses
statistics of the training part only.

Nothing here downloads anything: Fashion-MNIST is read from the Debian package ``dataset-fashion-mnist``
(or any directory with the four IDX files), the digits ship with scikit-learn, the UCI files live in the
shared data folder.
"""

import functools
import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ImageData", "Normalised", "UCIData", "Whitening", "read_idx", "load_fashion_mnist", "load_digits",
    "normalise",
    "subset", "train_test_split", "resize_images", "load_uci", "list_uci", "uci_root",
    "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES",
]

#: default location of the Debian package ``dataset-fashion-mnist``
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class ImageData(NamedTuple):
    """A train/test pair of a classification set; unpacks as ``X_train, y_train, X_test, y_test``."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


class Normalised(NamedTuple):
    """Result of :func:`normalise`; unpacks as ``train, test, mean, std``."""

    train: np.ndarray
    test: object
    mean: float
    std: float


# ---------------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------------
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path):
    """Read an IDX file (the MNIST format), gzip-compressed or not (detected from the content).

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, one big-endian uint32 per dimension, then the data in C order,
    big-endian.  Returns an array of that shape in native byte order.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header says shape {shape} ({header + count * dtype.itemsize} bytes) "
                         f"but the file has {len(raw)} bytes")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(directory, base):
    for name in (base + ".gz", base):
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------------------------------------
# subsets, splits, normalisation
# ---------------------------------------------------------------------------------------------------
def _check_n(n, total, what="n"):
    if n is None:
        return total
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {n!r}")
    if n > total:
        raise ValueError(f"{what}={n} is larger than the {total} examples available")
    return int(n)


def subset(X, y, n, seed=98):
    """The first ``n`` examples of a seeded random permutation (SPEC 10.1): the permutation is
    ``np.random.default_rng(seed).permutation(len(X))``, so the subsets for growing n are nested.
    ``n=None`` returns the whole set in permuted order.  Returns ``(X_sub, y_sub)``."""
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of examples, got {X.shape[0]} and {y.shape[0]}")
    n = _check_n(n, X.shape[0])
    idx = np.random.default_rng(seed).permutation(X.shape[0])[:n]
    return X[idx], y[idx]


def train_test_split(X, y, test_fraction=0.2, seed=98):
    """Split ``(X, y)`` by a seeded permutation: the first ``round(test_fraction * n)`` permuted examples
    form the test set, the rest the training set.  Returns :class:`ImageData`."""
    X, y = np.asarray(X), np.asarray(y)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y must have the same number of examples, got {X.shape[0]} and {y.shape[0]}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n = X.shape[0]
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty train or test set for n={n}")
    perm = np.random.default_rng(seed).permutation(n)
    te, tr = perm[:n_test], perm[n_test:]
    return ImageData(X[tr], y[tr], X[te], y[te])


def _mean_std(a, chunk=1 << 20):
    """Mean and ddof=1 std of all entries in float64, two passes over chunks (no full-size temporaries)."""
    flat = a.reshape(-1)
    n = flat.size
    total = 0.0
    for s in range(0, n, chunk):
        total += float(np.sum(flat[s:s + chunk], dtype=np.float64))
    mean = total / n
    ss = 0.0
    for s in range(0, n, chunk):
        d = flat[s:s + chunk].astype(np.float64) - mean
        ss += float(d @ d)
    return mean, (ss / (n - 1)) ** 0.5


def normalise(train, test=None):
    """Scalar normalisation with training statistics only (SPEC 10.1): ``mean`` and ``std`` (ddof=1)
    over *all* entries of ``train``; returns ``Normalised((train - mean)/std, (test - mean)/std or None,
    mean, std)``.  A zero std is replaced by 1.  Floating inputs keep their dtype (others become
    float64); the statistics are computed in float64.  To normalise a third set (an OOD set) with the
    same statistics use ``(X - r.mean) / r.std``."""
    train = np.asarray(train)
    if train.size < 2:
        raise ValueError(f"normalise needs at least 2 training values, got shape {train.shape}")
    if not np.all(np.isfinite(train)):
        raise ValueError("train contains NaN or inf")
    mean, std = _mean_std(train)
    if std == 0.0:
        std = 1.0

    def apply(a):
        a = np.asarray(a)
        dt = a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64
        return ((a - dt.type(mean)) / dt.type(std)).astype(dt, copy=False)

    return Normalised(apply(train), None if test is None else apply(test), mean, std)


@dataclass(frozen=True)
class Whitening:
    """ZCA whitening with training statistics: ``x -> (x - mean) W / scale`` on the flattened inputs, with
    ``W = V diag(1 / sqrt(lambda + eps)) V^T`` from the training covariance ``C = V diag(lambda) V^T``
    (ddof=1) and ``scale`` the standard deviation of all whitened training entries (so they have std 1, as
    after :func:`normalise`).  ZCA is the symmetric whitening, the one closest to the inputs: each pixel stays
    where it was, so images stay images.  ``eps`` (relative to the inputs' scale) keeps the directions of
    tiny variance from being blown up into noise.

    Why it matters here: on Fashion-MNIST's MLP, whitened inputs let :class:`schedules.Parallel` train
    chunks of 64-128 stably at damping 0.25, more accurately than the sequential schedule (README,
    Schedules); on the raw pixels the first layer's chunk steps overshoot (our reading: correlated inputs
    make a chunk's messages push its weights the same way).

    >>> w = Whitening.fit(X_train, eps=0.1)
    >>> X_train, X_test = w(X_train), w(X_test)
    """

    mean: np.ndarray
    matrix: np.ndarray
    scale: float

    @classmethod
    def fit(cls, X, eps=0.1):
        """Fit to training inputs ``X`` of shape ``(n, ...)``, ``n >= 2``, finite; ``eps > 0``."""
        X = np.asarray(X)
        if X.ndim < 2 or X.shape[0] < 2:
            raise ValueError(f"Whitening.fit needs at least 2 examples of shape (n, ...), got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("Whitening.fit: X contains NaN or inf")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < np.inf:
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        flat = X.reshape(X.shape[0], -1).astype(np.float64)
        mean = flat.mean(axis=0)
        lam, V = np.linalg.eigh(np.cov(flat - mean, rowvar=False).reshape(flat.shape[1], flat.shape[1]))
        W = (V / np.sqrt(np.maximum(lam, 0.0) + eps)) @ V.T
        scale = float(((flat - mean) @ W).std())
        return cls(mean, W, scale if scale > 0 else 1.0)

    def save(self, path):
        """Write the transform to an ``.npz`` file (:meth:`load` reads it back)."""
        np.savez(path, mean=self.mean, matrix=self.matrix, scale=np.float64(self.scale))

    @classmethod
    def load(cls, path):
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mean"], f["matrix"], float(f["scale"]))

    def __call__(self, X):
        """Whiten ``X`` (the fitted example shape, any number of examples); floating inputs keep their
        dtype, others become float64."""
        X = np.asarray(X)
        d = self.mean.shape[0]
        if X.ndim < 2 or int(np.prod(X.shape[1:])) != d:
            raise ValueError(f"Whitening was fitted to examples of {d} values, got shape {X.shape}")
        dt = X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64
        out = (X.reshape(X.shape[0], -1).astype(np.float64) - self.mean) @ self.matrix / self.scale
        return out.reshape(X.shape).astype(dt, copy=False)


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------
def load_fashion_mnist(directory=None, n_train=None, seed=98, *, n_test=None, dtype=np.float64):
    """Fashion-MNIST (60000 training and 10000 test images of 10 clothing classes) from IDX files.

    ``directory`` defaults to ``$FACTORGRAPH_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``) and must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each with or
    without ``.gz``.  As in SPEC 10.1 the training and the test set are each permuted with the seed: the
    training permutation is ``default_rng(seed).permutation(60000)`` (the one of :func:`subset`) and the
    test permutation the next draw of the same generator; ``n_train`` / ``n_test`` keep the first n.

    Returns :class:`ImageData` with images of shape (n, 28, 28, 1), values in [0, 1] (pixel / 255) in
    ``dtype``, and int64 labels in 0..9.  Raises FileNotFoundError saying how to install the data.
    """
    if directory is None:
        directory = os.environ.get("FACTORGRAPH_FASHION_MNIST_DIR", FASHION_MNIST_DIR)
    paths = {k: _find_idx(directory, base) for k, base in _FASHION_FILES.items()}
    missing = [_FASHION_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}). Install it with "
            f"`sudo apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}), or pass "
            f"directory= (or set FACTORGRAPH_FASHION_MNIST_DIR) to a folder with the four IDX files.")
    Xtr, ytr = read_idx(paths["train_images"]), read_idx(paths["train_labels"])
    Xte, yte = read_idx(paths["test_images"]), read_idx(paths["test_labels"])
    for X, y, what in ((Xtr, ytr, "train"), (Xte, yte, "test")):
        if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"Fashion-MNIST {what} files have inconsistent shapes {X.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    ptr = rng.permutation(Xtr.shape[0])[:_check_n(n_train, Xtr.shape[0], "n_train")]
    pte = rng.permutation(Xte.shape[0])[:_check_n(n_test, Xte.shape[0], "n_test")]
    dtype = np.dtype(dtype)

    def images(X, idx):
        return (X[idx].astype(dtype) / dtype.type(255))[..., None]

    return ImageData(images(Xtr, ptr), ytr[ptr].astype(np.int64), images(Xte, pte), yte[pte].astype(np.int64))


# ---------------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------------
def resize_images(X, size, method="bilinear"):
    """Resize images of shape (n, h, w) or (n, h, w, c) to ``size`` x ``size``.

    ``"bilinear"``: each output pixel centre is mapped to input coordinates ``(i + 0.5) * h / size - 0.5``
    (half-pixel centres, clamped at the border) and interpolated linearly in both directions.
    ``"nearest"``: the input pixel ``floor((i + 0.5) * h / size)``.  Values stay within the input range.
    """
    X = np.asarray(X, dtype=np.float64)
    squeeze = X.ndim == 3
    if squeeze:
        X = X[..., None]
    if X.ndim != 4:
        raise ValueError(f"images must have shape (n, h, w) or (n, h, w, c), got {X.shape}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    _, h, w, _ = X.shape

    if method == "nearest":
        ri = np.minimum(((np.arange(size) + 0.5) * h / size).astype(int), h - 1)
        ci = np.minimum(((np.arange(size) + 0.5) * w / size).astype(int), w - 1)
        out = X[:, ri][:, :, ci]
    elif method == "bilinear":
        def axis(n_in):
            c = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
            i0 = np.floor(c).astype(int)
            i1 = np.minimum(i0 + 1, n_in - 1)
            return i0, i1, c - i0

        r0, r1, fr = axis(h)
        c0, c1, fc = axis(w)
        top = X[:, r0] * (1 - fr)[None, :, None, None] + X[:, r1] * fr[None, :, None, None]
        out = top[:, :, c0] * (1 - fc)[None, None, :, None] + top[:, :, c1] * fc[None, None, :, None]
    else:
        raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
    return out[..., 0] if squeeze else out


def load_digits(upsample_to=None, method="bilinear"):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, classes 0..9; no download).

    Returns ``(X, y)``: X of shape (1797, 8, 8, 1) with values in [0, 1] (the 0..16 counts divided by 16,
    ink bright on a dark background like MNIST), y int64.  ``upsample_to=28`` resizes to (1797, 28, 28, 1)
    by :func:`resize_images` (``method`` "bilinear" or "nearest"), e.g. as an out-of-distribution set
    for Fashion-MNIST.  Split with :func:`train_test_split` or :func:`subset`.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn (pip install scikit-learn); its 8x8 digits ship "
                          "with the package, nothing is downloaded") from e
    d = _sk_load_digits()
    X = (np.asarray(d.images, dtype=np.float64) / 16.0)[..., None]
    y = np.asarray(d.target, dtype=np.int64)
    if upsample_to is not None:
        X = np.clip(resize_images(X, upsample_to, method), 0.0, 1.0)
    return X, y


# ---------------------------------------------------------------------------------------------------
# UCI regression sets (PBP protocol)
# ---------------------------------------------------------------------------------------------------
#: canonical name -> folder name, in the order of the README table
_UCI = {
    "boston": "Boston_housing",
    "concrete": "Concrete",
    "energy": "Energy",
    "kin8nm": "Kin8nm",
    "naval": "Naval",
    "power": "Power-plant",
    "protein": "Protein",
    "wine": "Wine",
    "yacht": "Yacht",
}
_UCI_ALIASES = {"boston_housing": "boston", "power_plant": "power", "powerplant": "power",
                "wine_quality_red": "wine", "wine_red": "wine", "naval_propulsion": "naval"}


def list_uci():
    """Canonical names of the UCI regression sets: boston, concrete, energy, kin8nm, naval, power,
    protein, wine, yacht (folder names such as ``Boston_housing`` are accepted too)."""
    return list(_UCI)


def _uci_name(name):
    if not isinstance(name, str):
        raise ValueError(f"UCI dataset name must be a string; known: {', '.join(_UCI)}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _UCI_ALIASES.get(key, key)
    if key not in _UCI:
        raise ValueError(f"unknown UCI dataset {name!r}; known: {', '.join(_UCI)}")
    return key


def uci_root(root=None):
    """Folder of the UCI sets: ``root`` if given, else ``$FACTORGRAPH_UCI_DIR``, else ``../shared/data/uci``
    next to the repository (or ``shared/data/uci`` inside it).  Raises FileNotFoundError if none exists."""
    if root is not None:
        candidates = [Path(root)]
    elif os.environ.get("FACTORGRAPH_UCI_DIR"):
        candidates = [Path(os.environ["FACTORGRAPH_UCI_DIR"])]
    else:
        repo = Path(__file__).resolve().parent.parent
        candidates = [repo.parent / "shared" / "data" / "uci", repo / "shared" / "data" / "uci"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError("UCI data folder not found (tried " + ", ".join(map(str, candidates)) +
                            "); pass root= or set FACTORGRAPH_UCI_DIR")


@functools.lru_cache(maxsize=16)
def _read_table(path):
    a = np.loadtxt(path, dtype=np.float64, ndmin=2)
    a.flags.writeable = False
    return a


def _read_ints(path):
    a = np.loadtxt(path, dtype=np.float64, ndmin=1)
    if np.any(a != np.round(a)):
        raise ValueError(f"{path}: expected integer indices")
    return a.astype(np.int64)


def _read_int(path, default):
    try:
        return int(float(Path(path).read_text().split()[0]))
    except (FileNotFoundError, IndexError, ValueError):
        return default


@dataclass
class UCIData:
    """One train/test split of a UCI regression set, standardised with training statistics.

    ``X_train``/``X_test`` (n, d) and ``y_train``/``y_test`` (n, 1) are standardised: ``(v - mean) / std``
    with the training split's mean and population std (ddof=0, as in the PBP code; a zero std becomes
    1).  ``y_train_orig``/``y_test_orig`` keep the targets in original units; :meth:`to_original` maps
    standardised predictions back.  ``n_hidden``, ``n_epochs``, ``n_splits``: the protocol settings.
    """

    name: str
    split: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    y_train_orig: np.ndarray
    y_test_orig: np.ndarray
    train_index: np.ndarray = field(repr=False)
    test_index: np.ndarray = field(repr=False)
    n_hidden: int = 50
    n_epochs: int = 40
    n_splits: int = 20

    def to_original(self, mean, var=None):
        """Map a standardised predictive back to target units: ``mean * y_std + y_mean`` and, if given,
        ``var * y_std**2``.  Returns the mean, or ``(mean, var)``."""
        m = np.asarray(mean, dtype=np.float64) * self.y_std + self.y_mean
        if var is None:
            return m
        return m, np.asarray(var, dtype=np.float64) * self.y_std ** 2

    def standardise_X(self, X):
        """Standardise new inputs with the training statistics."""
        return (np.asarray(X, dtype=np.float64) - self.x_mean) / self.x_std


def load_uci(name, split=0, root=None):
    """Split ``split`` of the UCI regression set ``name`` in the PBP format (see list_uci()).

    The folder ``<root>/<Folder>`` holds ``data.txt`` (whitespace-separated rows), ``index_features.txt``
    and ``index_target.txt`` (0-based columns), ``index_train_<k>.txt`` / ``index_test_<k>.txt`` (0-based
    rows, 90/10; k < n_splits: 20 splits, Protein 5) and ``n_hidden.txt``, ``n_epochs.txt``,
    ``n_splits.txt``.  ``root`` defaults to :func:`uci_root`.  Returns :class:`UCIData`.
    """
    key = _uci_name(name)
    folder = uci_root(root) / _UCI[key]
    if not (folder / "data.txt").is_file():
        raise FileNotFoundError(f"UCI dataset {key!r}: {folder / 'data.txt'} not found")
    n_splits = _read_int(folder / "n_splits.txt", 20)
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 0 <= split < n_splits:
        raise ValueError(f"split must be an integer in [0, {n_splits}) for {key}, got {split!r}")
    data = _read_table(str(folder / "data.txt"))
    feats = _read_ints(folder / "index_features.txt")
    target = _read_ints(folder / "index_target.txt")
    tr = _read_ints(folder / f"index_train_{split}.txt")
    te = _read_ints(folder / f"index_test_{split}.txt")
    n = data.shape[0]
    for idx, what in ((tr, "train"), (te, "test")):
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"{key} split {split}: {what} indices out of range for {n} rows")
    X = data[:, feats]
    y = data[:, target].reshape(n, -1)
    Xtr, Xte, ytr, yte = X[tr], X[te], y[tr], y[te]
    x_mean, x_std = Xtr.mean(axis=0), Xtr.std(axis=0)
    x_std = np.where(x_std == 0, 1.0, x_std)
    y_mean, y_std = float(ytr.mean()), float(ytr.std())
    if y_std == 0:
        y_std = 1.0
    return UCIData(
        name=key, split=int(split),
        X_train=(Xtr - x_mean) / x_std, y_train=(ytr - y_mean) / y_std,
        X_test=(Xte - x_mean) / x_std, y_test=(yte - y_mean) / y_std,
        x_mean=x_mean, x_std=x_std, y_mean=y_mean, y_std=y_std,
        y_train_orig=ytr.copy(), y_test_orig=yte.copy(), train_index=tr, test_index=te,
        n_hidden=_read_int(folder / "n_hidden.txt", 50), n_epochs=_read_int(folder / "n_epochs.txt", 40),
        n_splits=n_splits,
    )
