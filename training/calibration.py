"""Offline classification metrics: temperature scaling, expected calibration error, confusion matrix, plots.

The CARIL correction rule thresholds the classifier's max probability (0.9 / 0.5) and entropy (1.5 nats);
the reference applies them to an uncalibrated softmax (``imitation-learning.md`` 4.1). Temperature scaling
(Guo et al. 2017) fixes that with one scalar: ``softmax(logits / T)``, T fitted on held-out logits by
minimising the negative log-likelihood. The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions
minus a linear one), so a golden-section search over ``1 / T`` finds the optimum deterministically, with no
optimiser state or random start.

ECE: confidences (max probability) fall into ``n_bins`` equal-width bins over [0, 1]; ECE is the
frequency-weighted mean gap ``|accuracy(bin) - mean confidence(bin)|`` (0 = calibrated, 15 bins as Guo et al.).
Plots use matplotlib's object API with the Agg canvas (no pyplot, no global backend state, no display).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.correction import temperature_scale

ECE_BINS = 15
T_MIN, T_MAX = 0.01, 100.0  # the search interval of the temperature
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need logits (N, classes) and labels (N,) with N > 0, got {z.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in 0..{z.shape[1] - 1}")
    return z, y


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of ``labels`` under ``softmax(logits / temperature)``."""
    z, y = _check(logits, labels)
    z = z / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))  # (N,)
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tol: float = 1e-7) -> float:
    """The temperature T in [0.01, 100] minimising the NLL of ``softmax(logits / T)`` on (validation) data.

    Golden-section search on ``beta = 1 / T`` (the NLL is convex in beta); deterministic, float64.
    """
    z, y = _check(logits, labels)
    z = z - z.max(axis=1, keepdims=True)  # softmax is shift-invariant; keeps exp() in range for small T
    picked = z[np.arange(len(y)), y]

    def loss(beta: float) -> float:
        s = beta * z
        m = s.max(axis=1)
        return float(np.mean(m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - beta * picked))

    lo, hi = 1.0 / T_MAX, 1.0 / T_MIN
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    while hi - lo > tol:
        if fa <= fb:  # the minimum is in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return float(1.0 / (0.5 * (lo + hi)))


@dataclass(frozen=True)
class Reliability:
    """Per-confidence-bin statistics: ``edges`` (n_bins + 1), ``counts``, ``accuracy`` and ``confidence``
    (mean max probability; NaN in empty bins), and the resulting ``ece``."""

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """Bin samples by confidence (max probability; bin ``i`` holds ``edges[i] < c <= edges[i+1]``, a
    confidence of 0 goes in the first) and compare each bin's accuracy with its mean confidence."""
    p, y = _check(probs, labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(which, weights=correct, minlength=n_bins) / counts
        conf = np.bincount(which, weights=confidence, minlength=n_bins) / counts
    gaps = np.where(counts > 0, np.abs(acc - conf), 0.0)
    ece = float(np.sum(counts / len(y) * gaps))
    return Reliability(edges, counts, acc, conf, ece)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of class probabilities ``probs`` (N, classes) against ``labels`` (N,), in [0, 1]."""
    return reliability(probs, labels, n_bins).ece


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts (int64, n_classes x n_classes)."""
    y = np.asarray(labels, np.int64).reshape(-1)
    p = np.asarray(predicted, np.int64).reshape(-1)
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class CalibrationReport:
    """Accuracy, ECE before and after temperature scaling, the fitted temperature and the confusion matrix."""

    temperature: float
    accuracy: float
    ece: float
    ece_calibrated: float
    nll: float
    nll_calibrated: float
    confusion: np.ndarray

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "accuracy": self.accuracy, "ece": self.ece,
                "ece_calibrated": self.ece_calibrated, "nll": self.nll, "nll_calibrated": self.nll_calibrated,
                "confusion_matrix": self.confusion.tolist()}


def calibrate(logits: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> CalibrationReport:
    """Fit the temperature on (validation) ``logits`` and report the metrics around it."""
    z, y = _check(logits, labels)
    t = fit_temperature(z, y)
    return CalibrationReport(
        temperature=t, accuracy=float(np.mean(z.argmax(axis=1) == y)),
        ece=expected_calibration_error(temperature_scale(z, 1.0), y),
        ece_calibrated=expected_calibration_error(temperature_scale(z, t), y),
        nll=nll(z, y), nll_calibrated=nll(z, y, t),
        confusion=confusion_matrix(y, z.argmax(axis=1), n_classes or z.shape[1]))


# --- plots ------------------------------------------------------------------------------------------------


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)  # fixed margins: constrained layout costs ~0.3 s
    FigureCanvasAgg(fig)
    return fig


def reliability_figure(probs: np.ndarray, labels: np.ndarray, title: str = "", n_bins: int = ECE_BINS):
    """A matplotlib Figure: accuracy per confidence bin against the diagonal, bin counts below."""
    r = reliability(probs, labels, n_bins)
    fig = _figure(5.0, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    fig.subplots_adjust(left=0.14, right=0.97, top=0.93, bottom=0.1, hspace=0.08)
    centres = 0.5 * (r.edges[:-1] + r.edges[1:])
    width = r.edges[1] - r.edges[0]
    filled = r.counts > 0
    top.bar(centres[filled], r.accuracy[filled], width=width, edgecolor="black", label="accuracy")
    top.bar(centres[filled], (r.confidence - r.accuracy)[filled], bottom=r.accuracy[filled], width=width,
            color="tab:red", alpha=0.35, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    top.set(ylim=(0, 1), ylabel="accuracy", title=f"{title} ECE={r.ece:.3f}".strip())
    top.legend(loc="upper left")
    bottom.bar(centres, r.counts, width=width, edgecolor="black", color="tab:gray")
    bottom.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="samples")
    return fig


def confusion_figure(confusion: np.ndarray, title: str = ""):
    """A matplotlib Figure of the row-normalised confusion matrix (rows: true bin), counts in the cells."""
    cm = np.asarray(confusion, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = cm.shape[0]
    fig = _figure(1.5 + 0.5 * n, 1.0 + 0.45 * n)
    ax = fig.subplots()
    fig.subplots_adjust(left=0.1, right=0.98, top=0.92, bottom=0.1)
    image = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted bin", ylabel="true bin", title=title)
    fig.colorbar(image, ax=ax, label="fraction of the true bin")
    return fig


def figure_rgb(fig) -> np.ndarray:
    """Render a figure from this module once: (H, W, 3) uint8 RGB pixels."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write (H, W, 3) uint8 RGB pixels as a PNG file (parent folders created)."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float, n_classes: int,
                        title: str = "") -> dict[str, np.ndarray]:
    """Rendered ``confusion_matrix``, ``reliability_diagram`` (T = 1) and ``reliability_diagram_calibrated``."""
    z, y = _check(logits, labels)
    figures = {
        "confusion_matrix": confusion_figure(confusion_matrix(y, z.argmax(axis=1), n_classes), title),
        "reliability_diagram": reliability_figure(temperature_scale(z, 1.0), y, title),
        "reliability_diagram_calibrated": reliability_figure(temperature_scale(z, temperature), y,
                                                             f"{title} T={temperature:.2f}".strip()),
    }
    return {name: figure_rgb(fig) for name, fig in figures.items()}
