"""Repack a published version with its encoder weights in 16 bits, and measure what that costs.

The version is republished through the same atomic, checksummed publish path with
``weights_dtype`` fp16 or bf16 (about half the bytes), then both versions are scored on the
dev split with fp32 serving. The repacked version is kept only when its dev weighted F1 is
within ``max_drop_points`` of the original's; otherwise it is removed and the caller is told.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from erc_stream.artifact import load_version_files, publish_version, version_path
from erc_stream.errors import ArtifactError
from erc_stream.model import load_predictor
from trainer.datasets import DATASETS, load_split
from trainer.evaluate import compute_metrics, predict_conversations

__all__ = ["RepackResult", "repack"]

_WRITTEN_BY_PUBLISH = ("format_version", "version", "created_at", "files")


@dataclass(frozen=True)
class RepackResult:
    path: Path
    bytes_before: int
    bytes_after: int
    weighted_f1_before: float
    weighted_f1_after: float
    agreement: float  # share of dev utterances with the same predicted emotion
    max_score_diff: float  # largest |cosine| difference over every dev utterance and emotion

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.weighted_f1_before - self.weighted_f1_after)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def repack(
    store: Path,
    version: str,
    *,
    out_store: Path,
    out_version: str,
    weights_dtype: str = "fp16",
    max_drop_points: float = 0.1,
    data_dir: Path | None = None,
    make_current: bool = False,
    max_conversations: int | None = None,
    channel: str = "",
) -> RepackResult:
    src = version_path(store, version)
    manifest, encoder, tokenizer, head = load_version_files(src)
    kept = {k: v for k, v in manifest.items() if k not in _WRITTEN_BY_PUBLISH}
    context = {k[len("context.") :]: v for k, v in head.items() if k.startswith("context.")}
    path = publish_version(
        out_store,
        version=out_version,
        encoder=encoder,
        tokenizer=tokenizer,
        head_state={k[len("head.") :]: v for k, v in head.items() if k.startswith("head.")},
        anchors=head["anchors"],
        manifest=kept,
        report_dir=src / "report",
        make_current=False,
        context_state=context or None,
        weights_dtype=weights_dtype,
    )
    dataset = manifest["dataset"]
    convs = load_split(dataset, "dev", data_dir)[:max_conversations]
    spec = DATASETS[dataset]
    runs = []
    for vdir in (src, path):
        predictor = load_predictor(vdir, device="cpu", dtype="fp32")
        res = predict_conversations(predictor, convs, batch_size=64, progress=True)
        m = compute_metrics(res.gold, res.predictions.label_ids.tolist(), predictor.labels, spec.neutral_label)
        runs.append((m["weighted_f1"], res.predictions))
    (f1_a, pa), (f1_b, pb) = runs
    result = RepackResult(
        path=path,
        bytes_before=_size(src),
        bytes_after=_size(path),
        weighted_f1_before=f1_a,
        weighted_f1_after=f1_b,
        agreement=float((pa.label_ids == pb.label_ids).mean()),
        max_score_diff=float(abs(pa.scores - pb.scores).max()),
    )
    if result.drop_points > max_drop_points:
        shutil.rmtree(path)
        raise ArtifactError(
            f"{weights_dtype} weights cost {result.drop_points:.2f} points of dev weighted F1 "
            f"({f1_a:.4f} -> {f1_b:.4f}), more than {max_drop_points}; the repacked version was removed"
        )
    if make_current:
        from erc_stream.artifact import set_current

        set_current(out_store, out_version, channel)
    return result
