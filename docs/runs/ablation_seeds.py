"""The ablation's rows over seeds 42-44 (docs/runs/queue.sh sections 27-30), read by the rule written
there before the runs: a row differs from the full method beyond seed noise when the gap between the
means exceeds twice sqrt(sd_row^2 / n_row + sd_full^2 / n_full). The first table applies it to weighted
F1, the second to the two rare classes (fear, disgust: section 29).

Seeds 43 and 44 come from the manifests in STORE (versions abl1-<row>-s43, -s44; the full row's
abl1-full-bf16-s43, -s44). Seed 42 of the full row is section 26's run (abl1-full-bf16-trainattn, in
STORE, the same code as the new seeds), of the CE-only row section 28's abl1-ce-only-bf16 (its session-9
seed trained in fp32); seed 42 of the other rows ran in session 11 and its store did not survive the
machine change, so those figures are quoted from docs/results.md ("Session 11", the ablation's table:
one value per row and column as published there).

Usage: .venv/bin/python docs/runs/ablation_seeds.py STORE
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

# row: (name, seed-42 version in STORE or None, versions of seeds 43 and 44)
ROWS = {
    "full": ("EACL, full method", "abl1-full-bf16-trainattn", ["abl1-full-bf16-s43", "abl1-full-bf16-s44"]),
    "no-angle": ("without the angle loss (λ2 = 0)", None, ["abl1-no-angle-s43", "abl1-no-angle-s44"]),
    "no-ce": ("without cross-entropy (λ1 = 1)", None, ["abl1-no-ce-s43", "abl1-no-ce-s44"]),
    "plain-anchors": ("plain label-word anchors", None, ["abl1-plain-anchors-s43", "abl1-plain-anchors-s44"]),
    "triplet": ("with the triplet loss (weight 1.0)", None, ["abl1-triplet-s43", "abl1-triplet-s44"]),
    "balanced": ("with the class-balanced sampler", None, ["abl1-balanced-s43", "abl1-balanced-s44"]),
    "ce-only": ("CE-only baseline (λ1 = 0, no stage 2)", "abl1-ce-only-bf16", ["abl1-ce-only-s43", "abl1-ce-only-s44"]),
    "sqrtw": ("lever: class-weighted CE (sqrt of inverse frequency)", None, ["abl1-sqrtw-s43", "abl1-sqrtw-s44"]),
    "tau005": ("lever: τ = 0.05 instead of 0.1", None, ["abl1-tau005-s43", "abl1-tau005-s44"]),
    "k8": ("lever: 8 past turns instead of 5", None, ["abl1-k8-s43", "abl1-k8-s44"]),
}
# seed 42 of session 11 (docs/results.md, "The EACL ablation on all of MELD's training set: every row"):
# weighted F1, macro F1, fear F1, disgust F1; bf16, PyTorch's masks and fused attention
SESSION_11 = {
    "no-angle": (0.5717, 0.3881, 0.000, 0.133),
    "no-ce": (0.5743, 0.4001, 0.083, 0.138),
    "plain-anchors": (0.5731, 0.3889, 0.000, 0.069),
    "triplet": (0.5732, 0.3845, 0.000, 0.077),
    "balanced": (0.5539, 0.3881, 0.000, 0.188),
    "sqrtw": (0.5752, 0.3973, 0.045, 0.138),
    "tau005": (0.5720, 0.3865, 0.000, 0.077),
    "k8": (0.5594, 0.3667, 0.000, 0.077),
}
COLUMNS = ("weighted F1", "macro F1", "fear", "disgust")


def _figures(store: Path, version: str) -> tuple[float, ...] | None:
    path = store / version / "manifest.json"
    if not path.is_file():
        return None
    dev = json.loads(path.read_text())["metrics"]["dev"]
    return dev["weighted_f1"], dev["macro_f1"], dev["per_class_f1"]["fear"], dev["per_class_f1"]["disgust"]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def _verdict(values: list[float], full: list[float]) -> list[str]:
    """[gap to the full row in points, with the rule's reading; twice the noise], or two blanks when
    either side has fewer than two seeds."""
    if len(values) < 2 or len(full) < 2:
        return ["", ""]
    gap = statistics.mean(values) - statistics.mean(full)
    noise = 2 * math.sqrt(statistics.variance(values) / len(values) + statistics.variance(full) / len(full))
    beyond = "beyond the noise" if abs(gap) > noise else "within the noise"
    return [f"{100 * gap:+.2f} ({beyond})", f"{100 * noise:.2f}"]


def main(store: Path) -> None:
    runs: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for row, (_, seed42, later) in ROWS.items():
        first = _figures(store, seed42) if seed42 else SESSION_11[row]
        found = [("42" + ("" if seed42 else " (session 11)"), first)] if first else []
        found += [(v.rsplit("-s", 1)[1], f) for v in later if (f := _figures(store, v)) is not None]
        runs[row] = found
    print("| row | seeds | " + " | ".join(f"dev {c}" for c in COLUMNS) + " | gap to full (points) | 2 x noise |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    full = runs["full"]
    for row, found in runs.items():
        if not found:
            print(f"| {ROWS[row][0]} | not run |" + " |" * (len(COLUMNS) + 2))
            continue
        cells = []
        for i in range(len(COLUMNS)):
            mean, sd = _mean_sd([f[i] for _, f in found])
            cells.append(f"{mean:.4f} ± {sd:.4f}" if not math.isnan(sd) else f"{mean:.4f}")
        verdict = _verdict([f[0] for _, f in found], [f[0] for _, f in full]) if row != "full" else ["", ""]
        seeds = ", ".join(s for s, _ in found)
        print(f"| {ROWS[row][0]} | {seeds} | " + " | ".join(cells) + " | " + " | ".join(verdict) + " |")
    print("\nThe rare classes against the full method, by the same rule (dev F1, points):\n")
    print("| row | fear: gap to full | fear: 2 x noise | disgust: gap to full | disgust: 2 x noise |")
    print("|---|---|---|---|---|")
    for row, found in runs.items():
        if row != "full" and found:
            cells = [c for i in (2, 3) for c in _verdict([f[i] for _, f in found], [f[i] for _, f in full])]
            print(f"| {ROWS[row][0]} | " + " | ".join(cells) + " |")
    print("\nEach seed's dev weighted F1: " + "; ".join(
        f"{row} " + ", ".join(f"{s}: {f[0]:.4f}" for s, f in found) for row, found in runs.items() if found
    ))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
