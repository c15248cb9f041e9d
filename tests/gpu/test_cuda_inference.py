"""Inference on the GPU agrees with CPU fp32 on MELD dev: the same emotion (argmax) on >= 99.5%
of the turns, with the shipped MELD model (models/).

Two levels: the real worker (``erc_stream.worker.Worker`` on the local broker, ``device=cuda``,
``dtype=auto``) streaming every MELD dev turn, and ``Predictor`` (what the worker runs in its
model thread) in each dtype, fp32, bf16 and fp16. The reference is ``Predictor`` on the CPU in
fp32, batched like the evaluator (``trainer.evaluate.predict_examples``).

``ERC_GPU_TESTS_STORE`` names another store to take the MELD model from: a lent GPU machine
receives at most 64 MiB of work tree, less than the shipped 110M model (carry a MiniLM one,
e.g. ``git show 390000b:models/meld-main/...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from erc_stream.artifact import read_current, version_path
from erc_stream.model import Predictor
from erc_stream.worker import Worker
from tests.integration.worker_harness import OutputReader, make_topics, produce, turn_records, worker_config
from trainer.datasets import load_split
from trainer.evaluate import build_examples, predict_examples

pytestmark = pytest.mark.timeout(1800)

STORE = Path(os.environ.get("ERC_GPU_TESTS_STORE") or Path(__file__).resolve().parents[2] / "models")
MIN_AGREEMENT = 0.995


def _version_dir() -> Path:
    version = read_current(STORE)
    assert version, f"{STORE} has no CURRENT: the shipped MELD model is missing"
    return version_path(STORE, version)


def _load(device: torch.device, dtype: str) -> Predictor:
    """Loaded the way the worker loads a version: cast once, warmed up."""
    predictor = Predictor.load(_version_dir(), device=device.type, dtype=dtype)
    predictor.warm_up(8)
    return predictor


@pytest.fixture(scope="module")
def dev(dev_conversations: int | None):
    convs = load_split("meld", "dev")
    return convs if dev_conversations is None else convs[:dev_conversations]


@pytest.fixture(scope="module")
def reference(dev) -> dict[str, int]:
    """Event id -> label id predicted on the CPU in fp32."""
    cpu = _load(torch.device("cpu"), "fp32")
    examples = build_examples(cpu.builder, dev, {label: i for i, label in enumerate(cpu.labels)})
    pred = predict_examples(cpu, examples, batch_size=32)
    ids = [f"{c.id}:{i}" for c in dev for i in range(len(c.utterances))]
    assert len(ids) == len(pred)
    return dict(zip(ids, (int(x) for x in pred.label_ids), strict=True))


def _agreement(reference: dict[str, int], got: dict[str, int]) -> float:
    assert set(got) == set(reference), "not every turn was predicted"
    return float(np.mean([got[k] == reference[k] for k in reference]))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_predictor_on_the_gpu_agrees_with_cpu_fp32(device: torch.device, dev, reference, dtype: str) -> None:
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(device)} has no bf16")
    if dtype == "fp16" and device.type != "cuda":
        pytest.skip("fp16 is a CUDA dtype here")
    predictor = _load(device, dtype)
    assert predictor.device.type == device.type
    examples = build_examples(predictor.builder, dev, {label: i for i, label in enumerate(predictor.labels)})
    pred = predict_examples(predictor, examples, batch_size=32)
    ids = [f"{c.id}:{i}" for c in dev for i in range(len(c.utterances))]
    agreement = _agreement(reference, dict(zip(ids, (int(x) for x in pred.label_ids), strict=True)))
    print(f"\n{device} {dtype}: same emotion as CPU fp32 on {agreement:.2%} of {len(ids)} MELD dev turns")
    assert agreement >= MIN_AGREEMENT, f"{dtype} on {device}: {agreement:.2%} < {MIN_AGREEMENT:.1%}"


@pytest.mark.broker
def test_worker_on_the_gpu_agrees_with_cpu_fp32(device: torch.device, dev, reference, broker, topic_factory) -> None:
    """The real worker, device cuda and dtype auto (bf16 where the card has it, else fp16)."""
    topics = make_topics(topic_factory, partitions=2)
    records = turn_records(dev)
    cfg = worker_config(
        broker.bootstrap,
        topics,
        STORE,
        f"g-{uuid.uuid4().hex[:10]}",
        device=device.type,
        dtype="auto",
        max_batch_size=32,
        max_in_flight=256,
    )

    async def scenario() -> OutputReader:
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, records)
            async with Worker(cfg):
                await reader.wait_for_ids([r.event_id for r in records], timeout_s=900)
                await reader.settle(1.0)
            return reader

    reader = asyncio.run(scenario())
    assert reader.dead == []
    assert reader.duplicates() == 0
    labels = json.loads((_version_dir() / "manifest.json").read_text())["labels"]
    got = {e.value["event_id"]: labels.index(e.value["emotion"]) for e in reader.events}
    agreement = _agreement(reference, got)
    print(f"\nworker on {device} (dtype auto): same emotion as CPU fp32 on {agreement:.2%} of {len(got)} turns")
    assert agreement >= MIN_AGREEMENT, f"worker on {device}: {agreement:.2%} < {MIN_AGREEMENT:.1%}"
