"""Alerting on one emotion: what a threshold on the served confidence buys, per label.

A team that pages someone on fear does it with a rule over the event stream, most simply
``emotion == "fear" and confidence >= t``. Each label's table here says, for a few thresholds,
how many turns of a split would fire that rule, what share of them really carry the label
(precision) and what share of the label's turns fire it (recall); the plot draws the same over
every t in [0, 1]. With a calibrated confidence the precision rises with t; how fast, and
what it costs in recall, differs a lot between a frequent label and a rare one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["ALERT_THRESHOLDS", "AlertRow", "alert_rows", "alert_table", "plot_alert_curves"]

# 0.0 is the plain rule "the event's emotion is E"; the rest are confidences a team might page on.
ALERT_THRESHOLDS: tuple[float, ...] = (0.0, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class AlertRow:
    """One label and threshold: the rule ``emotion == label and confidence >= threshold`` on a split."""

    threshold: float
    alerts: int  # turns that fire the rule
    correct: int  # of those, turns whose gold label is the label
    support: int  # turns whose gold label is the label
    precision: float | None  # correct / alerts; None when nothing fires
    recall: float | None  # correct / support; None when the split has no such turn


def alert_rows(
    gold: Sequence[int] | np.ndarray,
    label_ids: Sequence[int] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    label_id: int,
    thresholds: Sequence[float],
) -> list[AlertRow]:
    """The rule's counts for one label at each threshold; ``confidence`` is each event's (the predicted label's)."""
    g = np.asarray(gold)
    p = np.asarray(label_ids)
    c = np.asarray(confidence, dtype=np.float64)
    if not (g.shape == p.shape == c.shape) or g.ndim != 1:
        raise ValueError(
            f"gold, label_ids and confidence must be 1-D and equal in length, got {g.shape}, {p.shape}, {c.shape}"
        )
    is_gold = g == label_id
    support = int(is_gold.sum())
    rows = []
    for t in thresholds:
        fired = (p == label_id) & (c >= t)
        alerts = int(fired.sum())
        correct = int((fired & is_gold).sum())
        rows.append(
            AlertRow(
                threshold=float(t),
                alerts=alerts,
                correct=correct,
                support=support,
                precision=correct / alerts if alerts else None,
                recall=correct / support if support else None,
            )
        )
    return rows


def alert_table(
    gold: Sequence[int] | np.ndarray,
    label_ids: Sequence[int] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    thresholds: Sequence[float] = ALERT_THRESHOLDS,
) -> dict[str, list[dict]]:
    """Every label's rows at ``thresholds``, as plain dicts for metrics.json (ratios to 4 places)."""
    out: dict[str, list[dict]] = {}
    for i, label in enumerate(labels):
        out[label] = []
        for row in alert_rows(gold, label_ids, confidence, i, thresholds):
            d = asdict(row)
            for k in ("precision", "recall"):
                d[k] = None if d[k] is None else round(d[k], 4)
            out[label].append(d)
    return out


def plot_alert_curves(
    path: Path,
    gold: Sequence[int] | np.ndarray,
    label_ids: Sequence[int] | np.ndarray,
    confidence: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    title: str = "",
) -> Path:
    """One panel per label: precision, recall and the share of turns alerted against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [round(k / 100, 2) for k in range(101)]
    n = len(np.asarray(gold))
    cols = min(4, len(labels))
    rows_n = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.7 * rows_n), squeeze=False, sharex=True, sharey=True)
    for i, label in enumerate(labels):
        ax = axes[i // cols][i % cols]
        rows = alert_rows(gold, label_ids, confidence, i, grid)
        prec = [np.nan if r.precision is None else r.precision for r in rows]
        rec = [np.nan if r.recall is None else r.recall for r in rows]
        share = [r.alerts / n if n else np.nan for r in rows]
        ax.plot(grid, prec, label="precision", color="tab:blue")
        ax.plot(grid, rec, label="recall", color="tab:orange")
        ax.plot(grid, share, label="turns alerted", color="tab:gray", linestyle=":")
        ax.set_title(f"{label} ({rows[0].support} turns)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if i // cols == rows_n - 1:
            ax.set_xlabel("confidence threshold", fontsize=8)
    for j in range(len(labels), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: alert on emotion == E and confidence >= t".strip(": "), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
