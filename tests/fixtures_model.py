"""Shared test helper: publish a small, untrained model version with the real encoder.

``publish_test_model`` writes a complete, verifiable version into a model store in a
couple of seconds: the packaged all-MiniLM-L6-v2 encoder and tokenizer as they are, a
projection head with seeded random weights and seeded random anchors. No training, so
its predictions mean nothing, but every byte goes through the real artifact code
(``erc_stream.artifact.publish_version``) and loads through ``Predictor.load``.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch

from erc_stream.artifact import publish_version
from erc_stream.context import ContextModel, ContextSettings
from erc_stream.devtools.untrained import untrained_manifest
from erc_stream.model import ProjectionHead, default_encoder_path
from erc_stream.prompt import DEFAULT_TEMPLATE, TURN_TEMPLATE

__all__ = [
    "MELD_LABELS",
    "TEST_PROJ_DIM",
    "TEST_TEMPERATURE",
    "load_default_encoder",
    "publish_test_model",
    "publish_test_turn_model",
]

MELD_LABELS: tuple[str, ...] = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
TEST_PROJ_DIM = 64
TEST_TEMPERATURE = 0.1


@functools.lru_cache(maxsize=1)
def load_default_encoder():
    """(tokenizer, encoder) of the packaged default encoder, loaded once per test process.

    Publishing only reads them (``save_pretrained``), so sharing one copy is safe.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, encoder


def random_head(hidden_size: int, labels_count: int, *, seed: int, proj_dim: int = TEST_PROJ_DIM):
    """(head state dict, anchors (C, D)) drawn from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ProjectionHead(hidden_size, proj_dim)
        anchors = torch.randn(labels_count, proj_dim)  # (C, D)
    return head.state_dict(), anchors


def publish_test_model(
    store: Path,
    version: str = "test-v1",
    labels: tuple[str, ...] | list[str] = MELD_LABELS,
    context_turns: int = 2,
    max_length: int = 128,
    seed: int = 0,
    *,
    dataset: str = "meld",
    template: str = DEFAULT_TEMPLATE,
    temperature: float = TEST_TEMPERATURE,
    make_current: bool = True,
    channel: str = "",
    weights_dtype: str = "fp32",
    encoder_shift: float = 0.0,
    context_layers: int | None = None,
) -> Path:
    """Publish an untrained version (real encoder, seeded random head and anchors); returns its folder.
    ``encoder_shift`` is added to every floating-point encoder weight (versions with distinct encoders).
    With ``context_layers`` it is a ``turn`` version with a random context model of that depth."""
    tokenizer, encoder = load_default_encoder()
    if encoder_shift:  # a shifted copy: the cached encoder is shared
        encoder = copy.deepcopy(encoder)
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(encoder_shift)
    labels = list(labels)
    hidden = encoder.config.hidden_size
    head_state, anchors = random_head(hidden, len(labels), seed=seed)
    settings = (
        ContextSettings(hidden_size=hidden, context_turns=context_turns, layers=context_layers)
        if context_layers is not None
        else None
    )
    manifest = untrained_manifest(
        dataset=dataset,
        labels=labels,
        template=template,
        context_turns=context_turns,
        max_length=max_length,
        temperature=temperature,
        encoder_path=default_encoder_path(),
        proj_dim=TEST_PROJ_DIM,
        seed=seed,
        note=f"untrained {'turn ' if settings else ''}test model from tests/fixtures_model.py",
        context_model=settings.to_manifest() if settings else None,
    )
    return publish_version(
        Path(store),
        version=version,
        encoder=encoder,
        tokenizer=tokenizer,
        head_state=head_state,
        anchors=anchors,
        manifest=manifest,
        make_current=make_current,
        channel=channel,
        weights_dtype=weights_dtype,
        context_state=random_context(settings, seed=seed + 1) if settings else None,
    )


def random_context(settings: ContextSettings, *, seed: int) -> dict[str, torch.Tensor]:
    """State dict of a context model with every weight random, its zero-initialised output too,
    so the context really changes h_t (an untrained one returns z_t)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ContextModel(settings)
        torch.nn.init.normal_(model.out.weight, std=0.05)
        torch.nn.init.normal_(model.speaker.weight, std=0.5)
        torch.nn.init.normal_(model.distance.weight, std=0.5)
    return model.state_dict()


def publish_test_turn_model(
    store: Path,
    version: str = "test-turn-v1",
    labels: tuple[str, ...] | list[str] = MELD_LABELS,
    context_turns: int = 2,
    max_length: int = 64,
    seed: int = 0,
    *,
    layers: int = 1,
    dataset: str = "meld",
    temperature: float = TEST_TEMPERATURE,
    make_current: bool = True,
) -> Path:
    """Publish an untrained ``turn`` version (real encoder, seeded random head, context model, anchors)."""
    return publish_test_model(
        store,
        version,
        labels,
        context_turns,
        max_length,
        seed,
        dataset=dataset,
        template=TURN_TEMPLATE,
        temperature=temperature,
        make_current=make_current,
        context_layers=layers,
    )
