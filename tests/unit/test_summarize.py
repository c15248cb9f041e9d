"""docs/runs/summarize.py, the script that prints docs/results.md's tables from published manifests:
seed groups as mean ± sd, refusal of groups that differ in more than the seed, the ablation table."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "runs" / "summarize.py"
_spec = importlib.util.spec_from_file_location("summarize", SCRIPT)
assert _spec is not None and _spec.loader is not None
summarize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarize)

LABELS = ["neutral", "fear", "disgust"]


def _publish(
    store: Path, version: str, *, seed: int, wf1: float, fear: float, lr: float = 2e-5, dtype: str = "float32"
) -> None:
    folder = store / version
    folder.mkdir(parents=True)
    manifest = {
        "labels": LABELS,
        "metrics": {
            "dev": {
                "weighted_f1": wf1,
                "macro_f1": wf1 - 0.1,
                "per_class_f1": {"neutral": 0.7, "fear": fear, "disgust": 0.2},
            }
        },
        "training": {
            "config": {"seed": seed, "version": version, "store": str(store), "lr": lr, "epochs": 1},
            "wall_s": 100.0,
            "dtype": dtype,
            "stage2": {"dev_weighted_f1_before": wf1 - 0.01},
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_seeds_prints_each_run_then_the_mean_and_sample_sd(tmp_path, capsys):
    for seed, wf1, fear in [(42, 0.58, 0.10), (43, 0.59, 0.20), (44, 0.60, 0.15)]:
        _publish(tmp_path, f"run-s{seed}", seed=seed, wf1=wf1, fear=fear)
    summarize.main(["--seeds", str(tmp_path), "run-s42", "run-s43", "run-s44"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("| mean ± sd (3 seeds) |")
    sd = statistics.stdev([0.58, 0.59, 0.60])
    assert f"0.5900 ± {sd:.4f}" in last  # weighted F1
    assert f"0.1500 ± {statistics.stdev([0.10, 0.20, 0.15]):.4f}" in last  # fear
    assert "| run-s43 | 43 | fp32 | 0.5900 |" in out
    assert "different precisions" not in out


def test_seeds_says_when_the_runs_trained_in_different_precisions(tmp_path, capsys):
    _publish(tmp_path, "a", seed=42, wf1=0.58, fear=0.1)
    _publish(tmp_path, "b", seed=43, wf1=0.59, fear=0.1, dtype="bfloat16")
    summarize.main(["--seeds", str(tmp_path), "a", "b"])
    out = capsys.readouterr().out
    assert "| b | 43 | bf16 | 0.5900 |" in out
    assert "Note: these runs trained in different precisions (bf16, fp32)." in out


def test_seeds_refuses_runs_that_differ_in_more_than_the_seed(tmp_path):
    _publish(tmp_path, "a", seed=42, wf1=0.58, fear=0.1)
    _publish(tmp_path, "b", seed=43, wf1=0.58, fear=0.1, lr=1e-5)
    with pytest.raises(SystemExit, match="differ in more than the seed: lr"):
        summarize.main(["--seeds", str(tmp_path), "a", "b"])


def test_a_missing_version_is_named(tmp_path):
    _publish(tmp_path, "a", seed=42, wf1=0.58, fear=0.1)
    with pytest.raises(SystemExit, match="not published in .*: nope"):
        summarize.main(["--compare", str(tmp_path), "a", "nope"])


def test_ablation_rows_show_the_rare_classes_and_say_what_has_not_run(tmp_path, capsys):
    _publish(tmp_path, "abl1-full", seed=42, wf1=0.57, fear=0.05)
    summarize.main(["--ablation", str(tmp_path)])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in capsys.readouterr().out.splitlines()}
    full = rows["EACL, full method (descriptions-file anchors, SupCon + angle + CE, stage 2)"]
    assert "| 0.5700 | 0.4700 | 0.050 | 0.200 | fp32 | 100 |" in full
    assert "| 0.5600 | (not recorded) |" in rows["without stage 2 (stage-1 anchors of the full run)"]
    assert "not run" in rows["CE-only baseline (λ1 = 0, no stage 2)"]
    assert all(line.count("|") == 8 for line in rows.values() if line.startswith("| ") and "---" not in line)


def test_a_bad_command_line_prints_the_usage():
    with pytest.raises(SystemExit, match="Usage"):
        summarize.main(["--seeds", "only-a-store"])


def test_a_setting_missing_from_an_older_manifest_counts_as_its_default(tmp_path, capsys):
    _publish(tmp_path, "old", seed=42, wf1=0.58, fear=0.1)
    _publish(tmp_path, "new", seed=43, wf1=0.60, fear=0.1)
    path = tmp_path / "new" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["training"]["config"]["freeze_layers"] = 0  # the default of a setting "old" predates
    path.write_text(json.dumps(manifest))
    summarize.main(["--seeds", str(tmp_path), "old", "new"])
    assert "mean ± sd (2 seeds)" in capsys.readouterr().out
    manifest["training"]["config"]["freeze_layers"] = 9
    path.write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="freeze_layers"):
        summarize.main(["--seeds", str(tmp_path), "old", "new"])


def test_precision_shows_each_stretch_of_a_run_resumed_in_another_one():
    one = {"training": {"dtype": "bfloat16", "precisions": [{"dtype": "bfloat16", "from_step": 0}]}}
    mixed = {"training": {"dtype": "bfloat16", "precisions": [{"dtype": "float32", "from_step": 0},
                                                              {"dtype": "bfloat16", "from_step": 958}]}}  # fmt: skip
    older = {"training": {"dtype": "float32"}}  # published before precisions were recorded
    assert summarize._precision(one) == "bf16"
    assert summarize._precision(mixed) == "fp32 from step 0 then bf16 from step 958"
    assert summarize._precision(older) == "fp32"
    assert summarize._precision({"training": {}}) == "?"


def test_plot_draws_per_class_f1_of_versions_from_any_store(tmp_path, capsys):
    for store, version, wf1 in [(tmp_path / "a", "small", 0.58), (tmp_path / "b", "big", 0.62)]:
        _publish(store, version, seed=42, wf1=wf1, fear=0.1)
        m = json.loads((store / version / "manifest.json").read_text())
        m.update(version=version, dataset="meld", encoder={"id": version, "name": f"enc-{version}"})
        (store / version / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "plots" / "classes.png"
    summarize.main(["--plot", str(out), str(tmp_path / "a" / "small"), str(tmp_path / "b" / "big")])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="is not a published version folder"):
        summarize.main(["--plot", str(out), str(tmp_path / "a")])


def test_levers_groups_by_lever_and_compares_with_full_by_welch(tmp_path, capsys):
    from scipy.stats import ttest_ind

    full = [0.59, 0.60, 0.61]
    ce = [0.55, 0.56, 0.58]
    for seed, a, b in zip((42, 43, 44), full, ce, strict=True):
        _publish(tmp_path, f"lev-full-s{seed}", seed=seed, wf1=a, fear=0.2)
        _publish(tmp_path, f"lev-ce-only-s{seed}", seed=seed, wf1=b, fear=0.0)
    _publish(tmp_path, "meld-main", seed=1, wf1=0.9, fear=0.9)  # not a lever run: left out
    groups = summarize.lever_groups(tmp_path)
    assert sorted(groups) == ["ce-only", "full"]
    assert [m["metrics"]["dev"]["weighted_f1"] for m in groups["ce-only"]] == ce
    summarize.main(["--levers", str(tmp_path)])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| ce-only |"))
    p = ttest_ind(ce, full, equal_var=False).pvalue
    assert f"| ce-only | 3 | {statistics.mean(ce):.4f} ± {statistics.stdev(ce):.4f} | -3.7, p {p:.2f} |" in row
    assert out.splitlines()[2].startswith("| full | 3 | 0.6000 ± 0.0100 |  |")
    assert summarize.welch_p([0.5], full) is None  # one seed: no test
    assert summarize.welch_p([0.5, 0.5], [0.5, 0.5]) is None  # nothing varies: no test


def test_levers_without_a_full_run_says_so(tmp_path):
    _publish(tmp_path, "lev-anon-s42", seed=42, wf1=0.6, fear=0.1)
    with pytest.raises(SystemExit, match="no lev-full-s<seed> run"):
        summarize.main(["--levers", str(tmp_path)])
