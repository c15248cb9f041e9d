"""The escalation benchmark's turn-level counts: negative-turn recall, precision and the median
confidence on the turns the model calls negative."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from erc_stream.escalations.rules import load_rules


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("bench_escalations")


def _turn(bench, gold: str, predicted: str, confidence: float, i: int = 0):
    return bench.Turn("c", i, "A", gold, predicted, confidence, {})


def test_negative_turn_recall_precision_and_median(bench):
    turns = [
        _turn(bench, "anger", "anger", 0.9),  # hit
        _turn(bench, "fear", "sadness", 0.5),  # hit: any negative emotion counts
        _turn(bench, "disgust", "neutral", 0.8),  # missed
        _turn(bench, "neutral", "anger", 0.3),  # false alarm
        _turn(bench, "joy", "joy", 0.7),
    ]
    r = bench.turn_level([turns[:2], turns[2:]])
    assert (r["negative_gold"], r["negative_predicted"], r["negative_hits"]) == (3, 3, 2)
    assert r["negative_recall"] == pytest.approx(2 / 3)
    assert r["negative_precision"] == pytest.approx(2 / 3)
    assert r["median_confidence_predicted_negative"] == pytest.approx(0.5)
    # what a rule's min_confidence keeps: 0.2 and 0.3 keep all three, 0.4 drops the 0.3 false alarm,
    # 0.5 keeps the two hits (0.9, 0.5: at least), nothing over 0.9
    steps = bench.turn_level([turns], steps=(0.2, 0.3, 0.4, 0.5, 0.95))["by_min_confidence"]
    assert [(r["min_confidence"], r["predicted"], r["hits"]) for r in steps] == [
        (0.2, 3, 2),
        (0.3, 3, 2),
        (0.4, 2, 2),
        (0.5, 2, 2),
        (0.95, 0, 0),
    ]
    assert steps[2]["precision"] == 1.0 and steps[2]["recall"] == pytest.approx(2 / 3)
    assert steps[-1]["precision"] is None and steps[-1]["recall"] == 0.0


def test_even_count_median_and_nothing_called_negative(bench):
    r = bench.turn_level([[_turn(bench, "anger", "fear", 0.2), _turn(bench, "sadness", "anger", 0.6)]])
    assert r["median_confidence_predicted_negative"] == pytest.approx(0.4)
    none = bench.turn_level([[_turn(bench, "anger", "neutral", 0.9)]])
    assert none["negative_recall"] == 0.0 and none["negative_precision"] is None
    assert none["median_confidence_predicted_negative"] is None


def test_out_name_is_checked_and_quality_only_runs_do_not_overwrite_the_full_file(bench):
    bench.check_out("bench_escalations", skip_throughput=False)
    bench.check_out("bench_escalations_mpnet", skip_throughput=True)
    with pytest.raises(SystemExit, match="without its throughput table"):
        bench.check_out("bench_escalations", skip_throughput=True)
    bench.check_out("bench_escalations_my_rules", skip_throughput=False, rules_file=Path("my.yaml"))
    with pytest.raises(SystemExit, match="the packaged rules' figures"):
        bench.check_out("bench_escalations", skip_throughput=False, rules_file=Path("my.yaml"))
    for bad in ("", "docs/x", "../x", ".hidden"):
        with pytest.raises(SystemExit, match="file name without folder"):
            bench.check_out(bad, skip_throughput=False)


IEMOCAP_LABELS = ["neutral", "frustrated", "angry", "sad", "happy", "excited"]
CONV = "iemocap-dev-Ses04F_impro02"  # tests/data/datasets/iemocap/dev.jsonl: speakers F, M; gold neutral, sad


@pytest.fixture
def iemocap_store(tmp_path, monkeypatch):
    """A store whose CURRENT.iemocap names a version of the IEMOCAP test split (only its manifest is read)."""
    monkeypatch.setenv("ERC_DATA_DIR", str(Path(__file__).resolve().parents[1] / "data" / "datasets"))
    (tmp_path / "iemo-v1").mkdir()
    manifest = {"dataset": "iemocap", "labels": IEMOCAP_LABELS, "temperature": 0.1, "calibration": {"temperature": 0.5}}
    (tmp_path / "iemo-v1" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "CURRENT.iemocap").write_text("iemo-v1\n")
    return tmp_path


def _write_predictions(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(conv: str, index: int, gold: str, emotion: str, scores: list[float]) -> dict:
    return {"conversation_id": conv, "index": index, "gold": gold, "emotion": emotion, "scores": scores}


def test_turns_come_from_the_dataset_the_version_names(bench, iemocap_store, tmp_path):
    version = bench.pick_version(iemocap_store, None, "iemocap")
    assert version == "iemo-v1"
    preds = _write_predictions(
        tmp_path / "p.jsonl",
        [  # written out of turn order: the benchmark orders by index
            _row(CONV, 1, "sad", "angry", [0.0, 0.0, 0.5, 0.0, 0.0, 0.0]),
            _row(CONV, 0, "neutral", "neutral", [0.2, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ],
    )
    convs, model = bench.load_turns(preds, iemocap_store, version)
    assert model == {"version": "iemo-v1", "dataset": "iemocap", "labels": IEMOCAP_LABELS, "temperature": 0.5}
    (turns,) = convs
    assert [(t.index, t.speaker, t.gold, t.predicted) for t in turns] == [
        (0, "F", "neutral", "neutral"),
        (1, "M", "sad", "angry"),
    ]
    # confidence = softmax(scores / calibrated T) at the predicted label: e^1 / (e^1 + 5)
    assert turns[1].confidence == pytest.approx(math.e / (math.e + 5))
    assert turns[0].scores["neutral"] == 0.2


def test_predictions_of_another_dataset_or_model_are_refused_with_the_command_to_remake_them(
    bench, iemocap_store, tmp_path
):
    six = [0.1] * 6
    cases = {
        "meld-dev-0": [_row("meld-dev-0", 0, "neutral", "neutral", six)],  # not an IEMOCAP dev conversation
        "past the end": [_row(CONV, 2, "neutral", "neutral", six)],  # the conversation has 2 turns
        "MELD labels": [_row(CONV, 0, "neutral", "anger", six)],
        "7 scores": [_row(CONV, 0, "neutral", "neutral", [0.1] * 7)],
        "not the top label": [_row(CONV, 0, "neutral", "sad", [0.1, 0.0, 0.0, 0.05, 0.0, 0.0])],
    }
    for name, rows in cases.items():
        preds = _write_predictions(tmp_path / "p.jsonl", rows)
        with pytest.raises(SystemExit, match="erc-train evaluate --store .* --version iemo-v1 --split dev") as err:
            bench.load_turns(preds, iemocap_store, "iemo-v1")
        assert "p.jsonl:1" in str(err.value), name
    with pytest.raises(SystemExit, match="holds no predictions"):
        bench.load_turns(_write_predictions(tmp_path / "p.jsonl", []), iemocap_store, "iemo-v1")


def test_a_missing_pointer_or_version_is_named(bench, iemocap_store):
    with pytest.raises(SystemExit, match=r"no CURRENT version in .*--version"):
        bench.pick_version(iemocap_store, None, "")
    with pytest.raises(SystemExit, match="no version 'iemo-v2'"):
        bench.pick_version(iemocap_store, "iemo-v2", "")
    assert bench.pick_version(iemocap_store, "iemo-v1", "") == "iemo-v1"


def _conversation(bench, confidence: float):
    """neutral, neutral, anger, anger: a shift on the 4th turn, predicted right at ``confidence``."""
    scores = dict.fromkeys(("neutral", "anger"), 0.0)
    return [
        bench.Turn("c", i, "A", e, e, confidence, scores)
        for i, e in enumerate(("neutral", "neutral", "anger", "anger"))
    ]


def test_a_rules_file_is_measured_as_given_and_each_rule_alone_keeps_its_settings(bench, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("rules:\n  shift:\n    min_confidence: 0.6\n  sustained:\n    min_negative_turns: 2\n")
    rules = load_rules(strict)
    one = bench.alone(rules, "spike")
    assert one.enabled_rules == ("spike",)
    assert one.sustained.min_negative_turns == 2 and one.shift.min_confidence == 0.6
    assert rules.enabled_rules == ("sustained", "spike", "shift")  # the given rules are not changed

    convs = [_conversation(bench, 0.5)]
    default = bench.quality(convs)
    assert default["shift"]["escalations_pred"] == default["shift"]["escalations_gold"] == 1
    assert default["shift"]["escalation_precision"] == 1.0
    measured = bench.quality(convs, rules)
    # gold turns have confidence 1 and still shift; the model's 0.5 is under the file's 0.6
    assert (measured["shift"]["escalations_gold"], measured["shift"]["escalations_pred"]) == (1, 0)
    assert measured["shift"]["escalation_recall"] == 0.0
    # sustained at 2 of 5 fires on the 4th turn for both streams (the default 3 of 5 does not)
    assert default["sustained"]["escalations_gold"] == 0
    assert (measured["sustained"]["escalations_gold"], measured["sustained"]["escalations_pred"]) == (1, 1)


def test_rules_that_make_no_label_of_the_model_negative_are_refused(bench, tmp_path):
    meld_only = tmp_path / "meld.yaml"
    meld_only.write_text("emotions:\n  negative: [anger, disgust, fear, sadness]\n")
    bench.check_labels(load_rules(meld_only), ["neutral", "anger"], "meld-v1")
    with pytest.raises(SystemExit, match=r"no emotion in the rules' emotions.negative .* is a label of iemo-v1"):
        bench.check_labels(load_rules(meld_only), IEMOCAP_LABELS, "iemo-v1")
