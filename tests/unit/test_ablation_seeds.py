"""docs/runs/ablation_seeds.py: each row's mean ± sd over its seeds (seed 42 of the rows other than the
full method and CE-only quoted from session 11) and queue.sh section 27's rule: beyond the seed noise
only when the gap between the means exceeds twice the noise of the two means, on weighted F1 and (section
29) on fear and disgust."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "runs" / "ablation_seeds.py"
_spec = importlib.util.spec_from_file_location("ablation_seeds", SCRIPT)
assert _spec is not None and _spec.loader is not None
ablation_seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation_seeds)


def _publish(store: Path, version: str, wf1: float, fear: float = 0.01, disgust: float = 0.1) -> None:
    (store / version).mkdir(parents=True)
    dev = {"weighted_f1": wf1, "macro_f1": wf1 - 0.2, "per_class_f1": {"fear": fear, "disgust": disgust}}
    (store / version / "manifest.json").write_text(json.dumps({"metrics": {"dev": dev}}))


def _row(out: str, name: str, table: int = 0) -> list[str]:
    """The row named `name` in the output's first (0) or second (1, the rare classes) table."""
    return [line for line in out.splitlines() if line.startswith(f"| {name} |")][table].split(" | ")


def test_rows_over_seeds_and_the_noise_rule(tmp_path, capsys):
    full = {"abl1-full-bf16-trainattn": 0.57, "abl1-full-bf16-s43": 0.58, "abl1-full-bf16-s44": 0.56}
    no_ce = {"abl1-no-ce-s43": 0.60, "abl1-no-ce-s44": 0.61}  # with session 11's 0.5743: far above
    plain = {"abl1-plain-anchors-s43": 0.57}  # seed 44 not run
    for version, wf1 in {**full, **no_ce, **plain}.items():
        _publish(tmp_path, version, wf1)
    ablation_seeds.main(tmp_path)
    out = capsys.readouterr().out
    assert _row(out, "EACL, full method")[1:3] == ["42, 43, 44", "0.5700 ± 0.0100"]
    ce = _row(out, "without cross-entropy (λ1 = 1)")
    ce_w = [0.5743, 0.60, 0.61]
    assert ce[1:3] == ["42 (session 11), 43, 44", f"{statistics.mean(ce_w):.4f} ± {statistics.stdev(ce_w):.4f}"]
    noise = 2 * math.sqrt(statistics.variance(ce_w) / 3 + 0.01**2 / 3)
    assert ce[-2] == f"{100 * (statistics.mean(ce_w) - 0.57):+.2f} (beyond the noise)"
    assert ce[-1] == f"{100 * noise:.2f} |"
    plain_row = _row(out, "plain label-word anchors")
    assert plain_row[1] == "42 (session 11), 43" and plain_row[-2].endswith("(within the noise)")
    assert _row(out, "without the angle loss (λ2 = 0)")[1:3] == ["42 (session 11)", "0.5717"]  # one seed: no verdict
    # CE-only's seed 42 is not quoted but read from STORE: a row with no run says so, and the rare-class
    # table leaves it out
    assert _row(out, "CE-only baseline (λ1 = 0, no stage 2)")[1] == "not run"
    assert len([line for line in out.splitlines() if line.startswith("| CE-only")]) == 1


def test_rare_classes_by_the_same_rule_and_ce_onlys_seed_42_from_the_store(tmp_path, capsys):
    fears = {"abl1-full-bf16-trainattn": 0.00, "abl1-full-bf16-s43": 0.02, "abl1-full-bf16-s44": 0.01}
    for version, fear in fears.items():
        _publish(tmp_path, version, 0.57, fear=fear, disgust=0.2)
    # class-weighted CE: session 11's fear 0.045 and disgust 0.138 with two seeds far above the full row on fear
    _publish(tmp_path, "abl1-sqrtw-s43", 0.56, fear=0.20, disgust=0.14)
    _publish(tmp_path, "abl1-sqrtw-s44", 0.56, fear=0.22, disgust=0.13)
    # CE-only's seed 42 comes from the store (section 28's bf16 run), not from session 11
    _publish(tmp_path, "abl1-ce-only-bf16", 0.51)
    ablation_seeds.main(tmp_path)
    out = capsys.readouterr().out
    sqrtw = _row(out, "lever: class-weighted CE (sqrt of inverse frequency)", table=1)
    fear, full_fear = [0.045, 0.20, 0.22], list(fears.values())
    noise = 2 * math.sqrt(statistics.variance(fear) / 3 + statistics.variance(full_fear) / 3)
    gap = statistics.mean(fear) - statistics.mean(full_fear)
    assert sqrtw[1:3] == [f"{100 * gap:+.2f} (beyond the noise)", f"{100 * noise:.2f}"]
    disgust = [0.138, 0.14, 0.13]  # against 0.2 on every seed of the full row
    gap = statistics.mean(disgust) - 0.2
    noise = 2 * statistics.stdev(disgust) / math.sqrt(3)
    assert sqrtw[3:] == [f"{100 * gap:+.2f} (beyond the noise)", f"{100 * noise:.2f} |"]
    no_ce = _row(out, "without cross-entropy (λ1 = 1)", table=1)  # session 11's seed alone: no verdict
    assert no_ce[1:] == ["", "", "", " |"]
    ce = _row(out, "CE-only baseline (λ1 = 0, no stage 2)")
    assert ce[1:3] == ["42", "0.5100"]
    assert _row(out, "with the triplet loss (weight 1.0)")[1:3] == ["42 (session 11)", "0.5732"]
