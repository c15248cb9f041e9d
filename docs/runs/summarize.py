"""Print the markdown tables of docs/results.md from the manifests the recorded runs published.

Usage: .venv/bin/python docs/runs/summarize.py [var/runs/store]
       .venv/bin/python docs/runs/summarize.py --compare STORE VERSION [VERSION ...]
           one row per version: settings that differ, dev weighted/macro F1, per-class F1,
           the dev F1 of every epoch, stage 2 and calibration
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ABLATION = [
    ("abl-full", "EACL, full method (descriptions-file anchors, SupCon + angle + CE, stage 2)", "after"),
    ("abl-no-angle", "without the angle loss (λ2 = 0)", "after"),
    ("abl-full", "without stage 2 (stage-1 anchors of the full run)", "before"),
    ("abl-no-ce", "without cross-entropy (λ1 = 1)", "after"),
    ("abl-plain-anchors", "plain label-word anchors instead of descriptions", "after"),
    ("abl-ce-only", "CE-only baseline (λ1 = 0, no stage 2)", "after"),
]


def _load(store: Path, version: str) -> dict | None:
    p = store / version / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def main(store: Path) -> None:
    main_m = _load(store, "meld-main")
    if main_m:
        d = main_m["metrics"]["dev"]
        t = main_m["training"]
        print("### Main model (meld-main)\n")
        print(
            f"- dev weighted F1 **{d['weighted_f1']:.4f}**, macro F1 {d['macro_f1']:.4f}, accuracy {d['accuracy']:.4f}, MCC {d['mcc']:.4f}"
        )
        s2 = t["stage2"]
        print(
            f"- best stage-1 epoch {t['best_epoch']} of {len(t['history'])}; stage 2 ({s2.get('epochs', 0)} epochs): dev weighted F1 "
            f"{s2.get('dev_weighted_f1_before')} -> {s2.get('dev_weighted_f1_after')} (best stage-2 epoch {s2.get('best_epoch')}; 0 = stage-1 anchors kept)"
        )
        print(
            f"- wall time {t['wall_s']:.0f} s on {t['device']} ({t['dtype']}), {t['train_utterances']} train / {t['dev_utterances']} dev utterances\n"
        )
        print("| class | dev F1 | support |\n|---|---|---|")
        for label, f1 in d["per_class_f1"].items():
            print(f"| {label} | {f1:.4f} | {d['support'][label]} |")
        print("\n| epoch | train utt/s | dev weighted F1 | dev macro F1 |\n|---|---|---|---|")
        for h in t["history"]:
            print(f"| {h['epoch']} | {h['utt_per_s']} | {h['dev_weighted_f1']:.4f} | {h['dev_macro_f1']:.4f} |")
        print()
    print("### Ablation (MELD dev, equal budget per row)\n")
    print("| row | dev weighted F1 | dev macro F1 | wall s |\n|---|---|---|---|")
    for version, name, which in ABLATION:
        m = _load(store, version)
        if m is None:
            print(f"| {name} | not run | | |")
            continue
        t = m["training"]
        if which == "before":
            s2 = t["stage2"]
            wf1 = s2.get("dev_weighted_f1_before")
            print(
                f"| {name} | {wf1:.4f} | (not recorded) | {t['wall_s']:.0f} |"
                if wf1 is not None
                else f"| {name} | n/a | | |"
            )
            continue
        d = m["metrics"]["dev"]
        print(f"| {name} | {d['weighted_f1']:.4f} | {d['macro_f1']:.4f} | {t['wall_s']:.0f} |")


_SHOWN_SETTINGS = (
    "architecture",
    "encoder",
    "epochs",
    "freeze_layers",
    "context_turns",
    "lr",
    "batch_size",
    "class_weighting",
    "sampler",
    "distill_from",
    "seed",
)


def compare(store: Path, versions: list[str]) -> None:
    rows = [(v, _load(store, v)) for v in versions]
    missing = [v for v, m in rows if m is None]
    if missing:
        sys.exit(f"not published in {store}: {', '.join(missing)}")
    labels = rows[0][1]["labels"]
    print("| version | " + " | ".join(_SHOWN_SETTINGS) + " | dev wF1 | dev macro F1 | " + " | ".join(labels) + " |")
    print("|---" * (3 + len(_SHOWN_SETTINGS) + len(labels)) + "|")
    for v, m in rows:
        cfg, d = m["training"]["config"], m["metrics"]["dev"]
        settings = " | ".join(str(cfg.get(k, "window" if k == "architecture" else "")) for k in _SHOWN_SETTINGS)
        per_class = " | ".join(f"{d['per_class_f1'][label]:.3f}" for label in labels)
        print(f"| {v} | {settings} | {d['weighted_f1']:.4f} | {d['macro_f1']:.4f} | {per_class} |")
    print(
        "\n| version | dev wF1 per epoch (stage 1) | best epoch | stage 2 before -> after | calibration T, ECE before -> after (cross-fitted) |"
    )
    print("|---|---|---|---|---|")
    for v, m in rows:
        t = m["training"]
        epochs = ", ".join(f"{h['dev_weighted_f1']:.4f}" for h in t["history"])
        s2 = t.get("stage2", {})
        c = m.get("calibration") or {}
        cal = f"{c['temperature']:.4f}, {c['ece_before']:.4f} -> {c['ece_after']:.4f}" if c else "n/a"
        print(
            f"| {v} | {epochs} | {t['best_epoch']} | {s2.get('dev_weighted_f1_before', float('nan')):.4f} -> "
            f"{s2.get('dev_weighted_f1_after', float('nan')):.4f} | {cal} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]), sys.argv[3:])
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "var/runs/store"))
