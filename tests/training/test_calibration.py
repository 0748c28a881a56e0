"""Temperature scaling, ECE, confusion matrix and the calibration plots, on synthetic logits with known answers."""

import numpy as np
import pytest

from agent.correction import temperature_scale
from training.calibration import (
    calibrate,
    calibration_figures,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    save_png,
)


def sampled(n, n_classes=11, true_temperature=1.0, seed=0):
    """Logits whose labels are drawn from softmax(logits / true_temperature): that temperature calibrates them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, n_classes))
    probs = temperature_scale(logits, true_temperature)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_temperature):
    logits, labels = sampled(40_000, true_temperature=true_temperature, seed=1)
    t = fit_temperature(logits, labels)
    assert abs(t - true_temperature) / true_temperature < 0.03
    assert fit_temperature(logits, labels) == t  # deterministic, bit for bit
    for other in (0.9 * t, 1.1 * t):  # it is the minimum of the NLL
        assert nll(logits, labels, t) < nll(logits, labels, other)


def test_temperature_scaling_reduces_ece_of_overconfident_logits():
    logits, labels = sampled(20_000, true_temperature=1.0, seed=2)
    report = calibrate(3.0 * logits, labels)  # three times too sharp
    assert abs(report.temperature - 3.0) < 0.1
    assert report.ece > 0.1 and report.ece_calibrated < 0.02
    assert report.nll_calibrated < report.nll
    assert report.accuracy == np.mean(logits.argmax(axis=1) == labels)


def test_ece_of_perfectly_calibrated_data_is_zero():
    # exact construction: in each confidence level the fraction of correct predictions equals the confidence
    rows, labels = [], []
    for confidence, n_correct, n in ((0.5, 5, 10), (0.8, 8, 10), (1.0, 4, 4)):
        p = np.full(3, (1.0 - confidence) / 2)
        p[0] = confidence
        rows += [p] * n
        labels += [0] * n_correct + [1] * (n - n_correct)
    assert expected_calibration_error(np.array(rows), np.array(labels)) == pytest.approx(0.0, abs=1e-12)
    # sampled: labels drawn from the probabilities themselves
    logits, labels = sampled(50_000, seed=3)
    assert expected_calibration_error(temperature_scale(logits, 1.0), labels) < 0.01


def test_ece_and_reliability_bins_of_overconfident_data():
    probs = np.tile([0.9, 0.05, 0.05], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)  # 60% right at 90% confidence
    r = reliability(probs, labels, n_bins=15)
    assert r.ece == pytest.approx(0.3)
    assert r.counts.sum() == 10 and r.counts[13] == 10  # 0.9 lies in (13/15, 14/15]
    assert r.accuracy[13] == pytest.approx(0.6) and r.confidence[13] == pytest.approx(0.9)
    assert np.isnan(r.accuracy[0])


def test_confusion_matrix_counts_true_by_predicted():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_figures_render_to_png(tmp_path):
    logits, labels = sampled(500, seed=4)
    images = calibration_figures(logits, labels, 1.3, 11, "epoch 3")
    assert set(images) == {"confusion_matrix", "reliability_diagram", "reliability_diagram_calibrated"}
    for name, rgb in images.items():
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.std() > 0
        path = save_png(rgb, tmp_path / "plots" / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        fit_temperature(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="N > 0"):
        expected_calibration_error(np.zeros((0, 3)), [])
