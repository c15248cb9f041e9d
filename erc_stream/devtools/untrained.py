"""Versions with a real encoder and a random head and anchors, for tests and benchmarks: they do
the work of a trained version and predict nothing useful."""

from __future__ import annotations

from pathlib import Path

from erc_stream.prompt import NORMALIZATION

__all__ = ["untrained_manifest"]


def untrained_manifest(
    *,
    dataset: str,
    labels: list[str],
    template: str,
    context_turns: int,
    max_length: int,
    temperature: float,
    encoder_path: Path,
    proj_dim: int,
    seed: int,
    note: str,
    context_model: dict | None = None,
) -> dict:
    """The manifest of a version with a real encoder and a random head and anchors (tests and
    benchmarks: it does the work of a trained one and predicts nothing useful). With
    ``context_model`` (``ContextSettings.to_manifest()``) it is a ``turn`` version, else a window one.
    """
    manifest: dict = {
        "dataset": dataset,
        "labels": list(labels),
        "prompt": {
            "template": template,
            "context_turns": context_turns,
            "max_length": max_length,
            "normalization": NORMALIZATION,
        },
        "temperature": temperature,
        "encoder": {"id": encoder_path.parent.name, "source": str(encoder_path)},
        "head": {"proj_dim": proj_dim, "activation": "gelu"},
        "anchors": {
            "mode": "random",
            "seed": seed,
            "descriptions": {label: label for label in labels},
            "note": note,
        },
        "metrics": {},
    }
    if context_model is not None:
        manifest.update(architecture="turn", context_model=context_model)
    return manifest
