"""Data loaders: IDX parsing on tiny files written here, Fashion-MNIST (real files when installed, the
install hint otherwise), the scikit-learn digits, the UCI PBP splits, and the SPEC 10.1 helpers."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from factorgraph import datasets as D


def write_idx(path, array, code=0x08, compress=False):
    a = np.asarray(array)
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    raw = bytes([0, 0, code, a.ndim]) + b"".join(struct.pack(">I", d) for d in a.shape)
    raw += a.astype(dt).tobytes()
    if compress:
        raw = gzip.compress(raw)
    Path(path).write_bytes(raw)


# ---------------------------------------------------------------------------------------------------
# IDX
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x0C, np.int32), (0x0D, np.float32),
                                        (0x0B, np.int16), (0x0E, np.float64)])
def test_read_idx_roundtrip(tmp_path, compress, code, dtype):
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 200, size=(3, 4, 5))).astype(dtype)
    p = tmp_path / "x.idx"
    write_idx(p, a, code, compress)
    b = D.read_idx(p)
    assert b.shape == (3, 4, 5) and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(p)
    write_idx(p, np.zeros((2, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes"):
        D.read_idx(p)


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------------
def fake_fashion(directory, n_train=12, n_test=5):
    rng = np.random.default_rng(1)
    Xtr = rng.integers(0, 256, size=(n_train, 28, 28))
    Xte = rng.integers(0, 256, size=(n_test, 28, 28))
    Xtr[0] = 255  # an all-white image -> exactly 1.0
    ytr, yte = np.arange(n_train) % 10, (np.arange(n_test) + 3) % 10
    write_idx(directory / "train-images-idx3-ubyte.gz", Xtr, compress=True)
    write_idx(directory / "train-labels-idx1-ubyte.gz", ytr, compress=True)
    write_idx(directory / "t10k-images-idx3-ubyte", Xte)  # uncompressed works too
    write_idx(directory / "t10k-labels-idx1-ubyte", yte)
    return Xtr, ytr, Xte, yte


def test_fashion_loader_on_tiny_idx_files(tmp_path):
    Xtr, ytr, Xte, yte = fake_fashion(tmp_path)
    d = D.load_fashion_mnist(tmp_path, seed=98)
    assert d.X_train.shape == (12, 28, 28, 1) and d.X_test.shape == (5, 28, 28, 1)
    assert d.X_train.dtype == np.float64 and d.y_train.dtype == np.int64
    perm = np.random.default_rng(98).permutation(12)
    np.testing.assert_allclose(d.X_train[..., 0], Xtr[perm] / 255.0)
    np.testing.assert_array_equal(d.y_train, ytr[perm])
    # the test set is permuted too, but keeps its image/label pairing
    order = [int(np.flatnonzero((Xte == np.round(x[..., 0] * 255)).all(axis=(1, 2)))[0]) for x in d.X_test]
    assert sorted(order) == list(range(5))
    np.testing.assert_array_equal(d.y_test, yte[order])
    assert d.X_train.max() == 1.0 and d.X_train.min() >= 0.0
    # n_train: the first n of the same permutation, i.e. subset()
    small = D.load_fashion_mnist(tmp_path, n_train=4, seed=98, dtype=np.float32)
    Xs, ys = D.subset(Xtr, ytr, 4, seed=98)
    np.testing.assert_allclose(small.X_train[..., 0], Xs / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(small.y_train, ys)
    assert small.X_train.dtype == np.float32
    with pytest.raises(ValueError, match="n_train"):
        D.load_fashion_mnist(tmp_path, n_train=13)


def test_fashion_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not Path(D.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz").exists()
                    and not Path(D.FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_fashion_real_files():
    d = D.load_fashion_mnist(dtype=np.float32)
    assert d.X_train.shape == (60000, 28, 28, 1) and d.y_train.shape == (60000,)
    assert d.X_test.shape == (10000, 28, 28, 1) and d.y_test.shape == (10000,)
    assert d.y_train.min() == 0 and d.y_train.max() == 9 and d.y_test.min() == 0 and d.y_test.max() == 9
    assert np.bincount(d.y_train).tolist() == [6000] * 10
    assert 0.0 <= d.X_train.min() and d.X_train.max() <= 1.0
    r = D.normalise(d.X_train[:10000], d.X_test[:100])  # full-set statistics: 0.2860, 0.3530
    assert r.mean == pytest.approx(0.2860, abs=5e-3) and r.std == pytest.approx(0.3530, abs=5e-3)


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def test_subset_is_first_n_of_seeded_permutation_and_nested():
    X = np.arange(50).reshape(50, 1) * 10
    y = np.arange(50)
    Xs, ys = D.subset(X, y, 7, seed=3)
    perm = np.random.default_rng(3).permutation(50)
    np.testing.assert_array_equal(ys, perm[:7])
    np.testing.assert_array_equal(Xs[:, 0], perm[:7] * 10)
    X20, y20 = D.subset(X, y, 20, seed=3)
    np.testing.assert_array_equal(y20[:7], ys)
    assert D.subset(X, y, None, seed=3)[1].tolist() == perm.tolist()
    with pytest.raises(ValueError, match="larger"):
        D.subset(X, y, 51)
    with pytest.raises(ValueError, match="positive"):
        D.subset(X, y, 0)
    with pytest.raises(ValueError, match="same number"):
        D.subset(X, y[:3], 2)


def test_normalise_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 1, (30, 4, 4, 1))
    test = rng.uniform(3, 5, (10, 4, 4, 1))
    r = D.normalise(train, test)
    flat = train.ravel()
    mean = sum(flat) / flat.size
    std = (sum((v - mean) ** 2 for v in flat) / (flat.size - 1)) ** 0.5
    assert r.mean == pytest.approx(mean) and r.std == pytest.approx(std)
    np.testing.assert_allclose(r.train, (train - mean) / std)
    np.testing.assert_allclose(r.test, (test - mean) / std)
    assert r.train.mean() == pytest.approx(0, abs=1e-12) and r.test.mean() > 5
    tr, te, m, s = D.normalise(train.astype(np.float32))
    assert te is None and tr.dtype == np.float32
    assert D.normalise(np.ones((5, 2))).std == 1.0
    with pytest.raises(ValueError, match="NaN"):
        D.normalise(np.array([1.0, np.nan]))


def _correlated_images(n=400, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(12, 12)) + 3 * np.eye(12)  # strongly correlated pixels
    return (rng.normal(size=(n, 12)) @ A.T + 5.0).reshape(n, 3, 4, 1)


def test_whitening_decorrelates_the_training_inputs_and_keeps_shapes():
    X = _correlated_images()
    w = D.Whitening.fit(X, eps=1e-12)
    Z = w(X)
    assert Z.shape == X.shape and Z.dtype == X.dtype
    C = np.cov(Z.reshape(len(Z), -1), rowvar=False)
    np.testing.assert_allclose(C, np.eye(12) * C[0, 0], atol=1e-9)  # white: a multiple of the identity
    assert abs(Z.std() - 1) < 1e-12 and np.abs(Z.reshape(len(Z), -1).mean(axis=0)).max() < 1e-12
    np.testing.assert_allclose(w.matrix, w.matrix.T, atol=1e-12)  # ZCA: the symmetric whitening
    np.testing.assert_allclose(w(X[7:8]), Z[7:8], rtol=1e-12)  # one example as in the batch
    assert w(X.astype(np.float32)).dtype == np.float32 and w(np.ones((2, 3, 4, 1), int)).dtype == np.float64


def test_whitening_saves_and_loads(tmp_path):
    X = _correlated_images()
    w = D.Whitening.fit(X, eps=0.3)
    w.save(tmp_path / "w.npz")
    np.testing.assert_array_equal(D.Whitening.load(tmp_path / "w.npz")(X), w(X))


def test_whitening_eps_shrinks_the_small_variance_directions():
    """With ``eps`` the covariance of the whitened training set is ``V diag(l / (l + eps)) V^T / scale^2``."""
    X = _correlated_images(seed=1)
    flat = X.reshape(len(X), -1)
    lam, V = np.linalg.eigh(np.cov(flat, rowvar=False))
    eps = 0.5 * np.median(lam)
    w = D.Whitening.fit(X, eps=eps)
    want = (V * (lam / (lam + eps))) @ V.T / w.scale ** 2
    np.testing.assert_allclose(np.cov(w(X).reshape(len(X), -1), rowvar=False), want, atol=1e-10)


@pytest.mark.parametrize("bad", ["one", "nan", "eps0", "epsbool", "shape"])
def test_whitening_rejects_bad_input(bad):
    X = _correlated_images(20)
    with pytest.raises(ValueError, match={"one": "at least 2", "nan": "NaN", "eps0": "eps", "epsbool": "eps",
                                          "shape": "fitted to examples of 12"}[bad]):
        if bad == "one":
            D.Whitening.fit(X[:1])
        elif bad == "nan":
            X[3, 0, 0, 0] = np.nan
            D.Whitening.fit(X)
        elif bad in ("eps0", "epsbool"):
            D.Whitening.fit(X, eps=0.0 if bad == "eps0" else True)
        else:
            D.Whitening.fit(X)(np.zeros((2, 13)))


def test_train_test_split():
    X, y = np.arange(20).reshape(10, 2), np.arange(10)
    s = D.train_test_split(X, y, 0.3, seed=1)
    assert len(s.y_test) == 3 and len(s.y_train) == 7
    assert sorted(np.r_[s.y_train, s.y_test].tolist()) == list(range(10))
    np.testing.assert_array_equal(s.X_train[:, 0], 2 * s.y_train)


# ---------------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------------
def test_digits_shapes_and_range():
    pytest.importorskip("sklearn")
    X, y = D.load_digits()
    assert X.shape == (1797, 8, 8, 1) and y.shape == (1797,)
    assert X.min() == 0.0 and X.max() == 1.0 and y.dtype == np.int64
    assert sorted(set(y.tolist())) == list(range(10))
    X28, y28 = D.load_digits(upsample_to=28)
    assert X28.shape == (1797, 28, 28, 1) and np.array_equal(y28, y)
    assert 0.0 <= X28.min() and X28.max() <= 1.0
    # upsampling keeps the mean intensity roughly and the image layout
    assert abs(X28.mean() - X.mean()) < 0.02
    Xn, _ = D.load_digits(upsample_to=28, method="nearest")
    assert set(np.unique(Xn)) <= set(np.unique(X))


def test_resize_images():
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(3, 8, 8))
    np.testing.assert_allclose(D.resize_images(X, 8), X)  # same size: identity
    np.testing.assert_allclose(D.resize_images(np.full((2, 8, 8, 1), 0.3), 28), 0.3)
    # nearest by an integer factor repeats pixels
    up = D.resize_images(X, 16, "nearest")
    np.testing.assert_array_equal(up, np.repeat(np.repeat(X, 2, axis=1), 2, axis=2))
    # bilinear along a ramp is linear in the interior
    ramp = np.tile(np.arange(8.0), (8, 1))[None]
    r = D.resize_images(ramp, 16)[0, 0]
    assert np.all(np.diff(r) >= 0) and r[0] == 0 and r[-1] == 7
    with pytest.raises(ValueError, match="method"):
        D.resize_images(X, 4, "cubic")


# ---------------------------------------------------------------------------------------------------
# UCI
# ---------------------------------------------------------------------------------------------------
def uci_available():
    try:
        return (D.uci_root() / "Boston_housing" / "data.txt").is_file()
    except FileNotFoundError:
        return False


needs_uci = pytest.mark.skipif(not uci_available(), reason="../shared/data/uci not found")


def parse_plain(path):
    return np.array([[float(v) for v in line.split()] for line in Path(path).read_text().splitlines()
                     if line.strip()])


@needs_uci
@pytest.mark.parametrize("name,folder,d,rows,split", [("boston", "Boston_housing", 13, 506, 0),
                                                      ("yacht", "Yacht", 6, 308, 7),
                                                      ("energy", "Energy", 8, 768, 19)])
def test_uci_split_shapes_disjoint_and_standardised(name, folder, d, rows, split):
    u = D.load_uci(name, split)
    assert u.n_splits == 20 and u.n_hidden == 50 and u.n_epochs == 40
    n_tr, n_te = u.X_train.shape[0], u.X_test.shape[0]
    assert u.X_train.shape == (n_tr, d) and u.X_test.shape == (n_te, d)
    assert u.y_train.shape == (n_tr, 1) and u.y_test.shape == (n_te, 1)
    assert n_tr + n_te == rows and 0.85 < n_tr / rows < 0.95
    assert len(np.intersect1d(u.train_index, u.test_index)) == 0
    # independent parse of the raw files
    root = D.uci_root() / folder
    raw = parse_plain(root / "data.txt")
    tr = [int(float(v)) for v in (root / f"index_train_{split}.txt").read_text().split()]
    te = [int(float(v)) for v in (root / f"index_test_{split}.txt").read_text().split()]
    feats = [int(float(v)) for v in (root / "index_features.txt").read_text().split()]
    tgt = int(float((root / "index_target.txt").read_text().split()[0]))
    Xtr, ytr, Xte = raw[tr][:, feats], raw[tr][:, tgt], raw[te][:, feats]
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1
    np.testing.assert_allclose(u.X_train, (Xtr - mu) / sd, atol=1e-12)
    np.testing.assert_allclose(u.X_test, (Xte - mu) / sd, atol=1e-12)  # training statistics only
    assert u.y_mean == pytest.approx(ytr.mean()) and u.y_std == pytest.approx(ytr.std())
    np.testing.assert_allclose(u.y_train.mean(), 0, atol=1e-12)
    np.testing.assert_allclose(u.y_train.std(), 1, atol=1e-12)
    np.testing.assert_allclose(u.y_test_orig[:, 0], raw[te][:, tgt])
    # mapping back to original units
    np.testing.assert_allclose(u.to_original(u.y_test), u.y_test_orig, atol=1e-10)
    m, v = u.to_original(np.zeros((n_te, 1)), np.ones((n_te, 1)))
    np.testing.assert_allclose(m, u.y_mean) and np.testing.assert_allclose(v, u.y_std ** 2)
    np.testing.assert_allclose(u.standardise_X(Xte), u.X_test)


@needs_uci
def test_uci_names_and_errors():
    assert D.list_uci() == ["boston", "concrete", "energy", "kin8nm", "naval", "power", "protein", "wine",
                            "yacht"]
    assert D.load_uci("Boston_housing", 1).name == "boston"
    with pytest.raises(ValueError, match="known: boston, concrete"):
        D.load_uci("mnist")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        D.load_uci("protein", 5)  # Protein has 5 splits
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        D.load_uci("yacht", 20)


def test_uci_tiny_dataset_via_env(tmp_path, monkeypatch):
    folder = tmp_path / "Yacht"
    folder.mkdir()
    data = np.array([[1.0, 5.0, 10.0], [2.0, 5.0, 20.0], [3.0, 5.0, 30.0], [4.0, 5.0, 40.0], [9.0, 5.0, 0.0]])
    np.savetxt(folder / "data.txt", data)
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "index_train_0.txt").write_text("0\n1\n2\n3\n")
    (folder / "index_test_0.txt").write_text("4\n")
    (folder / "n_splits.txt").write_text("1\n")
    monkeypatch.setenv("FACTORGRAPH_UCI_DIR", str(tmp_path))
    u = D.load_uci("yacht")
    assert u.n_splits == 1
    np.testing.assert_allclose(u.x_mean, [2.5, 5.0])
    np.testing.assert_allclose(u.x_std, [np.std([1, 2, 3, 4]), 1.0])  # constant column: std 1
    np.testing.assert_allclose(u.X_test, [[(9 - 2.5) / np.std([1, 2, 3, 4]), 0.0]])
    assert u.y_mean == 25.0 and u.y_test_orig[0, 0] == 0.0
    monkeypatch.setenv("FACTORGRAPH_UCI_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="FACTORGRAPH_UCI_DIR"):
        D.load_uci("yacht")
