"""compute_metrics on hand-made examples (values worked out by hand below) and write_report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.evaluate import compute_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS3 = ["neutral", "joy", "anger"]
DAILYDIALOG = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]

# Three classes, six utterances:
#   gold = [0, 0, 0, 1, 1, 2]
#   pred = [0, 0, 1, 1, 2, 2]
# neutral: TP 2, FP 0, FN 1 -> P 1,   R 2/3 -> F1 = 2*(2/3)/(5/3) = 4/5
# joy:     TP 1, FP 1, FN 1 -> P 1/2, R 1/2 -> F1 = 1/2
# anger:   TP 1, FP 1, FN 0 -> P 1/2, R 1   -> F1 = 2*(1/2)/(3/2) = 2/3
# support 3, 2, 1
# weighted F1 = (3*4/5 + 2*1/2 + 1*2/3) / 6 = (12/5 + 1 + 2/3) / 6 = (61/15) / 6 = 61/90
# macro F1    = (4/5 + 1/2 + 2/3) / 3 = (59/30) / 3 = 59/90
# accuracy    = 4/6 = 2/3
# MCC (multi-class, Gorodkin): c = 4 correct, s = 6, predicted counts p = (2, 2, 2), true counts t = (3, 2, 1)
#   (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
#   = (24 - 12) / sqrt((36 - 12)(36 - 14)) = 12 / sqrt(528) = 3 / sqrt(33)
# Without neutral (labels joy, anger):
#   micro: TP 1+1 = 2, FP 1+1 = 2, FN 1+0 = 1 -> P 1/2, R 2/3 -> F1 = (2/3)/(7/6) = 4/7
#   macro: (1/2 + 2/3) / 2 = 7/12
GOLD3 = [0, 0, 0, 1, 1, 2]
PRED3 = [0, 0, 1, 1, 2, 2]


def test_compute_metrics_hand_example():
    m = compute_metrics(GOLD3, PRED3, LABELS3, neutral_label="neutral")
    assert m["weighted_f1"] == pytest.approx(61 / 90, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(59 / 90, abs=1e-12)
    assert m["accuracy"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["mcc"] == pytest.approx(3 / math.sqrt(33), abs=1e-12)
    assert m["per_class_f1"] == pytest.approx({"neutral": 4 / 5, "joy": 1 / 2, "anger": 2 / 3}, abs=1e-12)
    assert m["support"] == {"neutral": 3, "joy": 2, "anger": 1}
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows gold, columns predicted
    assert m["labels"] == LABELS3
    assert m["n"] == 6
    assert m["micro_f1_no_neutral"] == pytest.approx(4 / 7, abs=1e-12)
    assert m["macro_f1_no_neutral"] == pytest.approx(7 / 12, abs=1e-12)
    json.dumps(m)  # plain JSON types only
    assert all(type(v) is float for k, v in m.items() if k in ("weighted_f1", "macro_f1", "accuracy", "mcc"))


# DailyDialog's label set; every non-neutral class occurs in gold.
#   idx:  0  1  2  3  4  5  6  7  8  9
#   gold: 0  0  0  1  2  3  4  4  5  6
#   pred: 0  4  1  1  0  3  4  4  5  0
# anger(1):     gold {3},    pred {2, 3}    -> TP 1, FP 1, FN 0 -> F1 2/3
# disgust(2):   gold {4},    pred {}        -> TP 0, FP 0, FN 1 -> F1 0
# fear(3):      gold {5},    pred {5}       -> F1 1
# happiness(4): gold {6, 7}, pred {1, 6, 7} -> TP 2, FP 1, FN 0 -> P 2/3, R 1 -> F1 4/5
# sadness(5):   gold {8},    pred {8}       -> F1 1
# surprise(6):  gold {9},    pred {}        -> TP 0, FP 0, FN 1 -> F1 0
# micro without neutral: TP 5, FP 2, FN 2 -> P = R = 5/7 -> F1 5/7
# macro without neutral: (2/3 + 0 + 1 + 4/5 + 1 + 0) / 6 = (52/15) / 6 = 26/45
GOLD_DD = [0, 0, 0, 1, 2, 3, 4, 4, 5, 6]
PRED_DD = [0, 4, 1, 1, 0, 3, 4, 4, 5, 0]


def test_dailydialog_micro_and_macro_without_neutral():
    m = compute_metrics(GOLD_DD, PRED_DD, DAILYDIALOG, neutral_label="neutral")
    assert m["micro_f1_no_neutral"] == pytest.approx(5 / 7, abs=1e-12)
    assert m["macro_f1_no_neutral"] == pytest.approx(26 / 45, abs=1e-12)
    assert m["accuracy"] == pytest.approx(6 / 10, abs=1e-12)
    # neutral: gold {0,1,2}, pred {0,4,9} -> TP 1, FP 2, FN 2 -> F1 1/3
    assert m["per_class_f1"]["neutral"] == pytest.approx(1 / 3, abs=1e-12)


def test_no_neutral_keys_only_with_a_neutral_label():
    m = compute_metrics(GOLD3, PRED3, LABELS3)
    assert "micro_f1_no_neutral" not in m and "macro_f1_no_neutral" not in m


def test_constant_predictions_give_zero_mcc_and_zero_f1_for_absent_classes():
    m = compute_metrics([0, 0, 0, 0], [0, 0, 0, 0], LABELS3, neutral_label="neutral")
    assert m["mcc"] == 0.0
    assert m["accuracy"] == 1.0
    assert m["per_class_f1"] == {"neutral": 1.0, "joy": 0.0, "anger": 0.0}
    assert m["confusion_matrix"] == [[4, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_write_report(tmp_path):
    m = compute_metrics(GOLD3, PRED3, LABELS3, neutral_label="neutral")
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (C, D)
    after = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    history = [
        {"epoch": 1, "dev_weighted_f1": 0.5, "dev_macro_f1": 0.4},
        {"epoch": 2, "dev_weighted_f1": 0.6, "dev_macro_f1": 0.5},
    ]
    out = write_report(
        tmp_path / "report",
        {"dev": m},
        LABELS3,
        anchors_before=before,
        anchors_after=after,
        history=history,
        title="unit",
    )
    assert out == tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "anchors_cosine.png",
        "confusion_dev.png",
        "metrics.json",
        "training_curve.png",
    ]
    for png in ("anchors_cosine.png", "confusion_dev.png", "training_curve.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["labels"] == LABELS3
    assert payload["splits"]["dev"]["weighted_f1"] == pytest.approx(61 / 90, abs=1e-12)
    assert payload["history"] == history
    # Cosines rounded to 4 places: 1/sqrt(2) = 0.70710678... -> 0.7071
    assert payload["anchor_cosine"]["before"] == [[1.0, 0.0, 0.7071], [0.0, 1.0, 0.7071], [0.7071, 0.7071, 1.0]]
    assert payload["anchor_cosine"]["after"] == [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_write_report_without_anchors_or_history(tmp_path):
    m = compute_metrics(GOLD_DD, PRED_DD, DAILYDIALOG, neutral_label="neutral")
    out = write_report(tmp_path / "r", {"test": m}, DAILYDIALOG)
    assert sorted(p.name for p in out.iterdir()) == ["confusion_test.png", "metrics.json"]
    payload = json.loads((out / "metrics.json").read_text())
    assert set(payload) == {"labels", "splits"}
    assert payload["splits"]["test"]["micro_f1_no_neutral"] == pytest.approx(5 / 7, abs=1e-12)
