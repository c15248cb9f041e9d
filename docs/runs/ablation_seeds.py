"""The ablation's rows over seeds 42-44 (docs/runs/queue.sh section 27), read by the rule written there
before the runs: a row differs from the full method beyond seed noise when the gap between the means
exceeds twice sqrt(sd_row^2 / n_row + sd_full^2 / n_full).

Seeds 43 and 44 come from the manifests in STORE (versions abl1-<row>-s43, -s44; the full row's
abl1-full-bf16-s43, -s44). Seed 42 of the full row is section 26's run (abl1-full-bf16-trainattn, in
STORE, the same code as the new seeds); seed 42 of the other rows ran in session 11 and its store did
not survive the machine change, so those figures are quoted from docs/results.md ("Session 11", the
ablation's table: one value per row and column as published there).

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
}
# seed 42 of session 11 (docs/results.md, "The EACL ablation on all of MELD's training set: every row"):
# weighted F1, macro F1, fear F1, disgust F1; bf16, PyTorch's masks and fused attention
SESSION_11 = {
    "no-angle": (0.5717, 0.3881, 0.000, 0.133),
    "no-ce": (0.5743, 0.4001, 0.083, 0.138),
    "plain-anchors": (0.5731, 0.3889, 0.000, 0.069),
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


def main(store: Path) -> None:
    runs: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for row, (_, seed42, later) in ROWS.items():
        first = _figures(store, seed42) if seed42 else SESSION_11[row]
        found = [("42" + ("" if seed42 else " (session 11)"), first)] if first else []
        found += [(v.rsplit("-s", 1)[1], f) for v in later if (f := _figures(store, v)) is not None]
        runs[row] = found
    print("| row | seeds | " + " | ".join(f"dev {c}" for c in COLUMNS) + " | gap to full (points) | 2 x noise |")
    print("|---" * (4 + len(COLUMNS)) + "|")
    full_w = [f[0] for _, f in runs["full"]]
    for row, found in runs.items():
        cells = []
        for i in range(len(COLUMNS)):
            mean, sd = _mean_sd([f[i] for _, f in found])
            cells.append(f"{mean:.4f} ± {sd:.4f}" if not math.isnan(sd) else f"{mean:.4f}")
        verdict = ["", ""]
        w = [f[0] for _, f in found]
        if row != "full" and len(w) > 1 and len(full_w) > 1:
            gap = statistics.mean(w) - statistics.mean(full_w)
            noise = 2 * math.sqrt(statistics.variance(w) / len(w) + statistics.variance(full_w) / len(full_w))
            beyond = "beyond the noise" if abs(gap) > noise else "within the noise"
            verdict = [f"{100 * gap:+.2f} ({beyond})", f"{100 * noise:.2f}"]
        seeds = ", ".join(s for s, _ in found)
        print(f"| {ROWS[row][0]} | {seeds} | " + " | ".join(cells) + " | " + " | ".join(verdict) + " |")
    print("\nEach seed's dev weighted F1: " + "; ".join(
        f"{row} " + ", ".join(f"{s}: {f[0]:.4f}" for s, f in found) for row, found in runs.items()
    ))  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
