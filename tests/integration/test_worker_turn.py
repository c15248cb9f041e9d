"""The worker serving a turn-once model, end to end against the real local broker.

Reference for every score: ``erc-train evaluate``'s offline path for a turn model
(``trainer.evaluate.predict_conversations``: every turn encoded once, then one context pass per
turn) on the same artifact in fp32. A streamed event must equal it: in a clean run, after a
SIGKILL and restart (windows restored from the input log, their turns re-encoded), and across a
hot reload to another turn version and to a window version (cached vectors of the old version
are recomputed, never mixed with the new one).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import jsonschema
import pytest

from erc_stream.artifact import set_current, version_path
from erc_stream.devtools.broker import free_port
from erc_stream.metrics import ModelPathTotals
from erc_stream.model import Predictor, TurnPredictor, load_predictor
from erc_stream.worker import Worker
from tests.fixtures_model import publish_test_model, publish_test_turn_model
from tests.integration.worker_harness import (
    OutputReader,
    check_scores,
    http_get,
    kill_mid_stream_then_restart,
    make_topics,
    meld_dev,
    metric_value,
    offline_expected,
    produce,
    turn_records,
    worker_config,
)

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
K = 3
SCORE_TOL = 1e-4


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    publish_test_turn_model(path, version="turn-v1", context_turns=K, max_length=128, seed=0, layers=2)
    return path


@pytest.fixture(scope="module")
def turn(store: Path) -> TurnPredictor:
    p = load_predictor(version_path(store, "turn-v1"), device="cpu", dtype="fp32")
    assert isinstance(p, TurnPredictor)
    return p


@pytest.mark.timeout(300)
def test_clean_run_equals_the_offline_turn_evaluation(broker, topic_factory, store, turn) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = meld_dev(15, start=12)
    recs = turn_records(convs)
    expected = offline_expected(turn, convs)
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schemas" / "emotion_event.schema.json").read_text())
    )

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), max_batch_size=16, max_wait_ms=50)
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, recs)
            async with Worker(cfg) as w:
                await reader.wait_for_ids([r.event_id for r in recs], timeout_s=150)
                totals = ModelPathTotals.from_registry(w.metrics.registry)
                batches = w.stats["batches"]
            return reader, totals, batches

    reader, totals, batches = asyncio.run(scenario())
    assert len(reader.events) == len(recs) and reader.duplicates() == 0 and reader.dead == []
    assert batches < len(recs), "expected real batching"
    for e in reader.events:
        validator.validate(e.value)
        assert e.value["model_version"] == "turn-v1"
    check_scores(reader.events, expected, turn.labels, SCORE_TOL)
    # Each turn went through the encoder once, as its short single-turn prompt.
    b = turn.builder
    turn_tokens = sum(len(b.build_turn(b.encode_turn(u.speaker, u.text))) for c in convs for u in c.utterances)
    assert totals.real_tokens == turn_tokens
    assert totals.real_tokens <= totals.padded_tokens


@pytest.mark.timeout(400)
def test_sigkill_mid_stream_then_restart_equals_offline(broker, topic_factory, store, turn, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = [c for c in meld_dev(20, start=70) if len(c.utterances) >= 6][:10]
    phase_a = turn_records(convs, slice(0, 3))
    in_flight = turn_records(convs, slice(3, 4))
    phase_b = turn_records(convs, slice(4, None))
    expected = offline_expected(turn, convs)
    group = _group()
    settings = {"max_batch_size": 4, "max_in_flight": 16}

    run = kill_mid_stream_then_restart(
        broker.bootstrap,
        topics,
        store,
        group,
        tmp_path,
        phase_a=phase_a,
        in_flight=in_flight,
        phase_b=phase_b,
        **settings,
    )
    reader, seen_before_kill = run.reader, run.seen_before_kill
    everything = phase_a + in_flight + phase_b
    counts = reader.id_counts()
    assert [r.event_id for r in everything if counts[r.event_id] == 0] == []
    assert {eid for eid, c in counts.items() if c > 1} <= {r.event_id for r in in_flight}
    # Every event, before and after the kill, equals the offline evaluation: after the restart
    # the restored windows' turns were re-encoded before the next event of their conversation.
    check_scores(reader.events, expected, turn.labels, SCORE_TOL)
    after = [e for e in reader.events[seen_before_kill:] if e.value["event_id"] in {r.event_id for r in phase_b}]
    assert after and all(e.value["context_turns"] == K for e in after if int(e.value["turn_id"]) >= K)


@pytest.mark.timeout(400)
def test_hot_reload_recomputes_cached_vectors_never_mixing_versions(broker, topic_factory, tmp_path) -> None:
    store = tmp_path / "store"
    publish_test_turn_model(store, version="t1", context_turns=K, max_length=128, seed=0)
    publish_test_turn_model(store, version="t2", context_turns=K, max_length=128, seed=5, make_current=False)
    publish_test_model(store, version="w3", context_turns=K, max_length=128, seed=3, make_current=False)
    t1 = load_predictor(store / "t1", device="cpu", dtype="fp32")
    t2 = load_predictor(store / "t2", device="cpu", dtype="fp32")
    w3 = load_predictor(store / "w3", device="cpu", dtype="fp32")
    assert isinstance(t1, TurnPredictor) and isinstance(t2, TurnPredictor) and isinstance(w3, Predictor)
    topics = make_topics(topic_factory, partitions=2)
    convs = [c for c in meld_dev(20, start=90) if len(c.utterances) >= 7][:6]
    phases = [turn_records(convs, slice(0, 3)), turn_records(convs, slice(3, 5)), turn_records(convs, slice(5, None))]
    expected = {"t1": offline_expected(t1, convs), "t2": offline_expected(t2, convs), "w3": offline_expected(w3, convs)}
    port = free_port()

    async def reloads(result: str) -> float:
        status, text = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        return metric_value(text, "erc_model_reloads_total", result=result)

    async def switch(version: str, ok_before: float) -> None:
        set_current(store, version)
        deadline = time.monotonic() + 90
        while await reloads("ok") < ok_before + 1:
            assert time.monotonic() < deadline, f"reload to {version} not seen"
            await asyncio.sleep(0.2)

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), metrics_port=port)
        async with OutputReader(broker.bootstrap, topics) as reader, Worker(cfg):
            for phase, nxt in zip(phases, ["t2", "w3", None], strict=True):
                await produce(broker.bootstrap, topics.input, phase)
                await reader.wait_for_ids([r.event_id for r in phase], timeout_s=120)
                if nxt is not None:
                    await switch(nxt, await reloads("ok"))
        return reader

    reader = asyncio.run(scenario())
    assert reader.duplicates() == 0 and reader.dead == []
    by_phase = [{r.event_id for r in phase} for phase in phases]
    for version, ids in zip(["t1", "t2", "w3"], by_phase, strict=True):
        events = [e for e in reader.events if e.value["event_id"] in ids]
        assert {e.value["model_version"] for e in events} == {version}
        # t2's windows hold turns first seen under t1; w3's prompts hold turns first seen under t2.
        check_scores(events, expected[version], t1.labels, SCORE_TOL)
