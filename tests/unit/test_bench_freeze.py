"""bench_freeze runs each frozen-layer count in each dtype, mask-rows mode, dropout-mask draw and (with
threshold masks) attention in training over the same batches, reports the paired ratios and profiles by
operator on request; a bad --dtypes value stops it with a message."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.fixture(scope="module")
def bench_freeze(bench_script):
    return bench_script("bench_freeze")


def _run(module, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_freeze.py", *args])
    module.main()


def test_each_setting_runs_both_ways_on_the_same_batches(bench_freeze, monkeypatch, tmp_path):
    _run(bench_freeze, monkeypatch, "--freeze", "0,3", "--steps", "1", "--mask-rows", "both", "--dropout-masks",
         "both", "--attention", "both", "--out-dir", str(tmp_path), "--name", "f", "--profile",
         str(tmp_path / "ops.txt"))  # fmt: skip
    results = json.loads((tmp_path / "f.json").read_text())["results"]
    ways = [("threshold", "erc_train"), ("threshold", "sdpa"), ("bernoulli", "sdpa")]  # MiniLM: fused attention
    assert [(r["freeze_layers"], r["dtype"], r["mask_rows"], r["dropout_masks"], r["attention"]) for r in results] == [
        (n, "fp32", rows, *way) for n in (0, 3) for rows in (True, False) for way in ways
    ]
    assert all(r["steps"] == 1 and r["samples"] == 16 and r["samples_per_s"] > 0 for r in results)
    assert all(r["adamw"] == "fused" and len(r["optimizer_s"]) == 1 for r in results)
    # the trainer's AdamW groups: the trained encoder tensors with decay, their biases and norms without, the
    # head; freezing 3 of 6 layers takes their tensors out of the first two groups only
    every, three = results[0]["adamw_groups"], results[-1]["adamw_groups"]
    assert [wd for _, wd in every] == [0.01, 0.0, 0.01] and all(n > 0 for n, _ in every + three)
    assert three[0][0] < every[0][0] and three[1][0] < every[1][0] and three[2] == every[2]
    frozen = [r for r in results if r["freeze_layers"] == 3]
    assert all(r["cache_prompts"] == 32 and r["trainable_encoder_params"] < results[0]["trainable_encoder_params"]
               for r in frozen)  # fmt: skip
    md = (tmp_path / "f.md").read_text()
    assert "- 0 frozen, fp32, bernoulli dropout, sdpa attention: mask rows **" in md
    assert "- 3 frozen, fp32, threshold dropout, erc_train attention: mask rows **" in md
    assert "- 3 frozen, fp32, every token: threshold dropout masks (erc_train attention) **" in md
    assert "- 0 frozen, fp32, mask rows, threshold dropout masks: erc_train attention **" in md
    assert "| 3 of 6 | fp32 | every token | bernoulli | sdpa |" in md
    ops = (tmp_path / "ops.txt").read_text()  # one operator table per frozen-layer count
    assert ops.startswith("Command: ") and ops.count("self CPU time by operator") == 2
    assert "aten::random_" in ops and "aten::bernoulli_" in ops  # the threshold draws ran, and PyTorch's
    assert "profile" not in results[0]  # the tables stay out of the JSON


def test_an_unknown_dtype_is_refused(bench_freeze, monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _run(bench_freeze, monkeypatch, "--dtypes", "fp32,fp8", "--out-dir", str(tmp_path))
    assert exc.value.code == 2
    assert "--dtypes: unknown fp8; use fp32 and/or bf16" in capsys.readouterr().err
