"""Evaluation metrics for classifiers and regressors (SPEC 11), in numpy only.

Conventions shared by every classification metric:

* ``P`` is an array of shape (n, C), one probability vector per row (n >= 1, C >= 2).  Entries must be
  finite and lie in [0, 1] (round-off of 1e-6 tolerated) and every row must sum to 1 within 1e-3.
* ``y`` holds integer class labels of shape (n,) in [0, C).  Integer-valued floats are accepted; one-hot
  matrices and fractional labels are refused.
* Bad input raises :class:`ValueError` with a message naming the problem.

Out-of-distribution (OOD) metrics score each example by the entropy of its predictive distribution; the
positive class is "OOD" (higher entropy = more likely OOD).  Regression metrics take predictive means
and variances of the same shape as the targets ((n,) or (n, d); (n, 1) and (n,) are interchangeable).

Only numpy is used; the tests check every function against scikit-learn or a naive loop.
"""

import heapq

import numpy as np

__all__ = [
    "accuracy", "top_k_accuracy", "nll", "brier", "ece", "mce", "reliability_bins", "thesis_ece", "variance_split_bins",
    "relative_calibration_curve", "relative_calibration_auc", "entropy", "ood_scores", "roc_curve",
    "auroc", "average_precision", "ood_auroc", "ood_aupr", "rmse", "gaussian_nll", "interval_coverage",
    "classification_metrics", "regression_metrics",
]

#: floor applied to probabilities inside logarithms (SPEC 11, NLL v2)
EPS = float(np.finfo(np.float64).eps)

#: allowed round-off outside [0, 1] for a probability entry
_PROB_TOL = 1e-6
#: allowed deviation of a row sum from 1
_SUM_TOL = 1e-3


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------
def _check_probs(P, name="P"):
    P = np.asarray(P)
    if P.dtype == object or not (np.issubdtype(P.dtype, np.number) or P.dtype == bool):
        raise ValueError(f"{name} must be a numeric array of class probabilities, got dtype {P.dtype}")
    P = P.astype(np.float64, copy=False)
    if P.ndim != 2:
        raise ValueError(f"{name} must have shape (n, C) with one probability vector per row, "
                         f"got shape {P.shape}")
    n, C = P.shape
    if n == 0:
        raise ValueError(f"{name} is empty (shape {P.shape}); metrics need at least one example")
    if C < 2:
        raise ValueError(f"{name} must have at least 2 classes (columns), got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError(f"{name} contains NaN or inf")
    if P.min() < -_PROB_TOL or P.max() > 1 + _PROB_TOL:
        raise ValueError(f"{name} entries must lie in [0, 1], got range [{P.min():.6g}, {P.max():.6g}]")
    s = P.sum(axis=1)
    bad = np.abs(s - 1) > _SUM_TOL
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"rows of {name} must sum to 1 (tolerance {_SUM_TOL}); row {i} sums to {s[i]:.6g}")
    return P


def _check_labels(y, n, C, name="y"):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape == (n, C):
        raise ValueError(f"{name} must be integer class labels of shape ({n},), got a matrix of shape "
                         f"{y.shape} (one-hot targets? use y.argmax(1))")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match P, got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must be integer class labels, got non-integer values (dtype {y.dtype})")
        y = y.astype(np.int64)
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.min() < 0 or y.max() >= C:
        raise ValueError(f"labels in {name} must lie in [0, {C}) for {C} classes, "
                         f"got range [{y.min()}, {y.max()}]")
    return y


def _check_classification(P, y):
    P = _check_probs(P)
    y = _check_labels(y, P.shape[0], P.shape[1])
    return P, y


def _check_scores(s, name):
    s = np.asarray(s)
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if s.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{name} is empty; AUROC/AUPR need at least one example of each class")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or inf")
    return s


