"""`erc-train fit --architecture turn` end to end: real MELD conversations, the real default
encoder, the real CLI. The published artifact names its architecture and context model, holds
the context weights, loads as a TurnPredictor, and `erc-train evaluate` reproduces the dev
metrics recorded at publish time exactly (CPU, fp32). A turn run stopped mid-epoch and resumed
publishes the weights of the same run left alone."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from erc_stream.artifact import verify_version
from erc_stream.context import ContextModel, ContextSettings
from erc_stream.model import TurnPredictor, load_predictor
from erc_stream.prompt import TURN_TEMPLATE
from tests.train_cli import DATA_DIR, erc_train, skip_without_meld
from trainer.config import TrainConfig
from trainer.datasets import load_split
from trainer.train import StopFlag, TrainingInterrupted, fit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

skip_without_meld()
PIN = ["--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    run_dir = tmp_path_factory.mktemp("run") / "turn"
    proc = erc_train("fit", "--dataset", "meld", "--quick", "--max-train-conversations", "8",
                     "--max-dev-conversations", "4", "--context-turns", "2", "--architecture", "turn",
                     "--context-layers", "1", "--triplet-weight", "0.1", "--triplet-mining", "semi_hard",
                     "--sampler", "balanced", "--store", str(store), "--run-dir", str(run_dir),
                     "--version", "turn-quick", *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    vdir = store / "turn-quick"
    return store, vdir, verify_version(vdir)


def test_the_manifest_names_the_turn_model_and_its_settings(fitted):
    _, vdir, manifest = fitted
    assert manifest["architecture"] == "turn"
    assert manifest["prompt"]["template"] == TURN_TEMPLATE
    assert manifest["prompt"]["context_turns"] == 2
    settings = ContextSettings.from_manifest(manifest["context_model"])
    assert settings == ContextSettings(hidden_size=384, context_turns=2, layers=1)
    assert manifest["losses"]["triplet"] == {"weight": 0.1, "margin": 0.3, "mining": "semi_hard"}
    assert manifest["losses"]["sampler"] == "balanced"
    history = manifest["training"]["history"]
    assert len(history) == 1 and history[0]["loss_triplet"] >= 0
    expected = sum(len(c.utterances) for c in load_split("meld", "train", DATA_DIR)[:8])
    assert manifest["training"]["train_utterances"] == expected
    tensors = load_file(vdir / "head.safetensors")
    assert {k[len("context.") :] for k in tensors if k.startswith("context.")} == set(
        ContextModel(settings).state_dict()
    )
    # trained: the zero-initialised output projection has moved, so the context is used
    assert tensors["context.out.weight"].abs().max() > 0


def test_evaluate_reproduces_the_published_dev_metrics(fitted, tmp_path):
    store, vdir, manifest = fitted
    assert isinstance(load_predictor(vdir, device="cpu", dtype="fp32"), TurnPredictor)
    report, pred = tmp_path / "report", tmp_path / "pred.jsonl"
    proc = erc_train("evaluate", "--store", str(store), "--version", "turn-quick", "--max-conversations", "4",
                     "--out", str(report), "--predictions", str(pred), *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((report / "metrics.json").read_text())["splits"]["dev"]
    assert metrics["weighted_f1"] == manifest["metrics"]["dev"]["weighted_f1"]
    assert metrics["confusion_matrix"] is not None
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert len(rows) == metrics["n"] == sum(len(c.utterances) for c in load_split("meld", "dev", DATA_DIR)[:4])


# 4 train conversations (39 turns), batches of at most 12 turns, 2 epochs.
TINY = dict(dataset="meld", data_dir=DATA_DIR, max_train_conversations=4, max_dev_conversations=2, context_turns=1,
            max_length=128, epochs=2, batch_size=12, stage2_epochs=2, checkpoint_every_steps=2, device="cpu",
            dtype="fp32", make_current=False, architecture="turn", context_layers=1, triplet_weight=0.1,
            sampler="balanced")  # fmt: skip


def test_a_resumed_turn_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    straight = fit(TrainConfig(**TINY, store=tmp_path / "s1", run_dir=tmp_path / "r1", version="a"), progress=False)
    cfg = TrainConfig(**TINY, store=tmp_path / "s2", run_dir=tmp_path / "r2", version="b")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=3))
    resumed = fit(cfg, progress=False, resume=True)
    a, b = load_file(straight.path / "head.safetensors"), load_file(resumed.path / "head.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("context.") for k in a)
    differing = [k for k in a if not (a[k] == b[k]).all()]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}"
