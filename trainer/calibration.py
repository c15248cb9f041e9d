"""Confidence that means what it says: temperature scaling of the cosine scores, fitted on dev.

The event's ``confidence`` is the largest ``softmax(scores / T)``. Training uses the loss
temperature tau for T, which makes confidences sharper or flatter than the hit rate behind
them. Here one scalar T is fitted on dev by minimising the negative log-likelihood of the gold
labels (Guo et al., 2017, "On Calibration of Modern Neural Networks"). The argmax, and so every
prediction and F1 figure, is unchanged.

T is kept within [T_MIN, T_MAX]. A dev split the model gets entirely right pushes the unbounded
fit towards T = 0 (every confidence 1), one it gets entirely wrong towards infinity (every
confidence 1/C); with cosine scores in [-1, 1], 0.01 already makes the confidence of a clear
winner 1, and at 2 no confidence exceeds e / (e + C - 1) (0.31 for 7 labels). The negative log-likelihood is convex in
1/T, so the bound nearest the unbounded optimum is the best T within the bounds. A fit that ends
at a bound is flagged (``at_bound``), with a warning to show: dev is too small or too one-sided to
calibrate on.

The expected calibration error (ECE) is reported with 15 equal-width confidence bins. Fitting
and measuring on the same dev utterances flatters the result, so the "after" figure is
cross-fitted: T is fitted on one half of the dev conversations and measured on the other, both
ways round; the shipped T is the one fitted on all of dev.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Calibration",
    "calibrate",
    "draw_confidence_report",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_diagram",
    "top_confidence",
]

N_BINS = 15
T_MIN, T_MAX = 0.01, 2.0


def fit_temperature(scores: np.ndarray, gold: Sequence[int] | np.ndarray, init: float = 0.1) -> float:
    """The T in [T_MIN, T_MAX] that minimises NLL of ``softmax(scores / T)``; scores (N, C) are cosines."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)  # (N, C)
    y = torch.as_tensor(np.asarray(gold), dtype=torch.long)  # (N,)
    log_t = torch.tensor(float(np.log(init)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(s / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if math.isnan(t):  # not seen; the bounds below would pass it through
        t = init
    return min(max(t, T_MIN), T_MAX)


def top_confidence(scores: np.ndarray, temperature: float) -> np.ndarray:
    """The confidence an event carries: the top label's softmax probability over cosine / temperature."""
    z = np.asarray(scores, dtype=np.float64) / temperature  # (N, C)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)  # (N,)


def _bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> list[tuple[float, float, int]]:
    """Per bin: (mean confidence, accuracy, count); bins are (lo, hi] over [0, 1]."""
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out.append((float(conf[m].mean()) if n else 0.0, float(correct[m].mean()) if n else 0.0, n))
    return out


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """sum over bins of |accuracy - confidence| weighted by the bin's share of utterances."""
    n = len(conf)
    return float(sum(cnt / n * abs(acc - c) for c, acc, cnt in _bins(conf, correct, n_bins) if cnt))


@dataclass(frozen=True)
class Calibration:
    temperature: float  # the fitted T, applied by the Predictor to every confidence
    training_temperature: float  # tau: what confidence used before
    ece_before: float
    ece_after: float  # cross-fitted on dev halves (see module docstring)
    ece_after_in_sample: float  # T fitted and measured on all of dev
    n: int

    @property
    def at_bound(self) -> bool:
        """The fit ended at T_MIN or T_MAX: dev did not pin the temperature down."""
        return self.temperature in (T_MIN, T_MAX)

    @property
    def warning(self) -> str | None:
        """What to tell whoever published the version when the fit ended at a bound."""
        if not self.at_bound:
            return None
        sharp = self.temperature == T_MIN
        return (
            f"the confidence temperature ended at its bound {self.temperature:g} (fitted on {self.n} dev "
            f"utterances, nearly all predicted {'right' if sharp else 'wrong'}): dev is too small or too one-sided "
            f"to calibrate on, so confidences will be {'near 1' if sharp else 'flat'}; calibrate on a larger "
            "dev split"
        )

    def to_manifest(self) -> dict:
        return {
            "method": "temperature scaling (NLL on dev)",
            "temperature": round(self.temperature, 6),
            "training_temperature": self.training_temperature,
            "ece_bins": N_BINS,
            "ece_before": round(self.ece_before, 4),
            "ece_after": round(self.ece_after, 4),
            "ece_after_in_sample": round(self.ece_after_in_sample, 4),
            "fitted_on": "dev",
            "utterances": self.n,
            "at_bound": self.at_bound,
        }


def calibrate(scores: np.ndarray, gold: Sequence[int], groups: Sequence[str], tau: float) -> Calibration:
    """Fit T on dev; ECE before (tau), after (cross-fitted by conversation halves) and in sample.

    Args:
        scores: (N, C) cosine scores of the dev utterances.
        gold: (N,) gold label ids.
        groups: (N,) conversation id of each utterance; the halves never split a conversation.
        tau: the training temperature, which confidence used so far.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(gold)
    correct = (scores.argmax(axis=1) == y).astype(np.float64)
    convs = sorted(set(groups))
    half = {c: i % 2 for i, c in enumerate(convs)}
    fold = np.array([half[g] for g in groups])
    cross_conf = np.zeros(len(y))
    for k in (0, 1):
        train, test = fold != k, fold == k
        if train.any() and test.any():
            t_k = fit_temperature(scores[train], y[train], init=tau)
            cross_conf[test] = top_confidence(scores[test], t_k)
        else:  # a dev split of one conversation: nothing to cross-fit with
            cross_conf[test] = top_confidence(scores[test], tau)
    t_all = fit_temperature(scores, y, init=tau)
    return Calibration(
        temperature=t_all,
        training_temperature=tau,
        ece_before=expected_calibration_error(top_confidence(scores, tau), correct),
        ece_after=expected_calibration_error(cross_conf, correct),
        ece_after_in_sample=expected_calibration_error(top_confidence(scores, t_all), correct),
        n=len(y),
    )


def reliability_diagram(path: Path, scores: np.ndarray, gold: Sequence[int], cal: Calibration) -> None:
    """Accuracy against confidence per bin, before (tau) and after (fitted T), with the ECEs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.asarray(scores, dtype=np.float64)
    correct = (scores.argmax(axis=1) == np.asarray(gold)).astype(np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    runs = [
        (
            axes[0],
            cal.training_temperature,
            f"before: T = tau = {cal.training_temperature:g}, ECE {cal.ece_before:.3f}",
        ),
        (axes[1], cal.temperature, f"after: T = {cal.temperature:.3f}, ECE {cal.ece_after:.3f} (cross-fitted)"),
    ]
    width = 1.0 / N_BINS
    for ax, t, title in runs:
        stats = _bins(top_confidence(scores, t), correct, N_BINS)
        lefts = np.arange(N_BINS) * width
        acc = [a if n else 0.0 for _, a, n in stats]
        ax.bar(lefts, acc, width=width, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
        gap = [(c - a) if n else 0.0 for c, a, n in stats]
        ax.bar(lefts, gap, bottom=acc, width=width, align="edge", color="#dd8452", alpha=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"reliability on dev ({cal.n} utterances, {N_BINS} bins)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_confidence_report(
    report: Path,
    scores: np.ndarray,
    gold: Sequence[int],
    label_ids: np.ndarray,
    cal: Calibration,
    labels: Sequence[str],
    title: str,
    *,
    alerts: bool = True,
) -> list[str]:
    """The report's plots that depend on the served confidence, drawn into ``report``:
    ``reliability.png`` and (with ``alerts``) ``alerts_dev.png``, the latter with the temperature as
    the manifest serves it. Returns the file names drawn."""
    from trainer.alerts import plot_alert_curves

    reliability_diagram(report / "reliability.png", scores, gold, cal)
    if not alerts:
        return ["reliability.png"]
    served = top_confidence(scores, cal.to_manifest()["temperature"])
    plot_alert_curves(report / "alerts_dev.png", gold, label_ids, served, labels, title)
    return ["reliability.png", "alerts_dev.png"]
