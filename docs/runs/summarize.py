"""Print the markdown tables of docs/results.md from the manifests the recorded runs published.

Usage: .venv/bin/python docs/runs/summarize.py [STORE]
           the main model and the ablation tables (STORE defaults to var/runs/store)
       .venv/bin/python docs/runs/summarize.py --compare STORE VERSION [VERSION ...]
           one row per version: settings that differ, dev weighted/macro F1, per-class F1,
           the dev F1 of every epoch, stage 2 and calibration
       .venv/bin/python docs/runs/summarize.py --seeds STORE VERSION [VERSION ...]
           the same setting over several seeds: each seed's dev figures, then mean +- sd
       .venv/bin/python docs/runs/summarize.py --ablation STORE [PREFIX]
           the EACL ablation of docs/runs/queue.sh (PREFIX abl1: section 7, abl: session 1's)
       .venv/bin/python docs/runs/summarize.py --levers STORE
           the levers of docs/runs/gpu_levers.py (versions lev-<lever>-s<seed>): mean ± sd per
           lever over its seeds, the difference to "full" and Welch's p for it
       .venv/bin/python docs/runs/summarize.py --plot OUT.png VERSION_DIR [VERSION_DIR ...]
           per-class dev F1 of published versions (folders, from any store) side by side, as a
           bar chart: which emotions a candidate finds that the shipped model misses
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from trainer.config import DEFAULTS

# (version suffix, row name, which dev figure: "after" = published, "before" = stage-1 anchors)
ABLATION = [
    ("full", "EACL, full method (descriptions-file anchors, SupCon + angle + CE, stage 2)", "after"),
    ("full-s43", "the full method again, seed 43 (seed noise)", "after"),
    ("full-bf16", "the full method again, seed 42, trained in bf16 (session 19)", "after"),
    ("no-angle", "without the angle loss (λ2 = 0)", "after"),
    ("full", "without stage 2 (stage-1 anchors of the full run)", "before"),
    ("no-ce", "without cross-entropy (λ1 = 1)", "after"),
    ("plain-anchors", "plain label-word anchors instead of descriptions", "after"),
    ("triplet", "with the triplet loss (weight 1.0, batch-hard)", "after"),
    ("balanced", "with the class-balanced sampler", "after"),
    ("ce-only", "CE-only baseline (λ1 = 0, no stage 2)", "after"),
    # levers at the same budget (queue section 10)
    ("sqrtw", "lever: class-weighted CE (sqrt of inverse frequency)", "after"),
    ("k8", "lever: 8 past turns instead of 5", "after"),
    ("tau005", "lever: τ = 0.05 instead of 0.1", "after"),
    # levers at the same budget (queue section 11)
    ("anon", "lever: speakers as speaker 1, 2, ... instead of names", "after"),
    ("eacl-lr", "lever: EACL's learning rates and batch (1e-5, head 1e-3, 32)", "after"),
    ("l2-03", "lever: λ2 = 0.3 instead of 0.1", "after"),
    ("s2-short", "lever: stage 2 for 5 epochs at 1e-3 instead of 20 at 1e-2", "after"),
]
RARE = ("fear", "disgust")  # MELD's rarest classes: shown beside every ablation row

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


def _precision(m: dict) -> str:
    """The precision a run trained in (``dtype=auto`` resolves per machine: bf16 on CPUs with native
    bf16, else fp32), as the manifest recorded it; "?" for a manifest without it. A run resumed
    in another precision shows each stretch."""
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    stretches = m["training"].get("precisions") or [{"dtype": m["training"].get("dtype")}]
    names = [short.get(p["dtype"], "?") for p in stretches]
    if len(names) > 1:  # resumed in another precision: each stretch with the step it began at
        return " then ".join(f"{n} from step {p['from_step']}" for n, p in zip(names, stretches, strict=True))
    return names[0]


def _load(store: Path, version: str) -> dict | None:
    p = store / version / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _load_all(store: Path, versions: list[str]) -> list[tuple[str, dict]]:
    rows = [(v, _load(store, v)) for v in versions]
    missing = [v for v, m in rows if m is None]
    if missing:
        sys.exit(f"not published in {store}: {', '.join(missing)}")
    return [(v, m) for v, m in rows if m is not None]


def _main_model(m: dict) -> None:
    d, t = m["metrics"]["dev"], m["training"]
    s2 = t["stage2"]
    print("### Main model (meld-main)\n")
    print(
        f"- dev weighted F1 **{d['weighted_f1']:.4f}**, macro F1 {d['macro_f1']:.4f}, "
        f"accuracy {d['accuracy']:.4f}, MCC {d['mcc']:.4f}"
    )
    print(
        f"- best stage-1 epoch {t['best_epoch']} of {len(t['history'])}; stage 2 ({s2.get('epochs', 0)} epochs): "
        f"dev weighted F1 {s2.get('dev_weighted_f1_before')} -> {s2.get('dev_weighted_f1_after')} "
        f"(best stage-2 epoch {s2.get('best_epoch')}; 0 = stage-1 anchors kept)"
    )
    print(
        f"- wall time {t['wall_s']:.0f} s on {t['device']} ({t['dtype']}), "
        f"{t['train_utterances']} train / {t['dev_utterances']} dev utterances\n"
    )
    print("| class | dev F1 | support |\n|---|---|---|")
    for label, f1 in d["per_class_f1"].items():
        print(f"| {label} | {f1:.4f} | {d['support'][label]} |")
    print("\n| epoch | train utt/s | CPU steal | dev weighted F1 | dev macro F1 |\n|---|---|---|---|---|")
    for h in t["history"]:
        steal = h.get("cpu_steal")  # absent before session 27, None without /proc/stat
        steal_txt = "" if steal is None else f"{steal:.1%}"
        f1 = f"{h['dev_weighted_f1']:.4f} | {h['dev_macro_f1']:.4f}"
        print(f"| {h['epoch']} | {h['utt_per_s']} | {steal_txt} | {f1} |")
    print()


def ablation(store: Path, prefix: str) -> None:
    """One row per ablation run published as PREFIX-SUFFIX; rows not yet run say so."""
    print("### Ablation (MELD dev, equal budget per row)\n")
    rare = " | ".join(RARE)
    print(f"| row | dev weighted F1 | dev macro F1 | {rare} | trained in | wall s |\n|---|---|---|---|---|---|---|")
    for suffix, name, which in ABLATION:
        m = _load(store, f"{prefix}-{suffix}")
        if m is None:
            print(f"| {name} | not run | | | | | |")
            continue
        t, d = m["training"], m["metrics"]["dev"]
        if which == "before":  # the stage-1 anchors: the manifest keeps only their weighted F1
            wf1 = t["stage2"].get("dev_weighted_f1_before")
            shown = f"{wf1:.4f}" if wf1 is not None else "n/a"
            print(f"| {name} | {shown} | (not recorded) | | | {_precision(m)} | {t['wall_s']:.0f} |")
            continue
        per_class = " | ".join(f"{d['per_class_f1'].get(label, float('nan')):.3f}" for label in RARE)
        print(
            f"| {name} | {d['weighted_f1']:.4f} | {d['macro_f1']:.4f} | {per_class} | {_precision(m)} "
            f"| {t['wall_s']:.0f} |"
        )


def compare(store: Path, versions: list[str]) -> None:
    rows = _load_all(store, versions)
    labels = rows[0][1]["labels"]
    print("| version | " + " | ".join(_SHOWN_SETTINGS) + " | dev wF1 | dev macro F1 | " + " | ".join(labels) + " |")
    print("|---" * (3 + len(_SHOWN_SETTINGS) + len(labels)) + "|")
    for v, m in rows:
        cfg, d = m["training"]["config"], m["metrics"]["dev"]
        settings = " | ".join(str(cfg.get(k, "window" if k == "architecture" else "")) for k in _SHOWN_SETTINGS)
        per_class = " | ".join(f"{d['per_class_f1'][label]:.3f}" for label in labels)
        print(f"| {v} | {settings} | {d['weighted_f1']:.4f} | {d['macro_f1']:.4f} | {per_class} |")
    print(
        "\n| version | dev wF1 per epoch (stage 1) | best epoch | stage 2 before -> after "
        "| calibration T, ECE before -> after (cross-fitted) |"
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


def mean_sd(values: list[float]) -> str:
    """``mean ± sd`` with the sample standard deviation; one value has no sd."""
    if len(values) == 1:
        return f"{values[0]:.4f} (one seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def seeds(store: Path, versions: list[str]) -> None:
    """The runs of one setting that differ only in seed: each run's dev figures, then mean ± sd."""
    rows = _load_all(store, versions)
    ignored = {"seed", "version", "store", "run_dir", "data_dir", "checkpoint_every_steps", "make_current", "channel"}
    # A setting added after a run was published is absent from its manifest: it ran with the default.
    configs = [{k: v for k, v in {**DEFAULTS, **m["training"]["config"]}.items() if k not in ignored} for _, m in rows]
    differ = sorted(k for k in set().union(*configs) if len({json.dumps(c.get(k), default=str) for c in configs}) > 1)
    if differ:
        sys.exit(f"these runs differ in more than the seed: {', '.join(differ)}")
    labels = rows[0][1]["labels"]
    print("| version | seed | trained in | dev wF1 | dev macro F1 | " + " | ".join(labels) + " |")
    print("|---" * (5 + len(labels)) + "|")
    for v, m in rows:
        d = m["metrics"]["dev"]
        per_class = " | ".join(f"{d['per_class_f1'][label]:.3f}" for label in labels)
        seed = m["training"]["config"].get("seed")
        print(f"| {v} | {seed} | {_precision(m)} | {d['weighted_f1']:.4f} | {d['macro_f1']:.4f} | {per_class} |")
    dev = [m["metrics"]["dev"] for _, m in rows]
    per_class = " | ".join(mean_sd([d["per_class_f1"][label] for d in dev]) for label in labels)
    wf1 = mean_sd([d["weighted_f1"] for d in dev])
    mf1 = mean_sd([d["macro_f1"] for d in dev])
    print(f"| mean ± sd ({len(rows)} seeds) | | | {wf1} | {mf1} | {per_class} |")
    # Same settings, but dtype=auto trained them in different precisions on different machines:
    # not refused (the setting is the same), said.
    precisions = sorted({_precision(m) for _, m in rows})
    if len(precisions) > 1:
        print(f"\nNote: these runs trained in different precisions ({', '.join(precisions)}).")