def _check_regression(mean, y, var=None):
    def arr(a, name):
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
        a = a.astype(np.float64, copy=False)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        return a

    mean, y = arr(mean, "mean"), arr(y, "y")
    if mean.ndim not in (1, 2) or mean.shape != y.shape:
        raise ValueError(f"mean and y must have the same shape (n,) or (n, d); "
                         f"got {mean.shape} and {y.shape}")
    if y.shape[0] == 0:
        raise ValueError("empty data: metrics need at least one example")
    for a, name in ((mean, "mean"), (y, "y")):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
    if var is None:
        return mean, y
    var = arr(var, "var")
    if var.ndim != 0 and var.shape != y.shape:
        raise ValueError(f"var must be a scalar or have the shape of y {y.shape}, got {var.shape}")
    if not np.all(np.isfinite(var)):
        raise ValueError("var contains NaN or inf")
    if np.any(var <= 0):
        raise ValueError(f"var must be positive, got minimum {var.min():.6g}")
    return mean, y, np.broadcast_to(var, y.shape)


# ---------------------------------------------------------------------------------------------------
# point metrics
# ---------------------------------------------------------------------------------------------------
def accuracy(P, y):
    """Fraction of examples whose most probable class (first maximum of the row) equals the label."""
    P, y = _check_classification(P, y)
    return float(np.mean(np.argmax(P, axis=1) == y))


def top_k_accuracy(P, y, k=5):
    """Fraction of examples whose label is among the ``k`` most probable classes (SPEC 11 "top-5").
    Classes are ranked by probability descending, ties by class index ascending, so ``k=1`` equals
    :func:`accuracy`."""
    P, y = _check_classification(P, y)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    p_y = P[np.arange(P.shape[0]), y][:, None]
    before = (P > p_y) | ((P == p_y) & (np.arange(P.shape[1])[None, :] < y[:, None]))
    return float(np.mean(before.sum(axis=1) < k))


def nll(P, y):
    """Mean negative log-likelihood in nats: ``-mean_n log max(P[n, y_n], eps)``, eps = float64 machine
    epsilon (SPEC 11, v2), so a zero probability on the label costs about 36 nats instead of inf."""
    P, y = _check_classification(P, y)
    p = P[np.arange(P.shape[0]), y]
    return float(-np.mean(np.log(np.maximum(p, EPS))))


def brier(P, y):
    """Brier score ``mean_n sum_c (P[n, c] - onehot(y_n)_c)^2`` (SPEC 11); 0 is perfect, 2 the worst."""
    P, y = _check_classification(P, y)
    D = P.copy()
    D[np.arange(P.shape[0]), y] -= 1.0
    return float(np.mean(np.sum(D * D, axis=1)))


