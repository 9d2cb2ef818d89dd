"""Evaluation plots written as PNG files (matplotlib, optional extra ``plot``).

matplotlib is imported lazily inside each function, and figures are drawn on an Agg canvas without
pyplot, so nothing here touches the user's interactive backend or global figure state.  Each function
writes one PNG (creating missing parent folders) and returns its path as a string.
"""

from pathlib import Path

import numpy as np

from factorgraph import metrics

__all__ = ["reliability_diagram", "relative_calibration_plot", "roc_plot", "predictive_bands"]


def _figure(nrows=1, ncols=1, figsize=(6, 4.5), **kw):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'factorgraph[plot]'") from e
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _save(fig, path, dpi):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    return str(path)


def reliability_diagram(P, y, path, n_bins=15, title=None, dpi=120):
    """Reliability diagram (top-label): per-bin accuracy against confidence over ``n_bins`` equal-width
    bins (:func:`factorgraph.metrics.reliability_bins`) with the diagonal and the gap shaded, and below it
    a histogram of the confidences.  The legend gives the 15-bin ECE and the thesis ECE."""
    r = metrics.reliability_bins(P, y, n_bins)
    e, te, acc = metrics.ece(P, y, n_bins), metrics.thesis_ece(P, y), metrics.accuracy(P, y)
    conf = np.asarray(P, dtype=np.float64).max(axis=1)
    fig, (ax, axh) = _figure(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = r["edges"]
    width = np.diff(edges)
    nz = r["counts"] > 0
    ax.bar(edges[:-1][nz], r["accuracy"][nz], width=width[nz], align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(edges[:-1][nz], r["confidence"][nz] - r["accuracy"][nz], bottom=r["accuracy"][nz],
           width=width[nz], align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", linewidth=0.5,
           label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"reliability: acc {acc:.4f}, ECE({n_bins}) {e:.4f}, thesis ECE {te:.4f}",
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    axh.hist(conf, bins=edges, color="tab:gray", edgecolor="black", linewidth=0.5)
    axh.axvline(conf.mean(), color="tab:red", lw=1, label=f"mean confidence {conf.mean():.3f}")
    axh.axvline(acc, color="tab:blue", lw=1, ls="--", label=f"accuracy {acc:.3f}")
    axh.set_xlabel("confidence (largest probability)")
    axh.set_ylabel("count")
    axh.legend(loc="upper left", fontsize=7)
    return _save(fig, path, dpi)


def relative_calibration_plot(curves, path, title=None, dpi=120):
    """Relative calibration curves (SPEC 11): accuracy on the retained test data against the fraction
    discarded (least confident first), one line per entry of ``curves`` (dict name -> (P, y)); the legend
    gives each curve's AUC and thesis ECE."""
    if not curves:
        raise ValueError("curves is empty: pass a dict name -> (P, y)")
    fig, ax = _figure()
    for name, (P, y) in curves.items():
        x, a = metrics.relative_calibration_curve(P, y)
        auc = metrics.relative_calibration_auc(P, y)
        te = metrics.thesis_ece(P, y)
        ax.plot(x, a, lw=2, label=f"{name}: AUC {auc:.4f}, thesis ECE {te:.4f}")
    ax.set_xlabel("proportion of test data discarded")
    ax.set_ylabel("accuracy on remaining test data")
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def roc_plot(curves, path, title=None, dpi=120):
    """ROC curves of OOD detection, one per entry of ``curves`` (dict name -> (scores_in, scores_ood),
    scores higher for OOD, e.g. :func:`factorgraph.metrics.ood_scores`), with AUROC in the legend."""
    if not curves:
        raise ValueError("curves is empty: pass a dict name -> (scores_in, scores_ood)")
    fig, ax = _figure(figsize=(5.5, 5))
    for name, (s_in, s_ood) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(s_in, s_ood)
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUROC {metrics.auroc(s_in, s_ood):.4f}")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (in-distribution flagged)")
    ax.set_ylabel("true positive rate (OOD detected)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def predictive_bands(x, mean, var, path, x_train=None, y_train=None, title=None, ylim=None, dpi=120):
    """1-D predictive plot: the mean and 1/2/3-sigma bands of ``(mean, var)`` over inputs ``x`` (all of
    length n, or (n, 1)), sorted by x, with the training points if given."""
    def flat(a, name):
        a = np.asarray(a, dtype=np.float64)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise ValueError(f"{name} must have shape (n,) or (n, 1), got {a.shape}")
        return a

    x, mean, var = flat(x, "x"), flat(mean, "mean"), flat(var, "var")
    if not x.size or not (x.shape == mean.shape == var.shape):
        raise ValueError(f"x, mean and var must be non-empty with equal lengths, "
                         f"got {x.shape}, {mean.shape}, {var.shape}")
    if np.any(var < 0) or not np.all(np.isfinite(var)):
        raise ValueError("var must be finite and non-negative")
    o = np.argsort(x, kind="stable")
    x, mean, sd = x[o], mean[o], np.sqrt(var[o])
    fig, ax = _figure(figsize=(7, 4.5))
    for k, alpha in ((3, 0.12), (2, 0.2), (1, 0.3)):
        ax.fill_between(x, mean - k * sd, mean + k * sd, color="tab:red", alpha=alpha, lw=0,
                        label=f"{k} sd")
    ax.plot(x, mean, color="tab:red", lw=2, label="predictive mean")
    if x_train is not None and y_train is not None:
        ax.scatter(flat(x_train, "x_train"), flat(y_train, "y_train"), s=6, color="tab:orange",
                   zorder=3, label="training data")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path, dpi)