def lever_groups(store: Path) -> dict[str, list[dict]]:
    """Published lever runs by lever name: versions ``lev-<lever>-s<seed>``, seeds in order."""
    import re

    pattern = re.compile(r"^lev-(?P<lever>.+)-s(?P<seed>\d+)$")
    found: dict[str, list[tuple[int, dict]]] = {}
    for folder in sorted(p for p in Path(store).iterdir() if (p / "manifest.json").is_file()):
        match = pattern.match(folder.name)
        if match:
            m = json.loads((folder / "manifest.json").read_text())
            found.setdefault(match["lever"], []).append((int(match["seed"]), m))
    return {lever: [m for _, m in sorted(runs, key=lambda r: r[0])] for lever, runs in found.items()}


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances); None with fewer than 2 values a side
    or when neither side varies (no test possible)."""
    if len(a) < 2 or len(b) < 2 or (statistics.stdev(a) == 0 and statistics.stdev(b) == 0):
        return None
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def levers(store: Path) -> None:
    """One row per lever: dev weighted and macro F1 and the rare classes, mean ± sd over seeds,
    with the difference of the means to ``full`` in points and Welch's p for it."""
    groups = lever_groups(store)
    if "full" not in groups:
        sys.exit(f"{store} has no lev-full-s<seed> run to compare the levers with")
    labels = groups["full"][0]["labels"]
    rare = [c for c in RARE if c in labels]

    def values(runs: list[dict], key: str) -> list[float]:
        return [m["metrics"]["dev"]["per_class_f1"][key] if key in rare else m["metrics"]["dev"][key] for m in runs]

    cols = ["weighted_f1", "macro_f1", *rare]
    print("| lever | seeds | dev wF1 | Δ wF1 (points), p | dev macro F1 | Δ macro, p | " + " | ".join(rare) + " |")
    print("|---" * (6 + len(rare)) + "|")
    base = {c: values(groups["full"], c) for c in cols}
    for lever in ["full", *sorted(k for k in groups if k != "full")]:
        runs = groups[lever]
        cells = []
        for c in cols:
            v = values(runs, c)
            cells.append(mean_sd(v))
            if c in ("weighted_f1", "macro_f1"):
                if lever == "full":
                    cells.append("")
                else:
                    p = welch_p(v, base[c])
                    delta = 100 * (statistics.mean(v) - statistics.mean(base[c]))
                    cells.append(f"{delta:+.1f}" + (f", p {p:.2f}" if p is not None else ""))
        print(f"| {lever} | {len(runs)} | " + " | ".join(cells) + " |")