# ---------------------------------------------------------------------------------------------------
# top-label calibration with equal-width bins
# ---------------------------------------------------------------------------------------------------
def reliability_bins(P, y, n_bins=15):
    """Top-label reliability statistics in ``n_bins`` equal-width confidence bins.

    The confidence of an example is its largest probability; it is correct when the first argmax equals
    the label.  Bin b covers (edges[b], edges[b+1]] with ``edges = linspace(0, 1, n_bins + 1)`` (left-open,
    right-closed, the convention of Guo et al. 2017; a confidence of exactly 0, impossible for C >= 1,
    would go to the first bin).

    Returns a dict of arrays of length ``n_bins``: ``edges`` (length n_bins + 1), ``counts``,
    ``confidence`` (mean confidence in the bin), ``accuracy`` (fraction correct in the bin) and ``gap``
    (accuracy - confidence); the last three are NaN for empty bins.
    """
    P, y = _check_classification(P, y)
    n_bins = _check_n_bins(n_bins)
    conf = P.max(axis=1)
    correct = (np.argmax(P, axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # number of interior edges strictly below conf = index of the bin (lo, hi] containing conf
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        mean_acc = np.where(counts > 0, sum_acc / counts, np.nan)
    return {"edges": edges, "counts": counts, "confidence": mean_conf, "accuracy": mean_acc,
            "gap": mean_acc - mean_conf}


def _check_n_bins(n_bins):
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def ece(P, y, n_bins=15):
    """Top-label expected calibration error with ``n_bins`` equal-width bins (default 15, the common
    convention of Guo et al. 2017): ``sum_b (n_b / n) |acc_b - conf_b|`` over non-empty bins, binning as
    in :func:`reliability_bins`."""
    r = reliability_bins(P, y, n_bins)
    nz = r["counts"] > 0
    w = r["counts"][nz] / r["counts"].sum()
    return float(np.sum(w * np.abs(r["gap"][nz])))


def mce(P, y, n_bins=15):
    """Maximum calibration error: ``max_b |acc_b - conf_b|`` over the non-empty bins of
    :func:`reliability_bins` (same 15 equal-width top-label bins as :func:`ece`)."""
    r = reliability_bins(P, y, n_bins)
    nz = r["counts"] > 0
    return float(np.max(np.abs(r["gap"][nz])))


# ---------------------------------------------------------------------------------------------------
# thesis ECE: canonical squared-Euclidean ECE on variance-split bins (SPEC 11)
# ---------------------------------------------------------------------------------------------------
def _max_var(P, idx):
    v = np.var(P[idx], axis=0, ddof=1)
    d = int(np.argmax(v))  # first component among ties
    return float(v[d]), d


def variance_split_bins(P, min_bin_size=20):
    """Variance-split ("median-variance") binning of the probability vectors (SPEC 11,
    CalibrationErrors.jl ``MedianVarianceBinning(min_bin_size)``).

    1. With N < 2 * min_bin_size points there is a single bin.
    2. Otherwise a priority queue holds index sets keyed by the largest per-component unbiased (ddof=1)
       sample variance of their probability vectors (the component is the first maximiser).
    3. Pop the set with the highest key; sort its values of that component; the median element is element
       floor(n/2)+1 (1-based) of the sorted values; "below" are the points strictly below it, "above" the
       rest.
    4. If either half has fewer than ``min_bin_size`` points, the popped set becomes a final bin.
       Otherwise each half with fewer than ``2 * min_bin_size`` points becomes a final bin and each larger
       half is pushed back on the queue.
    5. Stop when the queue is empty.

    The number of bins is unbounded; ``min_bin_size`` is the minimum bin size (except for N <
    min_bin_size, which gives one smaller bin).  Returns a list of sorted index arrays partitioning
    ``range(N)``.
    """
    P = _check_probs(P)
    if isinstance(min_bin_size, bool) or not isinstance(min_bin_size, (int, np.integer)) or min_bin_size < 1:
        raise ValueError(f"min_bin_size must be a positive integer, got {min_bin_size!r}")
    m = int(min_bin_size)
    N = P.shape[0]
    everything = np.arange(N)
    if N < 2 * m:
        return [everything]
    heap, counter, bins = [], 0, []

    def push(idx):
        nonlocal counter
        v, d = _max_var(P, idx)
        heapq.heappush(heap, (-v, counter, idx, d))  # counter: FIFO among equal keys
        counter += 1

    push(everything)
    while heap:
        _, _, idx, d = heapq.heappop(heap)
        vals = P[idx, d]
        median = np.sort(vals, kind="stable")[len(idx) // 2]
        below_mask = vals < median
        below, above = idx[below_mask], idx[~below_mask]
        if len(below) < m or len(above) < m:
            bins.append(idx)
            continue
        for half in (below, above):
            if len(half) < 2 * m:
                bins.append(half)
            else:
                push(half)
    return [np.sort(b) for b in bins]


def thesis_ece(P, y, min_bin_size=20):
    """The thesis ECE (SPEC 11): CalibrationErrors.jl ``ECE(MedianVarianceBinning(20), SqEuclidean())``.

    Canonical (full-vector) calibration error ``sum_b (n_b / N) * ||mean_b(P) - mean_b(onehot(y))||^2``
    over the bins of :func:`variance_split_bins` with minimum bin size ``min_bin_size`` (default 20), the
    bins weighted by their size.
    """
    P, y = _check_classification(P, y)
    N, C = P.shape
    Y = np.zeros_like(P)
    Y[np.arange(N), y] = 1.0
    total = 0.0
    for idx in variance_split_bins(P, min_bin_size):
        diff = P[idx].mean(axis=0) - Y[idx].mean(axis=0)
        total += len(idx) / N * float(diff @ diff)
    return float(total)


# ---------------------------------------------------------------------------------------------------
# relative calibration (SPEC 11)
# ---------------------------------------------------------------------------------------------------
def relative_calibration_curve(P, y):
    """Accuracy on the retained data as the least confident examples are discarded (SPEC 11).

    Examples are ordered by confidence (largest probability) descending: a stable ascending sort, then
    reversed (so among ties the later example comes first).  With A_k the accuracy of the k most confident
    examples, returns ``(x, acc)`` with ``x_j = j / N`` and ``acc_j = A_{N-j+1}`` for j = 1..N: the first
    point is the overall accuracy, the last the correctness of the single most confident example.  x is
    the fraction of data discarded (plus 1/N).
    """
    P, y = _check_classification(P, y)
    N = P.shape[0]
    order = np.argsort(P.max(axis=1), kind="stable")[::-1]
    correct = (np.argmax(P[order], axis=1) == y[order]).astype(np.float64)
    acc = (np.cumsum(correct) / np.arange(1, N + 1))[::-1]
    x = np.arange(1, N + 1) / N
    return x, acc


def relative_calibration_auc(P, y):
    """Area under :func:`relative_calibration_curve` by the trapezoid rule with uniform spacing 1/(N-1):
    ``(y_1/2 + sum_{j=2}^{N-1} y_j + y_N/2) / (N-1)`` (SPEC 11).  For N = 1 the single value is returned.
    Higher is better: a model whose confidence ranks its errors last scores close to 1."""
    _, a = relative_calibration_curve(P, y)
    N = a.size
    if N == 1:
        return float(a[0])
    return float((0.5 * a[0] + a[1:-1].sum() + 0.5 * a[-1]) / (N - 1))


# ---------------------------------------------------------------------------------------------------
# out-of-distribution detection
# ---------------------------------------------------------------------------------------------------
def entropy(P):
    """Predictive entropy ``-sum_c p_c log p_c`` per row in nats, with 0 log 0 = 0 (SPEC 11 hazard)."""
    P = _check_probs(P)
    Q = np.clip(P, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(Q > 0, Q * np.log(np.where(Q > 0, Q, 1.0)), 0.0)
    return -t.sum(axis=1)


def ood_scores(P):
    """OOD score per example: the predictive entropy (:func:`entropy`); higher means more likely OOD.
    (SPEC 11 sorts by the negative entropy ascending, which is the same ranking.)"""
    return entropy(P)


def _labels_and_scores(scores_in, scores_ood):
    s_in = _check_scores(scores_in, "scores_in")
    s_ood = _check_scores(scores_ood, "scores_ood")
    s = np.concatenate([s_in, s_ood])
    t = np.concatenate([np.zeros(s_in.size), np.ones(s_ood.size)])
    return s, t


def roc_curve(scores_in, scores_ood):
    """ROC curve for detecting OOD examples (positive class) by a score (higher = more OOD).

    Thresholds run over the distinct score values in decreasing order; tied scores enter together, so
    the curve has one point per distinct value, after a leading (0, 0).  Returns ``(fpr, tpr,
    thresholds)``; same points as ``sklearn.metrics.roc_curve(drop_intermediate=False)``.
    """
    s, t = _labels_and_scores(scores_in, scores_ood)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last position of each tie group
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    P, N = t.sum(), t.size - t.sum()
    fpr = np.r_[0.0, fps / N]
    tpr = np.r_[0.0, tps / P]
    return fpr, tpr, np.r_[np.inf, s[last]]


def auroc(scores_in, scores_ood):
    """Area under the ROC curve of OOD (positive) vs in-distribution by a score (higher = more OOD).

    Computed as the Mann-Whitney statistic with mid-ranks: the probability that a random OOD example
    scores higher than a random in-distribution one, ties counting 1/2.  This equals the trapezoid area
    under :func:`roc_curve` and ``sklearn.metrics.roc_auc_score``.
    """
    s, t = _labels_and_scores(scores_in, scores_ood)
    order = np.argsort(s, kind="stable")
    ss = s[order]
    ranks = np.empty(s.size)
    # mid-ranks (1-based) of tie groups
    starts = np.r_[0, np.flatnonzero(np.diff(ss) != 0) + 1]
    ends = np.r_[starts[1:], ss.size]
    mid = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mid, ends - starts)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    u = ranks[t == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(scores_in, scores_ood):
    """Area under the precision-recall curve of OOD (positive) detection, as average precision:
    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order (ties
    enter together), with R_0 = 0; equals ``sklearn.metrics.average_precision_score``."""
    s, t = _labels_and_scores(scores_in, scores_ood)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(t)[last]
    precision = tps / (last + 1)
    recall = tps / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _ood_pair(P_in, P_ood):
    P_in = _check_probs(P_in, "P_in")
    P_ood = _check_probs(P_ood, "P_ood")
    if P_in.shape[1] != P_ood.shape[1]:
        raise ValueError(f"P_in and P_ood must have the same number of classes, got {P_in.shape[1]} and "
                         f"{P_ood.shape[1]}")
    return ood_scores(P_in), ood_scores(P_ood)


def ood_auroc(P_in, P_ood):
    """AUROC of separating OOD inputs (positive class) from in-distribution ones by predictive entropy
    (:func:`ood_scores`, :func:`auroc`); 0.5 is chance, 1 perfect."""
    return auroc(*_ood_pair(P_in, P_ood))


def ood_aupr(P_in, P_ood):
    """AUPR (average precision, :func:`average_precision`) of OOD detection by predictive entropy, OOD
    the positive class; chance level is M / (N + M)."""
    return average_precision(*_ood_pair(P_in, P_ood))


# ---------------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------------
def rmse(mean, y):
    """Root mean squared error ``sqrt(mean (y - mean)^2)`` over all entries."""
    mean, y = _check_regression(mean, y)
    return float(np.sqrt(np.mean((y - mean) ** 2)))


def gaussian_nll(mean, var, y):
    """Mean Gaussian negative log-likelihood per entry, in nats:
    ``mean 0.5 * (log(2 pi var) + (y - mean)^2 / var)``.  The test log-likelihood of the PBP protocol is
    ``-gaussian_nll`` (in the units of ``y``: map mean and var back to original units first)."""
    mean, y, var = _check_regression(mean, y, var)
    return float(np.mean(0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)))


def interval_coverage(mean, var, y, ks=(1, 2, 3)):
    """Fraction of entries with ``|y - mean| <= k * sqrt(var)`` for each k in ``ks`` (default 1, 2, 3
    sigma; nominal 0.683, 0.954, 0.997 for a calibrated Gaussian).  Returns a dict k -> fraction."""
    mean, y, var = _check_regression(mean, y, var)
    err = np.abs(y - mean)
    sd = np.sqrt(var)
    return {k: float(np.mean(err <= k * sd)) for k in ks}


# ---------------------------------------------------------------------------------------------------
# bundles
# ---------------------------------------------------------------------------------------------------
def classification_metrics(P, y, P_ood=None, n_bins=15, min_bin_size=20):
    """All classification metrics as a JSON-ready dict: n, accuracy, nll, brier, ece (15 bins), mce,
    thesis_ece, relative_calibration_auc, top5_accuracy (when C > 5) and, when ``P_ood`` is given,
    ood_auroc and ood_aupr."""
    P, y = _check_classification(P, y)
    out = {
        "n": int(P.shape[0]),
        "accuracy": accuracy(P, y),
        "nll": nll(P, y),
        "brier": brier(P, y),
        "ece": ece(P, y, n_bins),
        "mce": mce(P, y, n_bins),
        "thesis_ece": thesis_ece(P, y, min_bin_size),
        "relative_calibration_auc": relative_calibration_auc(P, y),
    }
    if P.shape[1] > 5:
        out["top5_accuracy"] = top_k_accuracy(P, y, 5)
    if P_ood is not None:
        out["ood_auroc"] = ood_auroc(P, P_ood)
        out["ood_aupr"] = ood_aupr(P, P_ood)
    return out


def regression_metrics(mean, var, y):
    """Regression metrics as a JSON-ready dict: rmse, nll (mean Gaussian NLL), loglik (= -nll) and
    coverage_1sigma/2sigma/3sigma."""
    cov = interval_coverage(mean, var, y)
    g = gaussian_nll(mean, var, y)
    out = {"n": int(np.asarray(y).shape[0]), "rmse": rmse(mean, y), "nll": g, "loglik": -g}
    out.update({f"coverage_{k}sigma": v for k, v in cov.items()})
    return out

