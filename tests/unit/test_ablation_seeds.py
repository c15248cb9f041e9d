"""docs/runs/ablation_seeds.py: each row's mean ± sd over its seeds (seed 42 of the rows other than the
full method quoted from session 11) and queue.sh section 27's rule: beyond the seed noise only when the
gap between the means exceeds twice the noise of the two means."""

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


def _publish(store: Path, version: str, wf1: float) -> None:
    (store / version).mkdir(parents=True)
    dev = {"weighted_f1": wf1, "macro_f1": wf1 - 0.2, "per_class_f1": {"fear": 0.01, "disgust": 0.1}}
    (store / version / "manifest.json").write_text(json.dumps({"metrics": {"dev": dev}}))


def _row(out: str, name: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(f"| {name} |")).split(" | ")


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