def plot_classes(out: Path, version_dirs: list[Path]) -> None:
    """Grouped bars of per-class dev F1, one group per label, one bar per version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for folder in version_dirs:
        p = folder / "manifest.json"
        if not p.is_file():
            sys.exit(f"{folder} is not a published version folder (no manifest.json)")
        rows.append(json.loads(p.read_text()))
    labels = rows[0]["labels"]
    if any(m["labels"] != labels for m in rows):
        sys.exit("these versions do not share one label set (different datasets?)")
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 4))
    for i, m in enumerate(rows):
        d = m["metrics"]["dev"]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(labels))]
        name = f"{m['version']} ({m['encoder'].get('name') or m['encoder']['id']}): wF1 {d['weighted_f1']:.4f}"
        bars = ax.bar(xs, [d["per_class_f1"][label] for label in labels], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("dev F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"{rows[0]['dataset']} dev: F1 per emotion")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main(argv: list[str]) -> None:
    if len(argv) > 2 and argv[0] == "--compare":
        compare(Path(argv[1]), argv[2:])
    elif len(argv) > 2 and argv[0] == "--seeds":
        seeds(Path(argv[1]), argv[2:])
    elif len(argv) > 2 and argv[0] == "--plot":
        plot_classes(Path(argv[1]), [Path(a) for a in argv[2:]])
    elif len(argv) == 2 and argv[0] == "--levers":
        levers(Path(argv[1]))
    elif len(argv) in (2, 3) and argv[0] == "--ablation":
        ablation(Path(argv[1]), argv[2] if len(argv) == 3 else "abl1")
    elif len(argv) <= 1 and not (argv and argv[0].startswith("-")):
        store = Path(argv[0] if argv else "var/runs/store")
        main_m = _load(store, "meld-main")
        if main_m:
            _main_model(main_m)
        ablation(store, "abl")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
