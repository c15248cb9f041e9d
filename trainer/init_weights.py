"""Starting weights from published versions: one version (a warm start) or the mean of several.

``erc-train fit --init-from V [--init-from W ...]`` loads the encoder and projection head of each
version folder, averages them parameter by parameter in fp32 and puts the mean into the run's
encoder and head before anything else reads them (the stage-1 anchors, the frozen-layer cache).
With one version it is a warm start (train further, or on other data); with several fine-tuned
from the same pretrained encoder it is a weight average ("model soup", Wortsman et al. 2022),
served at the cost of one model. ``--epochs 0`` then skips stage 1: stage 2 adapts the anchors
to the averaged weights and the run publishes as usual.

Every version must be a window model of the run's encoder shape (same parameter names and shapes)
with the run's ``--proj-dim``; an 8-bit version is dequantized first. Labels may differ: the
anchors are not read (stage 1 builds them from the anchor texts, stage 2 adapts them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from erc_stream.artifact import load_version_files, manifest_architecture, read_manifest, sha256_file
from erc_stream.errors import ArtifactError, ConfigError
from erc_stream.model import strip_prefix

__all__ = ["init_from_versions"]

log = logging.getLogger("erc_train")


def init_from_versions(encoder: nn.Module, head: nn.Module, versions: Sequence[Path]) -> list[dict]:
    """Load the mean of the versions' encoder and head weights into ``encoder`` and ``head``.

    Returns one record per version for the manifest (its name, folder, manifest sha256 and dev
    weighted F1). Raises ConfigError when a version is no window model or does not fit the shapes.
    """
    enc_target, head_target = encoder.state_dict(), head.state_dict()
    enc_sum: dict[str, torch.Tensor] = {}
    head_sum: dict[str, torch.Tensor] = {}
    records = []
    for path in versions:
        path = Path(path)
        manifest = read_manifest(path)
        if manifest_architecture(manifest) != "window":
            raise ConfigError(
                f"--init-from {path}: a {manifest_architecture(manifest)!r} model; only window models can "
                "start a run (their encoder and head are the whole network)"
            )
        try:
            _, enc, _, head_tensors = load_version_files(path)
        except ArtifactError as exc:
            raise ConfigError(f"--init-from {path}: {exc}") from exc
        head_state = strip_prefix(head_tensors, "head.")
        _add(enc_sum, enc.state_dict(), enc_target, path, "encoder")
        _add(head_sum, head_state, head_target, path, "projection head")
        dev = manifest.get("metrics", {}).get("dev", {})
        records.append(
            {
                "version": manifest.get("version"),
                "path": str(path),
                "manifest_sha256": sha256_file(path / "manifest.json"),
                "dev_weighted_f1": dev.get("weighted_f1"),
            }
        )
        del enc
    n = len(records)
    encoder.load_state_dict({k: (v / n).to(enc_target[k].dtype) for k, v in enc_sum.items()})
    head.load_state_dict({k: (v / n).to(head_target[k].dtype) for k, v in head_sum.items()})
    names = ", ".join(str(r["version"]) for r in records)
    log.info("starting weights: %s %s", "the mean of" if n > 1 else "those of", names)
    return records


def _add(
    total: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    path: Path,
    part: str,
) -> None:
    """Add ``state`` to ``total`` in fp32 after checking it has exactly the target's names and shapes."""
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    if missing or extra:
        raise ConfigError(
            f"--init-from {path}: its {part} does not match this run's ({len(missing)} parameters missing, "
            f"{len(extra)} unexpected, e.g. {(missing or extra)[0]!r}); train with the --encoder it was trained from"
        )
    for name, want in target.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            hint = " (pass the --proj-dim it was trained with)" if part == "projection head" else ""
            raise ConfigError(
                f"--init-from {path}: {part} parameter {name} has shape {tuple(got.shape)}, this run's "
                f"{tuple(want.shape)}{hint}"
            )
        value = got.detach().float()
        total[name] = value.clone() if name not in total else total[name] + value
