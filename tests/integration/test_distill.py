"""`erc-train fit --distill-from`: a published model teaches a new run, end to end on real MELD
conversations with the real encoder and CLI. The teacher's targets are exactly its calibrated
predictions through the worker's inference path, cached in the run folder and read back (not
predicted again) while the teacher is unchanged; a teacher of another label set is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from erc_stream.model import load_predictor
from tests.fixtures_model import publish_test_model
from tests.train_cli import DATA_DIR, erc_train, skip_without_meld
from trainer.datasets import DATASETS, load_split
from trainer.distill import TEACHER_CACHE, teacher_probabilities
from trainer.evaluate import predict_conversations

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

skip_without_meld()
TRAIN_CONVERSATIONS = 6


def quick_turn_fit(teacher: Path, store: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return erc_train("fit", "--dataset", "meld", "--quick", "--max-train-conversations", str(TRAIN_CONVERSATIONS),
                     "--max-dev-conversations", "3", "--context-turns", "2", "--architecture", "turn",
                     "--context-layers", "1", "--stage2-epochs", "1", "--distill-from", str(teacher),
                     "--distill-weight", "0.5", "--store", str(store), "--run-dir", str(run_dir),
                     "--version", "kd-quick", "--no-make-current", "--device", "cpu", "--dtype", "fp32")  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    # An untrained window model: its predictions mean nothing, but they are real predictions.
    return publish_test_model(tmp_path_factory.mktemp("teachers"), version="window-teacher", seed=3)


def train_conversations():
    return load_split("meld", "train", DATA_DIR)[:TRAIN_CONVERSATIONS]


def test_a_turn_run_learns_from_a_window_teacher_and_caches_its_exact_predictions(teacher, tmp_path):
    proc = quick_turn_fit(teacher, tmp_path / "store", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "store" / "kd-quick" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["architecture"] == "turn"
    assert manifest["training"]["config"]["distill_from"] == str(teacher)
    assert manifest["training"]["config"]["distill_weight"] == 0.5
    # The distillation term is in the loss that was trained, with its weight (running means of each
    # part follow the same linear sum as the parts; each is rounded to 4 decimals in the history).
    for row in manifest["training"]["history"]:
        assert row["loss_kd"] > 0
        combined = 0.9 * (row["loss_sup"] + 0.1 * row["loss_angle"]) + 0.1 * row["loss_ce"] + 0.5 * row["loss_kd"]
        assert row["loss_loss"] == pytest.approx(combined, abs=1e-3)

    cached = torch.load(tmp_path / "run" / TEACHER_CACHE, weights_only=True)
    expected = predict_conversations(load_predictor(teacher, device="cpu", dtype="fp32"), train_conversations())
    conf = expected.predictions.confidence
    assert cached["probs"].shape == (sum(len(c.utterances) for c in train_conversations()), 7)
    np.testing.assert_allclose(cached["probs"].numpy(), conf / conf.sum(axis=1, keepdims=True), rtol=0, atol=1e-6)


def test_the_cache_is_read_back_for_the_same_teacher_and_utterances_and_redone_otherwise(teacher, tmp_path):
    convs, labels, cpu = train_conversations(), list(DATASETS["meld"].labels), torch.device("cpu")
    first = teacher_probabilities(teacher, convs, labels, device=cpu, batch_size=16, cache_dir=tmp_path)
    saved = torch.load(tmp_path / TEACHER_CACHE, weights_only=True)
    marked = torch.full_like(first, 1 / 7)  # not what the teacher predicts: proves the file is what comes back
    torch.save({"key": saved["key"], "probs": marked}, tmp_path / TEACHER_CACHE)
    again = teacher_probabilities(teacher, convs, labels, device=cpu, batch_size=16, cache_dir=tmp_path)
    assert torch.equal(again, marked)
    fewer = teacher_probabilities(teacher, convs[:2], labels, device=cpu, batch_size=16, cache_dir=tmp_path)
    assert torch.allclose(fewer, first[: len(fewer)], atol=1e-6)  # other utterances: predicted again
    torch.save({"key": saved["key"], "probs": marked}, tmp_path / TEACHER_CACHE)
    another = publish_test_model(tmp_path / "teachers", version="window-teacher-2", seed=4)
    other = teacher_probabilities(another, convs, labels, device=cpu, batch_size=16, cache_dir=tmp_path)
    own = predict_conversations(load_predictor(another, device="cpu", dtype="fp32"), convs).predictions.confidence
    assert torch.allclose(other, torch.from_numpy(own / own.sum(axis=1, keepdims=True)), atol=1e-6)


def test_a_teacher_of_another_label_set_is_refused_with_what_to_do(tmp_path):
    labels = list(DATASETS["emorynlp"].labels)
    other = publish_test_model(tmp_path / "teachers", version="emory-teacher", labels=labels, dataset="emorynlp")
    proc = quick_turn_fit(other, tmp_path / "store", tmp_path / "run")
    assert proc.returncode != 0
    assert "distill from a model of the same dataset" in proc.stdout + proc.stderr
    assert not (tmp_path / "store" / "kd-quick").exists()


def test_a_folder_without_a_manifest_is_refused_before_any_work(tmp_path):
    proc = quick_turn_fit(tmp_path, tmp_path / "store", tmp_path / "run")
    assert proc.returncode != 0
    assert "is not a model version folder" in proc.stdout + proc.stderr
