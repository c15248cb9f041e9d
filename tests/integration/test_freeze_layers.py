"""`fit --freeze-layers N` end to end on real MELD conversations with the real default encoder:
the published encoder keeps the frozen tensors bit for bit and trains the others, the artifact
serves through the worker's path like any window model, and a run stopped mid-epoch resumes
from its run folder (reading the frozen-layer cache back) to exactly the uninterrupted weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from erc_stream.model import Predictor, default_encoder_path, load_predictor
from tests.integration.test_resume import TINY, digest, weights
from trainer.config import TrainConfig
from trainer.frozen import CACHE_FILE
from trainer.train import StopFlag, TrainingInterrupted, fit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

FROZEN = 4  # of MiniLM's 6 layers


def frozen_name(name: str) -> bool:
    return name.startswith(("embeddings.", *(f"encoder.layer.{i}." for i in range(FROZEN))))


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("frozen")
    cfg = TrainConfig(**TINY, store=tmp / "store", run_dir=tmp / "run", version="straight", freeze_layers=FROZEN)
    result = fit(cfg, progress=False)
    assert (tmp / "run" / CACHE_FILE).is_file()
    return result.path


def test_frozen_tensors_stay_as_shipped_and_the_others_train(straight):
    source = load_file(default_encoder_path() / "model.safetensors")
    trained = load_file(straight / "encoder" / "model.safetensors")
    same = {k for k in trained if k in source and trained[k].equal(source[k])}
    frozen = {k for k in trained if frozen_name(k)}
    assert frozen and frozen <= same, sorted(frozen - same)[:3]
    top = {k for k in trained if k.startswith(("encoder.layer.4.", "encoder.layer.5."))}
    assert top and not (top & same), "the top layers must have trained"


def test_a_frozen_run_serves_through_the_window_path(straight):
    predictor = load_predictor(straight, device="cpu", dtype="fp32")
    assert isinstance(predictor, Predictor)
    assert predictor.manifest["training"]["config"]["freeze_layers"] == FROZEN


def test_a_stopped_frozen_run_resumes_to_the_uninterrupted_weights(tmp_path, straight):
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="resumed",
                      freeze_layers=FROZEN)  # fmt: skip
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=6))
    cache = tmp_path / "run" / CACHE_FILE
    written = cache.stat().st_mtime_ns
    result = fit(cfg, progress=False, resume=True)
    assert cache.stat().st_mtime_ns == written, "the resumed run must read the cache, not write it again"
    assert digest(weights(result.path)) == digest(weights(straight))
