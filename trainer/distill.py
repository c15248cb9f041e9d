"""A published model as teacher: its predicted distributions for every training utterance.

``erc-train fit --distill-from VERSION_DIR`` adds ``w * KL(p_teacher || softmax(cos(r, a)/tau))``
to the stage-1 loss (``trainer.losses.distillation_loss``). The teacher may be either
architecture: a window model (which reads the past turns' text) can teach a turn model (which
reads only their cached vectors) what the context changes. The teacher predicts each training
utterance once, through the same inference path as the worker (``predict_conversations``), and
its calibrated confidence (``softmax(scores / T)``) is the target. The result is cached in the
run folder, keyed by the teacher's manifest and the utterance count, so a resumed run reads it
back instead of predicting again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from erc_stream.errors import ConfigError
from trainer.datasets import Conversation

__all__ = ["TEACHER_CACHE", "teacher_probabilities"]

log = logging.getLogger(__name__)
TEACHER_CACHE = "teacher_probs.pt"


def teacher_probabilities(
    teacher_dir: Path,
    conversations: Sequence[Conversation],
    labels: Sequence[str],
    *,
    device: torch.device,
    batch_size: int,
    cache_dir: Path,
    write_cache: bool = True,
) -> torch.Tensor:
    """(N, C) float32 teacher probabilities of every utterance of ``conversations``, in order.

    Raises:
        ConfigError: the teacher predicts other labels than the student's dataset uses.
    """
    from erc_stream.model import load_predictor
    from trainer.evaluate import predict_conversations

    manifest_bytes = (Path(teacher_dir) / "manifest.json").read_bytes()
    n = sum(len(c.utterances) for c in conversations)
    key = {"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "utterances": n, "labels": list(labels)}
    cache = Path(cache_dir) / TEACHER_CACHE
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log.info("teacher distributions read back from %s", cache)
            return saved["probs"]
    predictor = load_predictor(Path(teacher_dir), device=device.type, dtype="fp32" if device.type == "cpu" else "auto")
    if list(predictor.labels) != list(labels):
        raise ConfigError(
            f"teacher {teacher_dir} predicts {list(predictor.labels)} but this run trains {list(labels)}; "
            "distill from a model of the same dataset"
        )
    log.info("teacher %s predicts %d training utterances", predictor.manifest.get("version"), n)
    res = predict_conversations(predictor, conversations, batch_size=batch_size, progress=True)
    probs = torch.from_numpy(res.predictions.confidence).float()  # (N, C)
    probs = probs / probs.sum(dim=1, keepdim=True)  # rows sum to 1 in float32 too
    if write_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"key": key, "probs": probs}, tmp)
        tmp.replace(cache)
    return probs
