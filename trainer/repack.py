"""Repack a published version with its encoder weights in 16 or 8 bits, and measure what that costs.

The version is republished through the same atomic, checksummed publish path with
``weights_dtype`` fp16 or bf16 (about half the bytes) or 8 bits (erc_stream.int8),
then both versions are scored on the dev split with fp32 serving (on the CPU unless ``device``
says otherwise). The repacked version is kept only when its dev weighted F1 is within
``max_drop_points`` of the original's; otherwise it is removed and the caller is told.
A kept version's manifest then describes what it serves: ``metrics.dev`` is re-measured on the
stored weights (``erc-train evaluate`` reproduces it), the original's figures stay as
``metrics.dev_before_repack`` and ``repacked_from`` names the source. A calibrated source has its
confidence temperature refitted on the stored weights' dev scores the same way the fit did
(``trainer.calibration.calibrate``): ``calibration`` then holds the temperature the version serves
and the ECEs of its own weights, the source's stays as ``calibration_before_repack``, and the
report's reliability diagram and alert curves are redrawn from the stored weights (with their
checksums). The manifest is rewritten atomically before any pointer names the version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from erc_stream.artifact import load_version_files, publish_version, sha256_file, version_path
from erc_stream.errors import ArtifactError
from erc_stream.model import load_predictor, resolve_device, strip_prefix
from trainer.calibration import Calibration, calibrate, draw_confidence_report
from trainer.datasets import DATASETS, load_split
from trainer.evaluate import ConversationPredictions, compute_metrics, predict_conversations

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
    calibration: Calibration | None = None  # refitted on the stored weights (a calibrated source, whole dev)
    calibration_before: dict | None = None  # the source's, as its manifest had it

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
    device: str = "cpu",
) -> RepackResult:
    resolve_device(device)  # a bad or missing device stops here, before anything is published
    src = version_path(store, version)
    manifest, encoder, tokenizer, head = load_version_files(src)
    kept = {k: v for k, v in manifest.items() if k not in _WRITTEN_BY_PUBLISH}
    context = {k[len("context.") :]: v for k, v in head.items() if k.startswith("context.")}
    path = publish_version(
        out_store,
        version=out_version,
        encoder=encoder,
        tokenizer=tokenizer,
        head_state=strip_prefix(head, "head."),
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
        predictor = load_predictor(vdir, device=device, dtype="fp32")
        res = predict_conversations(predictor, convs, batch_size=64, progress=True)
        m = compute_metrics(res.gold, res.predictions.label_ids.tolist(), predictor.labels, spec.neutral_label)
        runs.append((m, res))
    (m_a, res_a), (m_b, res_b) = runs
    pa, pb = res_a.predictions, res_b.predictions
    f1_a, f1_b = m_a["weighted_f1"], m_b["weighted_f1"]
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
    if max_conversations is None:  # figures of the whole dev split: the ones the manifest reports
        cal = _record_repack(path, m_b, res_b, source=version, weights_dtype=weights_dtype, agreement=result.agreement)
        if cal is not None:
            result = replace(result, calibration=cal, calibration_before=manifest["calibration"])
    if make_current:
        from erc_stream.artifact import set_current

        set_current(out_store, out_version, channel)
    return result


def _record_repack(
    path: Path,
    dev_metrics: dict,
    dev: ConversationPredictions,
    *,
    source: str,
    weights_dtype: str,
    agreement: float,
) -> Calibration | None:
    """Rewrite the repacked version's manifest with the dev figures of its own weights (atomically);
    a calibrated version also gets its temperature refitted and its report's plots redrawn (the
    refitted calibration is returned)."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    metrics = manifest.setdefault("metrics", {})
    if "dev" in metrics:
        metrics["dev_before_repack"] = metrics["dev"]
    metrics["dev"] = dev_metrics
    manifest["repacked_from"] = {"version": source, "weights_dtype": weights_dtype, "dev_same_emotion": agreement}
    cal = _recalibrate(path, manifest, dev) if "calibration" in manifest else None
    tmp = manifest_path.with_name(".manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, manifest_path)
    return cal


def _recalibrate(path: Path, manifest: dict, dev: ConversationPredictions) -> Calibration:
    """Refit the confidence temperature on the stored weights' dev scores; redraw the report's plots
    that depend on it and update their checksums in ``manifest`` (which the caller writes)."""
    scores = dev.predictions.scores
    cal = calibrate(scores, dev.gold, [conv for conv, _ in dev.keys], float(manifest["temperature"]))
    manifest["calibration_before_repack"] = manifest["calibration"]
    manifest["calibration"] = cal.to_manifest()
    files: dict[str, str] = manifest["files"]
    with tempfile.TemporaryDirectory() as tmp:
        drawn = draw_confidence_report(
            Path(tmp),
            scores,
            dev.gold,
            dev.predictions.label_ids,
            cal,
            manifest["labels"],
            f"{manifest['dataset']} {manifest['version']} dev",
            alerts="report/alerts_dev.png" in files,  # reports from before the alert curves have none
        )
        for name in drawn:
            target = path / "report" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / name, target)
            files[f"report/{name}"] = sha256_file(target)
    return cal
