"""The escalation benchmark's turn-level counts: negative-turn recall, precision and the median
confidence on the turns the model calls negative."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # the benchmarks import their helpers as `_common`
    try:
        yield importlib.import_module("bench_escalations")
    finally:
        sys.path.remove(str(BENCH))


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
    for bad in ("", "docs/x", "../x", ".hidden"):
        with pytest.raises(SystemExit, match="file name without folder"):
            bench.check_out(bad, skip_throughput=False)
