"""Every metric of factorgraph.metrics against an independent computation: scikit-learn where it has the
metric, otherwise a naive loop written here from the definition (SPEC 11), plus hand-computed cases."""

import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest

from factorgraph import metrics as M


def make_probs(n, C, seed, concentration=0.5, quantise=None):
    """Dirichlet probability rows and labels drawn from the rows themselves (roughly calibrated)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(C, concentration), size=n)
    if quantise:
        P = np.round(P * quantise) / quantise
        P[:, -1] = 1.0 - P[:, :-1].sum(axis=1)
        P = np.clip(P, 0, 1)
        P /= P.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(C, p=p) if rng.random() < 0.8 else rng.integers(C) for p in P])
    return P, y


CASES = [(1, 2, 0), (7, 3, 1), (50, 10, 2), (300, 10, 3), (1000, 4, 4)]


# ---------------------------------------------------------------------------------------------------
# naive references
# ---------------------------------------------------------------------------------------------------
def naive_top_label_bins(P, y, n_bins):
    edges = np.linspace(0, 1, n_bins + 1)
    bins = [[] for _ in range(n_bins)]
    for p, label in zip(P, y):
        conf = max(p)
        pred = list(p).index(conf)
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            if (lo < conf <= hi) or (b == 0 and conf == 0):
                bins[b].append((conf, pred == label))
                break
    return bins


def naive_ece_mce(P, y, n_bins):
    bins = naive_top_label_bins(P, y, n_bins)
    n = len(y)
    e, m = 0.0, 0.0
    for b in bins:
        if b:
            conf = sum(c for c, _ in b) / len(b)
            acc = sum(ok for _, ok in b) / len(b)
            e += len(b) / n * abs(acc - conf)
            m = max(m, abs(acc - conf))
    return e, m


def naive_variance_bins(P, idx, m):
    """SPEC 11 binning written recursively: each set is split independently, so the final bins do not
    depend on the queue order."""
    C = len(P[0])

    def var(vals):
        return statistics.variance(vals) if len(vals) > 1 else 0.0

    def split(ix):
        variances = [var([P[i][c] for i in ix]) for c in range(C)]
        best = 0
        for c in range(C):
            if variances[c] > variances[best]:
                best = c
        values = sorted(P[i][best] for i in ix)
        median = values[len(ix) // 2]  # element floor(n/2)+1, 1-based
        below = [i for i in ix if P[i][best] < median]
        above = [i for i in ix if P[i][best] >= median]
        if len(below) < m or len(above) < m:
            return [ix]
        out = []
        for half in (below, above):
            out += [half] if len(half) < 2 * m else split(half)
        return out

    if len(idx) < 2 * m:
        return [list(idx)]
    return split(list(idx))


def naive_thesis_ece(P, y, m=20):
    P = [list(map(float, p)) for p in P]
    N, C = len(P), len(P[0])
    total = 0.0
    for b in naive_variance_bins(P, range(N), m):
        sq = 0.0
        for c in range(C):
            pbar = sum(P[i][c] for i in b) / len(b)
            ybar = sum(1.0 for i in b if y[i] == c) / len(b)
            sq += (pbar - ybar) ** 2
        total += len(b) / N * sq
    return total


def naive_entropy(p):
    return -sum(q * math.log(q) for q in p if q > 0)


# ---------------------------------------------------------------------------------------------------
# point metrics
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,C,seed", CASES)
def test_accuracy_nll_brier_against_loops_and_sklearn(n, C, seed):
    skm = pytest.importorskip("sklearn.metrics")
    P, y = make_probs(n, C, seed)
    acc = sum(int(np.argmax(p) == t) for p, t in zip(P, y)) / n
    assert M.accuracy(P, y) == pytest.approx(acc, abs=1e-15)
    assert M.accuracy(P, y) == pytest.approx(skm.accuracy_score(y, P.argmax(1)))
    loop_nll = -sum(math.log(max(p[t], np.finfo(float).eps)) for p, t in zip(P, y)) / n
    assert M.nll(P, y) == pytest.approx(loop_nll, rel=1e-12)
    assert M.nll(P, y) == pytest.approx(skm.log_loss(y, P, labels=list(range(C))), rel=1e-9)
    loop_brier = sum(sum((p[c] - (c == t)) ** 2 for c in range(C)) for p, t in zip(P, y)) / n
    assert M.brier(P, y) == pytest.approx(loop_brier, rel=1e-12)
    if C == 2:  # sklearn's binary Brier is the per-class one: ours is twice it
        assert M.brier(P, y) == pytest.approx(2 * skm.brier_score_loss(y, P[:, 1]), rel=1e-9)


@pytest.mark.parametrize("n,C,seed", CASES[2:])
def test_top_k_accuracy_against_sklearn_and_loop(n, C, seed):
    skm = pytest.importorskip("sklearn.metrics")
    P, y = make_probs(n, C, seed)
    for k in (1, 2, 3):
        loop = sum(t in sorted(range(C), key=lambda c: (-p[c], c))[:k] for p, t in zip(P, y)) / n
        assert M.top_k_accuracy(P, y, k) == pytest.approx(loop)
        assert M.top_k_accuracy(P, y, k) == pytest.approx(
            skm.top_k_accuracy_score(y, P, k=k, labels=list(range(C))))
    assert M.top_k_accuracy(P, y, 1) == M.accuracy(P, y)
    assert M.top_k_accuracy(P, y, C) == 1.0
    # ties: the lower class index ranks first, as in accuracy
    assert M.top_k_accuracy(np.array([[0.5, 0.5]]), np.array([1]), 1) == 0.0


def test_nll_floors_zero_probability_at_eps():
    P = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([1, 0])
    expected = (-math.log(np.finfo(float).eps) - math.log(0.5)) / 2
    assert M.nll(P, y) == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(M.nll(P, y))


def test_point_metrics_hand_cases():
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 0, 0])
    assert M.accuracy(P, y) == pytest.approx(2 / 3)
    assert M.brier(P, y) == pytest.approx((0.02 + 1.28 + 0.32) / 3)
    # ties in argmax go to the first class
    assert M.accuracy(np.array([[0.5, 0.5]]), np.array([0])) == 1.0


# ---------------------------------------------------------------------------------------------------
# top-label ECE / MCE / reliability bins
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,C,seed", CASES)
@pytest.mark.parametrize("n_bins", [15, 10, 1])
def test_ece_mce_against_naive_loop(n, C, seed, n_bins):
    P, y = make_probs(n, C, seed)
    e, m = naive_ece_mce(P, y, n_bins)
    assert M.ece(P, y, n_bins) == pytest.approx(e, rel=1e-12, abs=1e-15)
    assert M.mce(P, y, n_bins) == pytest.approx(m, rel=1e-12, abs=1e-15)


def test_ece_with_confidences_on_bin_edges():
    # confidences exactly k/10 with 10 bins: (lo, hi] puts 0.6 into bin 5 and 1.0 into the last bin
    edges = np.linspace(0, 1, 11)
    P = np.array([[edges[6], 1 - edges[6]], [1.0, 0.0], [edges[5], 1 - edges[5]], [1.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    r = M.reliability_bins(P, y, 10)
    assert r["counts"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 2]
    e, m = naive_ece_mce(P, y, 10)
    assert M.ece(P, y, 10) == pytest.approx(e)
    assert M.mce(P, y, 10) == pytest.approx(m)


def test_reliability_bins_consistent_and_hand_ece():
    P = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    y = np.array([0, 1, 0, 0])
    r = M.reliability_bins(P, y, 10)
    assert r["counts"].sum() == 4
    assert r["counts"][9] == 2 and r["counts"][5] == 2
    assert r["accuracy"][9] == 0.5 and r["accuracy"][5] == 1.0
    assert np.isnan(r["accuracy"][0])
    # ECE = 0.5 * |0.5 - 0.95| + 0.5 * |1 - 0.55| = 0.45, MCE = 0.45
    assert M.ece(P, y, 10) == pytest.approx(0.45)
    assert M.mce(P, y, 10) == pytest.approx(0.45)


def test_ece_zero_for_perfect_one_hot_predictions():
    y = np.array([0, 1, 2, 1])
    P = np.eye(3)[y]
    assert M.ece(P, y) == 0.0 and M.mce(P, y) == 0.0 and M.thesis_ece(P, y) == 0.0


# ---------------------------------------------------------------------------------------------------
# thesis ECE (SPEC 11)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,C,seed,m,quantise", [
    (39, 3, 0, 20, None), (40, 3, 1, 20, None), (41, 10, 2, 20, None), (100, 10, 3, 20, None),
    (1000, 10, 4, 20, None), (1500, 4, 5, 20, None), (300, 10, 6, 5, None), (800, 3, 7, 20, 10),
    (600, 10, 8, 20, 4), (200, 2, 9, 1, None),
])
def test_thesis_ece_against_naive_recursion(n, C, seed, m, quantise):
    P, y = make_probs(n, C, seed, quantise=quantise)
    got = M.thesis_ece(P, y, m)
    assert got == pytest.approx(naive_thesis_ece(P, y, m), rel=1e-10, abs=1e-15)
    ours = sorted(tuple(b.tolist()) for b in M.variance_split_bins(P, m))
    ref = sorted(tuple(sorted(b)) for b in naive_variance_bins(P.tolist(), range(n), m))
    assert ours == ref
    flat = np.sort(np.concatenate([np.asarray(b) for b in ours]))
    assert flat.tolist() == list(range(n))  # a partition
    if n >= 2 * m:
        assert min(len(b) for b in ours) >= m


def test_thesis_ece_small_n_is_one_bin():
    P, y = make_probs(39, 3, 11)
    Y = np.eye(3)[y]
    d = P.mean(0) - Y.mean(0)
    assert M.thesis_ece(P, y) == pytest.approx(float(d @ d), rel=1e-12)
    assert len(M.variance_split_bins(P)) == 1
    # fewer points than the minimum bin size: still one bin (no error)
    assert M.thesis_ece(P[:5], y[:5]) == pytest.approx(
        float(np.sum((P[:5].mean(0) - Y[:5].mean(0)) ** 2)), rel=1e-12)


def test_thesis_ece_two_clusters_hand_case():
    # 20 points at (0.9, 0.1) all class 0 and 20 points at (0.3, 0.7) half class 0: the split at the
    # median element (0.9, element 21 of 40) separates the clusters into two bins of 20
    P = np.array([[0.9, 0.1]] * 20 + [[0.3, 0.7]] * 20)
    y = np.array([0] * 20 + [0] * 10 + [1] * 10)
    bins = M.variance_split_bins(P)
    assert sorted(len(b) for b in bins) == [20, 20]
    # bin 1: pbar (0.9, 0.1), ybar (1, 0) -> 0.02 ; bin 2: pbar (0.3, 0.7), ybar (0.5, 0.5) -> 0.08
    assert M.thesis_ece(P, y) == pytest.approx(0.5 * 0.02 + 0.5 * 0.08)
    # a 19/21 split refuses to split (one half < 20) and gives one bin
    P2 = np.array([[0.9, 0.1]] * 21 + [[0.3, 0.7]] * 19)
    assert len(M.variance_split_bins(P2)) == 1


def test_thesis_ece_median_ties_go_above():
    # 30 equal values then 30 larger ones: median element is the first of the larger ones; "below" holds
    # the 30 strictly smaller values -> two bins of 30
    P = np.array([[0.2, 0.8]] * 30 + [[0.7, 0.3]] * 30)
    assert sorted(len(b) for b in M.variance_split_bins(P)) == [30, 30]
    # constant predictions: below is empty -> one bin
    assert len(M.variance_split_bins(np.full((100, 2), 0.5))) == 1


# ---------------------------------------------------------------------------------------------------
# relative calibration
# ---------------------------------------------------------------------------------------------------
def test_relative_calibration_hand_examples():
    P = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    y = np.array([0, 1, 0])  # correct, wrong, correct
    x, a = M.relative_calibration_curve(P, y)
    assert x.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert a.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert M.relative_calibration_auc(P, y) == pytest.approx(0.5 * (2 / 3 / 2 + 0.5 + 1.0 / 2))


def test_relative_calibration_ties_stable_sort_then_reverse():
    # equal confidence: the stable ascending order is (0, 1), reversed (1, 0): example 1 (wrong) counts
    # as the most confident one
    P = np.array([[0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1])
    _, a = M.relative_calibration_curve(P, y)
    assert a.tolist() == [0.5, 0.0]
    assert M.relative_calibration_auc(P, y) == pytest.approx(0.25)
    assert M.relative_calibration_auc(P, y[::-1]) == pytest.approx(0.75)
    assert M.relative_calibration_auc(P[:1], y[:1]) == 1.0


@pytest.mark.parametrize("n,C,seed", CASES[1:])
def test_relative_calibration_against_naive_loop(n, C, seed):
    P, y = make_probs(n, C, seed, quantise=5)  # many ties
    conf = [max(p) for p in P]
    asc = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable
    desc = asc[::-1]
    accs, hits = [], 0
    for k, i in enumerate(desc, start=1):
        hits += int(np.argmax(P[i]) == y[i])
        accs.append(hits / k)
    ys = [accs[n - j] for j in range(1, n + 1)]
    _, a = M.relative_calibration_curve(P, y)
    assert a == pytest.approx(ys, rel=1e-12)
    auc = (ys[0] / 2 + sum(ys[1:-1]) + ys[-1] / 2) / (n - 1)
    assert M.relative_calibration_auc(P, y) == pytest.approx(auc, rel=1e-12)


# ---------------------------------------------------------------------------------------------------
# OOD
# ---------------------------------------------------------------------------------------------------
def test_entropy_scores_with_zeros():
    P = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    s = M.ood_scores(P)
    assert np.all(np.isfinite(s))
    assert s == pytest.approx([naive_entropy(p) for p in P])
    assert s == pytest.approx([0.0, math.log(2), math.log(3)])


@pytest.mark.parametrize("seed,quantise", [(0, None), (1, 4), (2, 2), (3, 1)])
def test_auroc_aupr_roc_against_sklearn(seed, quantise):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    s_in, s_ood = rng.normal(0, 1, 137), rng.normal(0.7, 1, 61)
    if quantise:
        s_in, s_ood = np.round(s_in * quantise) / quantise, np.round(s_ood * quantise) / quantise
    t = np.r_[np.zeros(137), np.ones(61)]
    s = np.r_[s_in, s_ood]
    assert M.auroc(s_in, s_ood) == pytest.approx(skm.roc_auc_score(t, s), rel=1e-12)
    assert M.average_precision(s_in, s_ood) == pytest.approx(skm.average_precision_score(t, s), rel=1e-12)
    fpr, tpr, thr = M.roc_curve(s_in, s_ood)
    f2, t2, th2 = skm.roc_curve(t, s, drop_intermediate=False)
    assert fpr == pytest.approx(f2) and tpr == pytest.approx(t2)
    assert thr[1:] == pytest.approx(th2[1:])
    # trapezoid under our curve equals the rank statistic
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(M.auroc(s_in, s_ood))
    # naive pair count with ties as 1/2
    pairs = sum((o > i) + 0.5 * (o == i) for o in s_ood for i in s_in) / (137 * 61)
    assert M.auroc(s_in, s_ood) == pytest.approx(pairs, rel=1e-12)


def test_auroc_hand_cases():
    assert M.auroc([0, 1], [2, 3]) == 1.0
    assert M.auroc([2, 3], [0, 1]) == 0.0
    assert M.auroc([1, 1, 1], [1, 1]) == 0.5
    assert M.average_precision([0, 1], [2, 3]) == 1.0
    # ranking ood, in, ood, in: precisions 1 and 2/3 at recalls 1/2 and 1
    assert M.average_precision([3, 1], [4, 2]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ood_auroc_aupr_from_probabilities():
    skm = pytest.importorskip("sklearn.metrics")
    P_in, _ = make_probs(200, 10, 0, concentration=0.1)
    P_ood, _ = make_probs(150, 10, 1, concentration=2.0)
    P_in[0] = np.eye(10)[3]  # zeros: 0 log 0 = 0
    h_in = np.array([naive_entropy(p) for p in P_in])
    h_ood = np.array([naive_entropy(p) for p in P_ood])
    t = np.r_[np.zeros(200), np.ones(150)]
    assert M.ood_auroc(P_in, P_ood) == pytest.approx(skm.roc_auc_score(t, np.r_[h_in, h_ood]), rel=1e-12)
    assert M.ood_aupr(P_in, P_ood) == pytest.approx(skm.average_precision_score(t, np.r_[h_in, h_ood]),
                                                    rel=1e-12)
    assert M.ood_auroc(P_in, P_ood) > 0.9
    one_hot = np.eye(4)[[0, 1, 2, 3]]
    uniform = np.full((3, 4), 0.25)
    assert M.ood_auroc(one_hot, uniform) == 1.0
    assert M.ood_aupr(one_hot, uniform) == 1.0


# ---------------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------------
def test_regression_metrics_against_loops():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n = 500
    mean = rng.normal(size=n)
    var = rng.uniform(0.1, 2.0, n)
    y = mean + rng.normal(size=n) * np.sqrt(var) * 1.3
    assert M.rmse(mean, y) == pytest.approx(math.sqrt(sum((a - b) ** 2 for a, b in zip(mean, y)) / n))
    assert M.gaussian_nll(mean, var, y) == pytest.approx(-np.mean(norm.logpdf(y, mean, np.sqrt(var))),
                                                         rel=1e-12)
    cov = M.interval_coverage(mean, var, y)
    for k in (1, 2, 3):
        loop = sum(abs(b - a) <= k * math.sqrt(v) for a, v, b in zip(mean, var, y)) / n
        assert cov[k] == pytest.approx(loop)
    # (n, 1) and (n,) are interchangeable; a scalar variance broadcasts
    assert M.gaussian_nll(mean[:, None], var[:, None], y) == pytest.approx(M.gaussian_nll(mean, var, y))
    assert M.gaussian_nll(mean, 0.5, y) == pytest.approx(-np.mean(norm.logpdf(y, mean, math.sqrt(0.5))))
    r = M.regression_metrics(mean, var, y)
    assert r["loglik"] == pytest.approx(-r["nll"]) and r["coverage_2sigma"] == cov[2]
    json.dumps(r)


def test_interval_coverage_hand_case():
    mean = np.zeros(4)
    var = np.ones(4)
    y = np.array([0.5, 1.0, 1.5, 2.5])  # |err| <= k: 1 sigma 2/4 (1.0 included), 2 sigma 3/4, 3 sigma 4/4
    assert M.interval_coverage(mean, var, y) == {1: 0.5, 2: 0.75, 3: 1.0}


# ---------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------
GOOD_P = np.array([[0.7, 0.3], [0.4, 0.6]])
GOOD_Y = np.array([0, 1])


CLASSIFICATION_FNS = [M.accuracy, M.top_k_accuracy, M.nll, M.brier, M.ece, M.mce, M.thesis_ece,
                      M.relative_calibration_auc, M.relative_calibration_curve, M.reliability_bins,
                      M.classification_metrics]


@pytest.mark.parametrize("P,y,match", [
    (GOOD_P[0], GOOD_Y[:1], "shape"),
    (np.zeros((0, 2)), np.zeros(0, int), "empty"),
    (np.array([[1.0], [1.0]]), GOOD_Y, "at least 2 classes"),
    (np.array([[np.nan, 0.3], [0.4, 0.6]]), GOOD_Y, "NaN"),
    (np.array([[np.inf, 0.3], [0.4, 0.6]]), GOOD_Y, "NaN or inf"),
    (np.array([[1.2, -0.2], [0.4, 0.6]]), GOOD_Y, r"\[0, 1\]"),
    (np.array([[0.7, 0.7], [0.4, 0.6]]), GOOD_Y, "sum to 1"),
    (GOOD_P, np.array([0, 2]), "range"),
    (GOOD_P, np.array([-1, 0]), "range"),
    (GOOD_P, np.array([0.0, 0.5]), "integer"),
    (GOOD_P, np.eye(2), "one-hot"),
    (GOOD_P, np.array([0, 1, 1]), "shape"),
    (GOOD_P, np.array(["a", "b"]), "integer"),
])
def test_bad_classification_input_raises(P, y, match):
    for fn in CLASSIFICATION_FNS:
        with pytest.raises(ValueError, match=match):
            fn(P, y)


def test_bad_other_inputs_raise():
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(GOOD_P, GOOD_Y, 0)
    with pytest.raises(ValueError, match="min_bin_size"):
        M.thesis_ece(GOOD_P, GOOD_Y, 0)
    with pytest.raises(ValueError, match="same number of classes"):
        M.ood_auroc(GOOD_P, np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="empty"):
        M.auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        M.auroc([np.nan], [1.0])
    with pytest.raises(ValueError, match="positive"):
        M.gaussian_nll([0.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="same shape"):
        M.rmse([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        M.rmse([np.nan], [1.0])
    with pytest.raises(ValueError, match="empty"):
        M.rmse(np.zeros(0), np.zeros(0))
    # float labels with integer values are accepted
    assert M.accuracy(GOOD_P, GOOD_Y.astype(float)) == 1.0


def test_classification_metrics_bundle_is_json_ready():
    P, y = make_probs(100, 10, 0)
    P_ood, _ = make_probs(50, 10, 1, concentration=3.0)
    r = M.classification_metrics(P, y, P_ood)
    assert r["accuracy"] == M.accuracy(P, y) and r["thesis_ece"] == M.thesis_ece(P, y)
    assert r["ood_auroc"] == M.ood_auroc(P, P_ood)
    json.dumps(r)


def test_new_modules_import_nothing_from_other_packages():
    code = ("import sys, factorgraph.metrics, factorgraph.datasets, factorgraph.plots; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('layers', 'schedules', 'trainer', 'matplotlib', 'sklearn')); print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
