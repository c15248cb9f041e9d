"""Evaluation: prompts for every utterance, predictions through the shared Predictor
(or TurnPredictor: each turn encoded once, then one context pass per turn),
metrics (weighted/macro/per-class F1, accuracy, MCC, confusion matrix; DailyDialog's
micro/macro F1 without neutral), and the report files (metrics.json, confusion-matrix
PNG, anchor cosine-similarity heatmaps before/after training as in EACL's Figure 7).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from erc_stream.model import Predictions, Predictor, TurnPredictor
from erc_stream.prompt import Prompt, PromptBuilder
from trainer.datasets import Conversation
from trainer.turn import TurnData, predict_turn_data

__all__ = [
    "ConversationPredictions",
    "build_examples",
    "compute_metrics",
    "predict_conversations",
    "predict_examples",
    "write_report",
]


def build_examples(
    builder: PromptBuilder, conversations: Sequence[Conversation], label_id: dict[str, int]
) -> list[tuple[Prompt, int]]:
    """One (prompt, label id) per utterance, in conversation order: the same windows the worker sees."""
    out: list[tuple[Prompt, int]] = []
    for conv in conversations:
        enc = builder.encode_turns([u.speaker for u in conv.utterances], [u.text for u in conv.utterances])
        for i, u in enumerate(conv.utterances):
            out.append((builder.build(enc[:i], enc[i]), label_id[u.label]))
    return out


def predict_examples(
    predictor: Predictor,
    examples: Sequence[tuple[Prompt, int]] | Sequence[Prompt],
    *,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "predict",
) -> Predictions:
    """Predictions for many prompts, batched by length, returned in input order."""
    prompts = [e[0] if isinstance(e, tuple) else e for e in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    n, c = len(prompts), len(predictor.labels)
    scores = np.zeros((n, c), dtype=np.float32)
    conf = np.zeros((n, c), dtype=np.float32)
    seconds = 0.0
    chunks = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    for ch in tqdm(chunks, desc=desc, unit="batch", disable=not progress, leave=False, dynamic_ncols=True):
        p = predictor.predict([prompts[i] for i in ch])
        scores[ch] = p.scores
        conf[ch] = p.confidence
        seconds += p.seconds
    return Predictions(scores=scores, confidence=conf, label_ids=scores.argmax(axis=1), seconds=seconds)


@dataclass(frozen=True)
class ConversationPredictions:
    """Predictions keyed by (conversation id, position), for comparing with streamed events."""

    keys: list[tuple[str, int]]
    gold: list[int]
    predictions: Predictions


def predict_conversations(
    predictor: Predictor | TurnPredictor,
    conversations: Sequence[Conversation],
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> ConversationPredictions:
    """Every utterance's prediction, for either architecture."""
    if isinstance(predictor, TurnPredictor):
        return _predict_turn_conversations(predictor, conversations, batch_size=batch_size, progress=progress)
    label_id = {label: i for i, label in enumerate(predictor.labels)}
    examples = build_examples(predictor.builder, conversations, label_id)
    keys = [(c.id, i) for c in conversations for i in range(len(c.utterances))]
    preds = predict_examples(predictor, examples, batch_size=batch_size, progress=progress, desc="evaluate")
    return ConversationPredictions(keys=keys, gold=[y for _, y in examples], predictions=preds)


def _predict_turn_conversations(
    predictor: TurnPredictor, conversations: Sequence[Conversation], *, batch_size: int, progress: bool
) -> ConversationPredictions:
    label_id = {label: i for i, label in enumerate(predictor.labels)}
    data = TurnData.build(predictor.builder, conversations, label_id)
    preds = predict_turn_data(predictor, data, batch_size)
    keys = [(conv.id, i) for conv in conversations for i in range(len(conv.utterances))]
    return ConversationPredictions(keys=keys, gold=data.labels, predictions=preds)


def compute_metrics(
    gold: Sequence[int], pred: Sequence[int], labels: Sequence[str], neutral_label: str | None = None
) -> dict:
    """All the papers' metrics for one split. Values are plain floats, ready for JSON."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef

    ids = list(range(len(labels)))
    per_class = f1_score(gold, pred, labels=ids, average=None, zero_division=0)
    out = {
        "weighted_f1": float(f1_score(gold, pred, labels=ids, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(gold, pred, labels=ids, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)),
        "mcc": float(matthews_corrcoef(gold, pred)) if len(set(gold)) > 1 or len(set(pred)) > 1 else 0.0,
        "per_class_f1": {labels[i]: float(per_class[i]) for i in ids},
        "support": {labels[i]: int(sum(1 for g in gold if g == i)) for i in ids},
        "confusion_matrix": confusion_matrix(gold, pred, labels=ids).tolist(),
        "labels": list(labels),
        "n": len(gold),
    }
    if neutral_label is not None and neutral_label in labels:
        rest = [i for i in ids if labels[i] != neutral_label]
        out["micro_f1_no_neutral"] = float(f1_score(gold, pred, labels=rest, average="micro", zero_division=0))
        out["macro_f1_no_neutral"] = float(f1_score(gold, pred, labels=rest, average="macro", zero_division=0))
    return out


def _cosine_matrix(anchors: torch.Tensor) -> np.ndarray:
    a = torch.nn.functional.normalize(anchors.float(), dim=-1)
    return (a @ a.T).numpy()  # (C, C)


def write_report(
    out_dir: Path,
    metrics_by_split: dict[str, dict],
    labels: Sequence[str],
    *,
    anchors_before: torch.Tensor | None = None,
    anchors_after: torch.Tensor | None = None,
    history: list[dict] | None = None,
    title: str = "",
) -> Path:
    """metrics.json, confusion_<split>.png, anchors_cosine.png (before/after) and training curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"labels": list(labels), "splits": metrics_by_split}
    if history:
        payload["history"] = history
    if anchors_before is not None and anchors_after is not None:
        # float64 before rounding: a rounded float32 prints as 0.707099974155426 in JSON.
        payload["anchor_cosine"] = {
            "before": _cosine_matrix(anchors_before).astype(np.float64).round(4).tolist(),
            "after": _cosine_matrix(anchors_after).astype(np.float64).round(4).tolist(),
        }
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")

    for split, m in metrics_by_split.items():
        cm = np.asarray(m["confusion_matrix"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_title(f"{title} {split}: weighted F1 {m['weighted_f1']:.3f} (rows normalised)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(out_dir / f"confusion_{split}.png", dpi=110)
        plt.close(fig)

    if anchors_before is not None and anchors_after is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
        for ax, (name, a) in zip(
            axes, (("before training", anchors_before), ("after training", anchors_after)), strict=True
        ):
            sim = _cosine_matrix(a)
            im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            ax.set_yticks(range(len(labels)), labels)
            for i in range(len(labels)):
                for j in range(len(labels)):
                    ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6)
            off = sim[~np.eye(len(labels), dtype=bool)]
            ax.set_title(f"anchor cosine {name} (max off-diag {off.max():.2f})", fontsize=9)
        fig.colorbar(im, ax=axes, fraction=0.025)
        fig.savefig(out_dir / "anchors_cosine.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    if history:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ax.plot(
            [h["epoch"] for h in history], [h["dev_weighted_f1"] for h in history], marker="o", label="dev weighted F1"
        )
        ax.plot([h["epoch"] for h in history], [h["dev_macro_f1"] for h in history], marker="s", label="dev macro F1")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "training_curve.png", dpi=110)
        plt.close(fig)
    return out_dir
