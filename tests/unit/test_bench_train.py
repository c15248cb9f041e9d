"""bench_train steps what a CPU fit steps: the trainer's parameter groups, its dropout masks and its
attention in training, and says so in its results."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.fixture(scope="module")
def bench_train(bench_script):
    return bench_script("bench_train")


def test_a_step_is_the_cpu_fits_own(bench_train, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--dtypes", "fp32", "--steps", "1", "--budget-s", "1",
                                      "--out-dir", str(tmp_path), "--name", "t"])  # fmt: skip
    bench_train.main()
    (r,) = json.loads((tmp_path / "t.json").read_text())["results"]
    assert r["steps"] == 1 and r["samples_per_s"] > 0
    assert (r["adamw"], r["dropout_masks"], r["attention"]) == ("fused", "threshold", "erc_train")
    # the trainer's groups (trainer.train.param_groups): decay off for the encoder's biases and norms only
    assert [wd for _, wd in r["adamw_groups"]] == [0.01, 0.0, 0.01] and all(n > 0 for n, _ in r["adamw_groups"])
    assert (
        "Dropout draws threshold masks and the encoder's attention in training is erc_train"
        in (tmp_path / "t.md").read_text()
    )
