"""Alerting on one emotion (trainer/alerts.py): exact counts, precision and recall on a hand-made split."""

from __future__ import annotations

import pytest

from trainer.alerts import ALERT_THRESHOLDS, alert_rows, alert_table, plot_alert_curves

LABELS = ("neutral", "fear", "anger", "disgust")  # disgust: no gold turn and never predicted
GOLD = [0, 0, 1, 1, 2]
PRED = [0, 1, 1, 0, 1]
CONF = [0.9, 0.5, 0.7, 0.4, 0.3]


def test_rows_count_the_rule_emotion_is_e_and_confidence_at_least_t():
    rows = alert_rows(GOLD, PRED, CONF, 1, (0.0, 0.5, 0.8))
    # t = 0: turns 1, 2, 4 predict fear; turn 2 is fear (of 2 fear turns: 2 and 3).
    assert (rows[0].alerts, rows[0].correct, rows[0].support) == (3, 1, 2)
    assert rows[0].precision == pytest.approx(1 / 3) and rows[0].recall == 0.5
    # t = 0.5 keeps turn 1 (0.5 is enough) and turn 2.
    assert (rows[1].alerts, rows[1].correct, rows[1].precision, rows[1].recall) == (2, 1, 0.5, 0.5)
    # t = 0.8: nothing fires: no precision to speak of, recall 0.
    assert (rows[2].alerts, rows[2].precision, rows[2].recall) == (0, None, 0.0)


def test_a_label_never_predicted_or_never_gold():
    never_predicted = alert_rows(GOLD, PRED, CONF, 2, (0.0,))[0]
    assert (never_predicted.alerts, never_predicted.support, never_predicted.precision, never_predicted.recall) == (
        0,
        1,
        None,
        0.0,
    )
    absent = alert_rows(GOLD, PRED, CONF, 3, (0.0,))[0]
    assert (absent.support, absent.recall) == (0, None)


def test_table_has_every_label_and_threshold_rounded_for_json():
    table = alert_table(GOLD, PRED, CONF, LABELS)
    assert list(table) == list(LABELS)
    assert [r["threshold"] for r in table["fear"]] == list(ALERT_THRESHOLDS)
    assert table["fear"][0] == {
        "threshold": 0.0,
        "alerts": 3,
        "correct": 1,
        "support": 2,
        "precision": 0.3333,
        "recall": 0.5,
    }
    assert table["neutral"][0]["precision"] == 0.5  # turns 0 and 3 predict neutral; turn 0 is


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="equal in length"):
        alert_rows(GOLD, PRED[:-1], CONF, 1, (0.0,))


def test_plot_is_a_png(tmp_path):
    path = plot_alert_curves(tmp_path / "r" / "alerts_dev.png", GOLD, PRED, CONF, LABELS, "meld v1 dev")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
