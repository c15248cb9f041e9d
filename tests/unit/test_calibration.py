"""Temperature scaling and ECE, with exact expected values and a recovered known temperature."""

from __future__ import annotations

import numpy as np
import pytest

from erc_stream.model import confidence_temperature
from trainer.calibration import (
    T_MAX,
    T_MIN,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)


def test_ece_by_hand():
    # bins of width 1/15: 0.95 and 0.99 share the last bin, 0.5 sits in bin 8 (0.4667, 0.5333]
    conf = np.array([0.95, 0.99, 0.5, 0.5])
    correct = np.array([1.0, 0.0, 1.0, 1.0])
    # last bin: mean conf 0.97, accuracy 0.5 -> |0.47| * 2/4; bin of 0.5: |1 - 0.5| * 2/4
    assert expected_calibration_error(conf, correct) == pytest.approx(0.47 * 0.5 + 0.5 * 0.5)
    assert expected_calibration_error(np.array([0.8, 0.8]), np.array([1.0, 0.0])) == pytest.approx(0.3)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, size=(20000, 5))  # cosine-like
    t_true = 0.25
    p = np.exp(scores / t_true)
    p /= p.sum(axis=1, keepdims=True)
    gold = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(scores, gold, init=0.1) == pytest.approx(t_true, rel=0.05)


def test_calibrate_lowers_ece_of_overconfident_scores_and_keeps_predictions(tmp_path):
    rng = np.random.default_rng(1)
    n, c = 4000, 4
    scores = rng.uniform(-1, 1, size=(n, c))
    p = np.exp(scores / 0.5)
    p /= p.sum(axis=1, keepdims=True)
    gold = [int(rng.choice(c, p=row)) for row in p]
    groups = [f"conv-{i // 10}" for i in range(n)]
    cal = calibrate(scores, gold, groups, tau=0.05)  # tau far too sharp for these labels
    assert cal.ece_before > 0.2
    assert cal.ece_after < 0.05 and cal.ece_after_in_sample < 0.05
    assert cal.temperature == pytest.approx(0.5, rel=0.1)
    m = cal.to_manifest()
    assert m["temperature"] == round(cal.temperature, 6) and m["fitted_on"] == "dev" and m["utterances"] == n
    assert m["at_bound"] is False and cal.warning is None
    reliability_diagram(tmp_path / "reliability.png", scores, gold, cal)
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_predictor_uses_the_fitted_temperature_when_the_artifact_has_one():
    assert confidence_temperature({"temperature": 0.1}) == 0.1
    assert confidence_temperature({"temperature": 0.1, "calibration": {"temperature": 0.37}}) == 0.37


def test_a_dev_split_that_cannot_pin_the_temperature_down_ends_at_a_bound_and_says_so():
    """All right: the unbounded fit runs towards T = 0 (it reached about 1e-4 before the bounds);
    all wrong: towards infinity (about 2e6). Either way the temperature stops at a bound, is flagged,
    and the warning says what to do."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.8, size=(20, 4))
    groups = [f"c{i % 4}" for i in range(20)]
    right = calibrate(scores, scores.argmax(axis=1), groups, tau=0.1)
    assert right.temperature == T_MIN and right.at_bound and right.to_manifest()["at_bound"] is True
    assert "nearly all predicted right" in right.warning and "near 1;" in right.warning
    assert "fitted on 20 dev utterances" in right.warning
    wrong = calibrate(scores, scores.argmin(axis=1), groups, tau=0.1)
    assert wrong.temperature == T_MAX and wrong.at_bound
    assert "nearly all predicted wrong" in wrong.warning and "will be flat;" in wrong.warning
    assert fit_temperature(scores, scores.argmax(axis=1)) == T_MIN
