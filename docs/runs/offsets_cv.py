"""Two inference-time levers measured on dumped dev predictions, with no training (results.md "Session 28").

Input: the JSONL that ``erc-train evaluate --predictions FILE`` writes (one line per utterance: conversation
id, gold label, the cosine to every anchor) and the version's manifest (its labels and fitted temperature).

1. Decision offsets: one additive offset per class on the calibrated logits (cosine / T), neutral's held
   at 0, chosen by coordinate ascent on weighted F1. The honest figure is the out-of-fold one: dev's
   conversations split into 5 folds, offsets fitted on 4, the 5th predicted with them, the 5 held-out
   parts pooled and scored once.
2. An output ensemble: the mean of two or more versions' calibrated probabilities (each its own T), no
   fitting at all. Needs every file to cover the same utterances.

    python docs/runs/offsets_cv.py offsets DUMP.jsonl MANIFEST.json
    python docs/runs/offsets_cv.py ensemble DUMP1.jsonl MANIFEST1.json DUMP2.jsonl MANIFEST2.json [...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from erc_stream.model import confidence_temperature  # noqa: E402
from trainer.evaluate import compute_metrics  # noqa: E402

GRID = np.round(np.arange(-2.0, 2.0001, 0.05), 2)  # offsets tried for each class, in logit units
PASSES = 3
FOLDS = 5
FOLD_SEED = 0


def load(dump: Path, manifest: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray, float]:
    """(labels, conversation id per row, gold ids, logits = cosine / T, T)."""
    man = json.loads(manifest.read_text())
    labels = list(man["labels"])
    temp = confidence_temperature(man)
    rows = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (str(r["conversation_id"]), int(r["index"])))
    conv = [str(r["conversation_id"]) for r in rows]
    gold = np.array([labels.index(r["gold"]) for r in rows])
    logits = np.array([r["scores"] for r in rows], dtype=np.float64) / temp
    return labels, conv, gold, logits, temp


def wf1(gold: np.ndarray, pred: np.ndarray, labels: list[str]) -> float:
    return compute_metrics(gold.tolist(), pred.tolist(), labels)["weighted_f1"]


def fit_offsets(gold: np.ndarray, logits: np.ndarray, labels: list[str], fixed: int) -> np.ndarray:
    """Coordinate ascent on weighted F1; ties go to the offset nearest 0, so a flat class stays at 0."""
    b = np.zeros(logits.shape[1])
    for _ in range(PASSES):
        moved = False
        for c in range(logits.shape[1]):
            if c == fixed:
                continue
            best, best_score = b[c], wf1(gold, (logits + b).argmax(1), labels)
            for v in sorted(GRID, key=abs):
                trial = b.copy()
                trial[c] = v
                s = wf1(gold, (logits + trial).argmax(1), labels)
                if s > best_score + 1e-12:
                    best, best_score = v, s
            moved |= best != b[c]
            b[c] = best
        if not moved:
            break
    return b


def folds_of(conv: list[str]) -> np.ndarray:
    ids = sorted(set(conv))
    order = np.random.default_rng(FOLD_SEED).permutation(len(ids))
    fold_of_conv = {ids[j]: k % FOLDS for k, j in enumerate(order)}
    return np.array([fold_of_conv[c] for c in conv])


def line(name: str, m: dict, labels: list[str]) -> str:
    per = " | ".join(f"{m['per_class_f1'][lab]:.3f}" for lab in labels)
    return f"| {name} | {m['weighted_f1']:.4f} | {m['macro_f1']:.4f} | {per} |"


def offsets(dump: Path, manifest: Path) -> None:
    labels, conv, gold, logits, temp = load(dump, manifest)
    neutral = labels.index("neutral") if "neutral" in labels else 0
    head = "| | wF1 | macro | " + " | ".join(labels) + " |"
    print(f"{dump.name}: {len(gold)} utterances, {len(set(conv))} conversations, T = {temp}")
    print(head)
    print("|" + "---|" * (3 + len(labels)))
    plain = compute_metrics(gold.tolist(), logits.argmax(1).tolist(), labels)
    print(line("no offsets", plain, labels))
    full = fit_offsets(gold, logits, labels, neutral)
    print(
        line(
            "offsets fitted on all of dev (in sample)",
            compute_metrics(gold.tolist(), (logits + full).argmax(1).tolist(), labels),
            labels,
        )
    )
    fold = folds_of(conv)
    oof = np.empty_like(gold)
    fitted = []
    for k in range(FOLDS):
        tr, te = fold != k, fold == k
        b = fit_offsets(gold[tr], logits[tr], labels, neutral)
        fitted.append(b)
        oof[te] = (logits[te] + b).argmax(1)
    print(
        line(
            f"offsets out of fold ({FOLDS} folds by conversation, pooled)",
            compute_metrics(gold.tolist(), oof.tolist(), labels),
            labels,
        )
    )
    print()
    print("offsets fitted on all of dev: " + ", ".join(f"{lab} {v:+.2f}" for lab, v in zip(labels, full, strict=True)))
    for k, b in enumerate(fitted):
        per_fold = compute_metrics(gold[fold == k].tolist(), logits[fold == k].argmax(1).tolist(), labels)[
            "weighted_f1"
        ]
        moved = compute_metrics(gold[fold == k].tolist(), oof[fold == k].tolist(), labels)["weighted_f1"]
        print(
            f"fold {k}: {int((fold == k).sum())} utterances, wF1 {per_fold:.4f} -> {moved:.4f}; offsets "
            + ", ".join(f"{lab} {v:+.2f}" for lab, v in zip(labels, b, strict=True))
        )


def ensemble(pairs: list[tuple[Path, Path]]) -> None:
    loaded = [load(d, m) for d, m in pairs]
    labels, conv, gold, _, _ = loaded[0]
    for lab, c, g, _, _ in loaded[1:]:
        if lab != labels or c != conv or not np.array_equal(g, gold):
            raise SystemExit("the dumps do not cover the same utterances with the same labels")
    print("| | wF1 | macro | " + " | ".join(labels) + " |")
    print("|" + "---|" * (3 + len(labels)))
    probs = []
    for (d, _), (_, _, _, logits, _) in zip(pairs, loaded, strict=True):
        p = softmax(logits, axis=1)
        probs.append(p)
        print(line(d.stem, compute_metrics(gold.tolist(), p.argmax(1).tolist(), labels), labels))
    mean = np.mean(probs, axis=0)
    print(
        line(
            "mean of calibrated probabilities", compute_metrics(gold.tolist(), mean.argmax(1).tolist(), labels), labels
        )
    )


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "offsets":
        offsets(Path(argv[1]), Path(argv[2]))
    elif len(argv) >= 5 and argv[0] == "ensemble" and len(argv) % 2 == 1:
        ensemble([(Path(argv[i]), Path(argv[i + 1])) for i in range(1, len(argv), 2)])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
