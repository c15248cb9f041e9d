"""The worker end to end against the real local broker, with a real (untrained) model artifact.

Each test has its own topics and consumer group. Workers run in-process (``Worker``) where
the test needs their internals' metrics, and as ``erc-stream worker`` subprocesses where it
needs signals (SIGKILL, SIGTERM) or the CLI. Conversations are MELD dev dialogues.

Reference for every score check: ``trainer.evaluate.build_examples`` prompts scored offline
by ``Predictor.predict`` on the same artifact in fp32 — a streamed event must equal that.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import orjson
import pytest
from sklearn.metrics import f1_score

from erc_stream.artifact import set_current, version_path
from erc_stream.devtools.broker import free_port
from erc_stream.metrics import ModelPathTotals
from erc_stream.model import Predictor
from erc_stream.worker import Worker
from tests.fixtures_model import MELD_LABELS, publish_test_model
from tests.integration.worker_harness import (
    CLI,
    Expected,
    OutputReader,
    WorkerProcess,
    check_scores,
    committed_offsets,
    http_get,
    kill_mid_stream_then_restart,
    make_topics,
    meld_dev,
    metric_value,
    offline_expected,
    produce,
    produce_raw,
    turn_records,
    wait_committed,
    worker_config,
)
from trainer.evaluate import build_examples

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
CONTEXT_TURNS = 3
MAX_LENGTH = 128
VERSION = "meld-test-v1"
SCORE_TOL = 1e-4
SHORT_TEXT_CHARS = 60  # windows of texts this short are never truncated at MAX_LENGTH


def _schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / name).read_text()))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    publish_test_model(path, version=VERSION, context_turns=CONTEXT_TURNS, max_length=MAX_LENGTH, seed=0)
    return path


@pytest.fixture(scope="module")
def predictor(store: Path) -> Predictor:
    return Predictor.load(version_path(store, VERSION), device="cpu", dtype="fp32")


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def _check_against_offline(events, expected: dict[str, Expected], labels) -> int:
    """Every event equals its offline prediction (``check_scores`` at SCORE_TOL); returns the ties."""
    return check_scores(events, expected, labels, SCORE_TOL)


def _short_window(conv, i: int) -> bool:
    lo = max(0, i - CONTEXT_TURNS)
    return all(len(u.text) <= SHORT_TEXT_CHARS for u in conv.utterances[lo : i + 1])


# ---------------------------------------------------------------------- 1. clean run


@pytest.mark.timeout(240)
def test_clean_run_one_event_per_turn_in_order(broker, topic_factory, store, predictor) -> None:
    topics = make_topics(topic_factory, partitions=3)
    convs = meld_dev(12)
    recs = turn_records(convs)
    validator = _schema("emotion_event.schema.json")
    expected = offline_expected(predictor, convs)

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group())
        async with OutputReader(broker.bootstrap, topics) as reader:
            metas = await produce(broker.bootstrap, topics.input, recs)
            async with Worker(cfg):
                await reader.wait_for_ids([r.event_id for r in recs], timeout_s=150)
                await reader.settle(1.0)
            return reader, metas

    reader, metas = asyncio.run(scenario())
    assert reader.dead == []
    assert len(reader.events) == len(recs)
    assert reader.duplicates() == 0
    source_of = {r.event_id: (m.partition, m.offset) for r, m in zip(recs, metas, strict=True)}
    by_id = {r.event_id: r for r in recs}
    for e in reader.events:
        validator.validate(e.value)
        v = e.value
        rec = by_id[v["event_id"]]
        assert (v["conversation_id"], v["turn_id"]) == (rec.conversation_id, rec.turn_id)
        assert v["model_version"] == VERSION
        assert e.key == rec.conversation_id.encode()
        assert v["source"] == {
            "topic": topics.input,
            "partition": source_of[v["event_id"]][0],
            "offset": source_of[v["event_id"]][1],
        }
        assert v["emotion"] in MELD_LABELS and set(v["scores"]) == set(MELD_LABELS)
    # Per-conversation order in the output log equals input order; one output partition each.
    per_conv = reader.by_conversation()
    checked_short = 0
    for conv in convs:
        events = per_conv[conv.id]
        assert [e.value["turn_id"] for e in events] == [str(i) for i in range(len(conv.utterances))]
        assert len({e.partition for e in events}) == 1
        for i, e in enumerate(events):
            assert e.value["context_turns"] == expected[e.value["event_id"]].context_used
            if _short_window(conv, i):
                assert e.value["context_turns"] == min(i, CONTEXT_TURNS), e.value["event_id"]
                checked_short += 1
    assert checked_short >= len(recs) // 3, "too few short windows to check min(i, k)"


# ---------------------------------------------------------------------- 2. windows = offline


@pytest.mark.timeout(240)
@pytest.mark.parametrize("max_forward_prompts", [None, 1], ids=["auto", "one-prompt-per-pass"])
def test_streamed_predictions_equal_offline_evaluation(
    broker, topic_factory, store, predictor, max_forward_prompts
) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = meld_dev(15, start=12)
    recs = turn_records(convs)
    expected = offline_expected(predictor, convs)

    async def scenario():
        # Larger, padded batches than the offline run: padding must not change a score. Auto runs
        # them in parts of 8 on this CPU; one prompt per pass pads nothing.
        cfg = worker_config(
            broker.bootstrap,
            topics,
            store,
            _group(),
            max_batch_size=16,
            max_wait_ms=50,
            max_forward_prompts=max_forward_prompts,
        )
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, recs)
            async with Worker(cfg) as w:
                await reader.wait_for_ids([r.event_id for r in recs], timeout_s=150)
                totals = ModelPathTotals.from_registry(w.metrics.registry)
            return reader, totals

    reader, totals = asyncio.run(scenario())
    assert len(reader.events) == len(recs) and reader.duplicates() == 0
    assert totals.batches < len(recs), "expected real batching"
    # The model counted what the encoder saw: every prompt's tokens once, and as padded per forward pass.
    label_id = {label: i for i, label in enumerate(predictor.labels)}
    lengths = [len(prompt) for prompt, _ in build_examples(predictor.builder, convs, label_id)]
    assert totals.real_tokens == sum(lengths)
    if max_forward_prompts == 1:
        assert totals.padded_tokens == totals.real_tokens  # the setting reached the model
    else:
        assert totals.real_tokens < totals.padded_tokens < len(lengths) * max(lengths)
    labels = predictor.labels
    ties = _check_against_offline(reader.events, expected, labels)
    assert ties <= 2, f"{ties} near-ties among {len(recs)} predictions"
    got = {e.value["event_id"]: labels.index(e.value["emotion"]) for e in reader.events}
    ids = [r.event_id for r in recs]
    gold = [expected[i].gold_id for i in ids]
    f1_stream = f1_score(gold, [got[i] for i in ids], average="weighted")
    f1_offline = f1_score(gold, [expected[i].label_id for i in ids], average="weighted")
    if ties == 0:
        assert f1_stream == f1_offline
    else:
        assert f1_stream == pytest.approx(f1_offline, abs=ties / len(ids))


# ---------------------------------------------------------------------- 3. bad input -> DLQ


@pytest.mark.timeout(240)
def test_bad_inputs_go_to_the_dlq_with_their_reason(broker, topic_factory, store, predictor) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = meld_dev(3, start=30)
    conv = convs[0]
    cid = conv.id
    key = cid.encode()
    max_text_chars = 300
    expected = offline_expected(predictor, convs)

    def turn(turn_id, **fields) -> bytes:
        return orjson.dumps({"conversation_id": cid, "turn_id": turn_id, "speaker": "Ross", **fields})

    bad = [
        (key, b'\xff\xfe{"conversation_id": 1}', "not_utf8"),
        (key, b'{"conversation_id": "' + key, "not_json"),
        (key, turn(900), "schema_violation"),  # no text
        (key, turn(901, text=5), "schema_violation"),
        (key, turn(902, text="hi", mood="x"), "schema_violation"),
        (key, turn(903, text=" \t \n"), "empty_text"),
        (key, turn(904, text="a" * (max_text_chars + 1)), "text_too_long"),
        None,  # placeholder: a redelivery of turn 1 (duplicate_turn)
        (b"someone-else", turn(905, text="hello"), "key_mismatch"),
        # Parses, but needs more than MAX_LENGTH tokens (its own conversation: it stays in its
        # window). The dead letter must carry these very bytes (integer turn_id, two spaces),
        # not the parsed turn serialized again.
        (
            b"long",
            b'{"conversation_id": "long",  "turn_id": 906, "speaker": "Ross", "text": "' + b"x " * 140 + b'"}',
            "prompt_too_long",
        ),
    ]
    valid = turn_records(convs)
    first = [r for r in valid if r.conversation_id == cid][1]
    bad[7] = (first.key, first.value, "duplicate_turn")
    # The bad records go after the first two turns of `conv`, the rest of every conversation after them.
    head = [r for r in valid if r.conversation_id != cid or r.index < 2]
    tail = [r for r in valid if r.conversation_id == cid and r.index >= 2]
    assert len(tail) >= 2
    plan = [(r.key, r.value, None, r) for r in head] + [(k, v, why, None) for k, v, why in bad]
    plan += [(r.key, r.value, None, r) for r in tail]
    dlq_validator = _schema("dead_letter.schema.json")

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), max_text_chars=max_text_chars)
        async with OutputReader(broker.bootstrap, topics) as reader:
            metas = await produce_raw(broker.bootstrap, topics.input, [(k, v) for k, v, _, _ in plan])
            async with Worker(cfg) as w:
                await reader.wait_for_ids([r.event_id for r in valid], timeout_s=150, dead=len(bad))
                await reader.settle(1.0)
                reg = w.metrics.registry
                counts = {
                    why: reg.get_sample_value("erc_dead_letters_total", {"reason": why}) for why in {b[2] for b in bad}
                }
            return reader, metas, counts

    reader, metas, counts = asyncio.run(scenario())
    assert len(reader.dead) == len(bad)
    assert len(reader.events) == len(valid) and reader.duplicates() == 0
    assert counts == {
        "not_utf8": 1,
        "not_json": 1,
        "schema_violation": 3,
        "empty_text": 1,
        "text_too_long": 1,
        "duplicate_turn": 1,
        "key_mismatch": 1,
        "prompt_too_long": 1,
    }
    letters = {(d.value["source"]["partition"], d.value["source"]["offset"]): d.value for d in reader.dead}
    for (k, v, why, _), meta in zip(plan, metas, strict=True):
        if why is None:
            continue
        letter = letters[(meta.partition, meta.offset)]
        dlq_validator.validate(letter)
        assert letter["reason"] == why, (why, letter["detail"])
        assert letter["source"]["topic"] == topics.input
        assert base64.b64decode(letter["value_b64"]) == v
        assert base64.b64decode(letter["key_b64"]) == k
        assert letter["detail"]
    # No event for a bad record; the valid turns around them see only valid turns as context.
    assert not any(e.value["turn_id"] in {"900", "901", "902", "903", "904", "905", "906"} for e in reader.events)
    _check_against_offline(reader.events, expected, predictor.labels)
    after = [e for e in reader.events if e.value["conversation_id"] == cid and int(e.value["turn_id"]) >= 2]
    assert len(after) == len(tail)


# ---------------------------------------------------------------------- 4. hot reload


@pytest.mark.timeout(300)
def test_hot_reload_ok_failed_and_incompatible(broker, topic_factory, tmp_path, predictor) -> None:
    store = tmp_path / "store"
    publish_test_model(store, version="v1", context_turns=CONTEXT_TURNS, max_length=MAX_LENGTH, seed=0)
    publish_test_model(
        store, version="v2", context_turns=CONTEXT_TURNS, max_length=MAX_LENGTH, seed=1, make_current=False
    )
    v3 = publish_test_model(
        store, version="v3-corrupt", context_turns=CONTEXT_TURNS, max_length=MAX_LENGTH, seed=2, make_current=False
    )
    head = v3 / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the tensor data
    head.write_bytes(bytes(data))
    publish_test_model(
        store,
        version="v4-labels",
        labels=MELD_LABELS[:5],
        context_turns=CONTEXT_TURNS,
        max_length=MAX_LENGTH,
        seed=3,
        make_current=False,
    )

    topics = make_topics(topic_factory, partitions=2)
    convs = meld_dev(8, start=40)
    phase1 = turn_records(convs, slice(0, 3))
    phase2 = turn_records(convs, slice(3, 6))
    phase3 = turn_records(convs, slice(6, 8))
    phase4 = turn_records(convs, slice(8, None))
    assert phase3 and phase4
    expected_v1 = offline_expected(predictor, convs)  # same seed and settings as the shared store's model
    port = free_port()

    async def metrics() -> str:
        status, text = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        return text

    async def wait_metric(result: str, value: float, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = await metrics()
            if metric_value(text, "erc_model_reloads_total", result=result) >= value:
                return text
            await asyncio.sleep(0.2)
        raise AssertionError(f"erc_model_reloads_total{{result={result!r}}} never reached {value}")

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), metrics_port=port, reload_poll_s=0.3)
        async with OutputReader(broker.bootstrap, topics) as reader:
            async with Worker(cfg) as w:
                text = await metrics()
                assert metric_value(text, "erc_model_reloads_total", result="ok") == 1  # the initial load
                await produce(broker.bootstrap, topics.input, phase1)
                await reader.wait_for(lambda: len(reader.events) >= 3, timeout_s=90)
                set_current(store, "v2")  # mid-stream
                text = await wait_metric("ok", 2)
                assert metric_value(text, "erc_model_info", version="v2", dataset="meld") == 1
                assert metric_value(text, "erc_model_info", version="v1", dataset="meld") == 0
                await reader.wait_for_ids([r.event_id for r in phase1], timeout_s=90)
                await produce(broker.bootstrap, topics.input, phase2)
                await reader.wait_for_ids([r.event_id for r in phase1 + phase2], timeout_s=90)

                set_current(store, "v3-corrupt")
                await wait_metric("failed", 1)
                await produce(broker.bootstrap, topics.input, phase3)
                await reader.wait_for_ids([r.event_id for r in phase3], timeout_s=90)

                set_current(store, "v4-labels")
                await wait_metric("incompatible", 1)
                await produce(broker.bootstrap, topics.input, phase4)
                await reader.wait_for_ids([r.event_id for r in phase4], timeout_s=90)
                await asyncio.sleep(1.0)  # three more polls: a refused version is not retried
                text = await metrics()
                served = w.model_version
            await reader.settle(1.0)
            return reader, text, served

    reader, text, served = asyncio.run(scenario())
    everything = phase1 + phase2 + phase3 + phase4
    assert len(reader.events) == len(everything) and reader.duplicates() == 0  # nothing lost or repeated
    assert served == "v2"
    assert metric_value(text, "erc_model_reloads_total", result="ok") == 2
    assert metric_value(text, "erc_model_reloads_total", result="failed") == 1
    assert metric_value(text, "erc_model_reloads_total", result="incompatible") == 1
    version_of = {e.value["event_id"]: e.value["model_version"] for e in reader.events}
    assert {version_of[r.event_id] for r in phase2 + phase3 + phase4} == {"v2"}
    # Each output partition switches once, v1 -> v2, and never back.
    for p in range(topics.partitions):
        seq = [e.value["model_version"] for e in sorted(reader.events, key=lambda e: e.offset) if e.partition == p]
        assert seq == sorted(seq), f"partition {p} went back to an older model: {seq}"
    v1_events = [e for e in reader.events if e.value["model_version"] == "v1"]
    assert len(v1_events) >= 3  # served before the switch
    _check_against_offline(v1_events, expected_v1, predictor.labels)
    for e in reader.events:
        assert e.value["context_turns"] == expected_v1[e.value["event_id"]].context_used  # windows kept
        if e.value["model_version"] == "v2":  # really the other model's scores
            got = np.array([e.value["scores"][label] for label in predictor.labels])
            assert np.abs(got - expected_v1[e.value["event_id"]].scores).max() > 1e-2


@pytest.mark.timeout(300)
def test_hot_reload_to_a_longer_context_grows_live_windows(broker, topic_factory, tmp_path) -> None:
    """A reload from a k=1 model to a k=4 one: conversations that began under k=1 must reach
    four turns of context, as the offline evaluation of the new model has."""
    store = tmp_path / "store"
    publish_test_model(store, version="k1", context_turns=1, max_length=MAX_LENGTH, seed=0)
    v2 = publish_test_model(store, version="k4", context_turns=4, max_length=MAX_LENGTH, seed=1, make_current=False)
    k4 = Predictor.load(v2, device="cpu", dtype="fp32")
    topics = make_topics(topic_factory, partitions=2)
    convs = [c for c in meld_dev(40) if len(c.utterances) >= 9][:4]
    assert len(convs) == 4
    before = turn_records(convs, slice(0, 3))
    after = turn_records(convs, slice(3, None))
    expected = offline_expected(k4, convs)

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), reload_poll_s=0.3)
        async with OutputReader(broker.bootstrap, topics) as reader:
            async with Worker(cfg) as w:
                await produce(broker.bootstrap, topics.input, before)
                await reader.wait_for_ids([r.event_id for r in before], timeout_s=90)
                set_current(store, "k4")
                assert await reader.wait_for(lambda: w.model_version == "k4", timeout_s=60)
                await produce(broker.bootstrap, topics.input, after)
                await reader.wait_for_ids([r.event_id for r in after], timeout_s=90)
            return reader

    reader = asyncio.run(scenario())
    assert reader.duplicates() == 0
    version_of = {e.value["event_id"]: e.value["model_version"] for e in reader.events}
    assert {version_of[r.event_id] for r in before} == {"k1"}
    assert {version_of[r.event_id] for r in after} == {"k4"}
    # Under k=1 a window held one turn; from turn 3 on it grows by one turn per turn, so from
    # turn 6 on each window holds the four turns the offline evaluation of k4 uses.
    full = [e for e in reader.events if int(e.value["turn_id"]) >= 6]
    assert len(full) >= 4
    assert max(e.value["context_turns"] for e in full) == 4
    _check_against_offline(full, expected, k4.labels)


# ---------------------------------------------------------------------- 5. two workers


@pytest.mark.timeout(300)
def test_two_workers_split_partitions_and_lose_nothing(broker, topic_factory, store, predictor) -> None:
    topics = make_topics(topic_factory, partitions=4)
    convs = meld_dev(16, start=50)
    phase1 = turn_records(convs, slice(0, 4))
    phase2 = turn_records(convs, slice(4, None))
    expected = offline_expected(predictor, convs)
    group = _group()
    max_in_flight = 16

    def assigned(w: Worker) -> float:
        return w.metrics.registry.get_sample_value("erc_partitions_assigned") or 0.0

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, group, max_batch_size=4, max_in_flight=max_in_flight)
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, phase1)
            async with Worker(cfg.replace(client_id="w1")) as w1:
                assert await reader.wait_for(lambda: len(reader.events) >= 5, timeout_s=90)
                async with Worker(cfg.replace(client_id="w2")) as w2:  # joins mid-stream: rebalance
                    split = await reader.wait_for(
                        lambda: assigned(w1) >= 1 and assigned(w2) >= 1 and assigned(w1) + assigned(w2) == 4,
                        timeout_s=60,
                    )
                    shares = (assigned(w1), assigned(w2))
                    await reader.wait_for_ids([r.event_id for r in phase1], timeout_s=90)
                    before = (w1.stats["events"], w2.stats["events"])
                    await produce(broker.bootstrap, topics.input, phase2)
                    await reader.wait_for_ids([r.event_id for r in phase1 + phase2], timeout_s=90)
                    await reader.settle(1.5)
                    after = (w1.stats["events"], w2.stats["events"])
            return reader, split, shares, before, after

    reader, split, shares, before, after = asyncio.run(scenario())
    assert split, f"partitions not split between the two workers: {shares}"
    counts = reader.id_counts()
    everything = phase1 + phase2
    assert all(counts[r.event_id] >= 1 for r in everything)
    assert set(counts) == {r.event_id for r in everything}
    dups = reader.duplicates()
    assert dups <= max_in_flight, f"{dups} duplicate events, more than max_in_flight={max_in_flight}"
    assert after[0] > before[0] and after[1] > before[1], f"both workers should serve phase 2: {before} -> {after}"
    # Windows of moved partitions were restored: phase-2 turns see the same context as offline.
    phase2_ids = {r.event_id for r in phase2}
    _check_against_offline([e for e in reader.events if e.value["event_id"] in phase2_ids], expected, predictor.labels)
    # First occurrences keep each conversation's order.
    for cid, events in reader.by_conversation().items():
        firsts = list(dict.fromkeys(int(e.value["turn_id"]) for e in events))
        assert firsts == sorted(firsts), cid
    print(f"two workers: shares {shares}, duplicates {dups}")


# ---------------------------------------------------------------------- 6. SIGKILL


@pytest.mark.timeout(300)
def test_sigkill_mid_stream_then_restart(broker, topic_factory, store, predictor, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = [c for c in meld_dev(20, start=70) if len(c.utterances) >= 6][:12]
    phase_a = turn_records(convs, slice(0, 3))
    in_flight = turn_records(convs, slice(3, 4))  # produced just before the kill
    phase_b = turn_records(convs, slice(4, None))
    expected = offline_expected(predictor, convs)
    group = _group()
    max_in_flight = 16
    settings = {"max_batch_size": 4, "max_in_flight": max_in_flight}

    run = kill_mid_stream_then_restart(
        broker.bootstrap,
        topics,
        store,
        group,
        tmp_path,
        phase_a=phase_a,
        in_flight=in_flight,
        phase_b=phase_b,
        wait_s=150,
        **settings,
    )
    reader, seen_before_kill = run.reader, run.seen_before_kill
    everything = phase_a + in_flight + phase_b
    counts = reader.id_counts()
    missing = [r.event_id for r in everything if counts[r.event_id] == 0]
    assert missing == []
    assert set(counts) == {r.event_id for r in everything}
    dup_ids = {eid for eid, c in counts.items() if c > 1}
    # Only records past the committed offsets at the kill may repeat: the in-flight ones.
    assert dup_ids <= {r.event_id for r in in_flight}, sorted(dup_ids - {r.event_id for r in in_flight})
    assert reader.duplicates() <= min(len(in_flight), max_in_flight)
    # Windows restored: after the restart every turn sees the same context as offline (> 0 turns).
    after_ids = {r.event_id for r in in_flight + phase_b}
    after = [e for e in reader.events[seen_before_kill:] if e.value["event_id"] in after_ids]
    assert after and all(e.value["context_turns"] > 0 for e in after)
    _check_against_offline(after, expected, predictor.labels)
    print(f"sigkill: {reader.duplicates()} duplicates of {len(in_flight)} in flight")


@pytest.mark.timeout(300)
def test_idle_partitions_keep_their_committed_offsets_across_sigkills(broker, topic_factory, store, tmp_path) -> None:
    """Issue 9's report of re-emits after two SIGKILLs, pinned: once a replay is acknowledged, its
    offsets are committed on every partition, and partitions that stay idle while two workers are
    killed keep them, so nothing of that replay comes out again. (The reported re-emits were a
    reader starting at "latest" on the local broker: see test_broker.py and the README.)"""
    topics = make_topics(topic_factory, partitions=3)
    convs = meld_dev(24, start=20)
    earlier = turn_records(convs, slice(0, 3))
    group = _group()
    settings = {"max_batch_size": 4, "max_in_flight": 16}

    async def scenario():
        async with OutputReader(broker.bootstrap, topics) as reader:
            metas = await produce(broker.bootstrap, topics.input, earlier)
            ends = {p: max(m.offset for m in metas if m.partition == p) + 1 for p in range(topics.partitions)}
            busy = metas[0].partition  # the later turns go to this partition only; the others stay idle
            later = [
                r
                for r in turn_records(convs, slice(3, None))
                if r.conversation_id
                in {rec.conversation_id for rec, m in zip(earlier, metas, strict=True) if m.partition == busy}
            ]
            w = WorkerProcess(broker.bootstrap, topics, store, group, tmp_path / "w1.log", **settings)
            try:
                await w.wait_ready()
                await reader.wait_for_ids([r.event_id for r in earlier], timeout_s=120)
                await wait_committed(broker.bootstrap, group, topics.input, ends)
                await asyncio.sleep(2.0)  # idle
                w.signal(signal.SIGKILL)
                assert await w.wait_exit(10) == -signal.SIGKILL
            finally:
                w.close()
            for i in (2, 3):  # a worker that is killed mid-stream, then one that finishes
                w = WorkerProcess(broker.bootstrap, topics, store, group, tmp_path / f"w{i}.log", **settings)
                try:
                    await w.wait_ready()
                    if i == 2:
                        await produce(broker.bootstrap, topics.input, later)
                        await reader.wait_for(lambda: len(reader.events) > len(earlier), timeout_s=60)
                        w.signal(signal.SIGKILL)
                        assert await w.wait_exit(10) == -signal.SIGKILL
                        idle = await committed_offsets(broker.bootstrap, group, topics.input, topics.partitions)
                    else:
                        await reader.wait_for_ids([r.event_id for r in earlier + later], timeout_s=120)
                        await reader.settle(2.0)
                finally:
                    w.close()
            return reader, ends, busy, later, idle

    reader, ends, busy, later, idle = asyncio.run(scenario())
    assert later
    assert {p: o for p, o in idle.items() if p != busy} == {p: o for p, o in ends.items() if p != busy}
    counts = reader.id_counts()
    assert [r.event_id for r in earlier if counts[r.event_id] != 1] == []  # nothing of the earlier replay again
    assert {r.event_id for r in later} <= set(counts)


# ---------------------------------------------------------------------- 7. SIGTERM


@pytest.mark.timeout(300)
def test_sigterm_drains_commits_and_exits_zero(broker, topic_factory, store, predictor, tmp_path) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = [c for c in meld_dev(20, start=90) if len(c.utterances) >= 5][:10]
    phase_a = turn_records(convs, slice(0, 4))
    phase_b = turn_records(convs, slice(4, None))
    expected = offline_expected(predictor, convs)
    group = _group()
    shutdown_timeout_s = 20.0

    async def scenario():
        async with OutputReader(broker.bootstrap, topics) as reader:
            # Small batches and a small in-flight bound so the SIGTERM lands mid-stream.
            w1 = WorkerProcess(
                broker.bootstrap,
                topics,
                store,
                group,
                tmp_path / "w1.log",
                max_batch_size=2,
                max_in_flight=8,
                shutdown_timeout_s=shutdown_timeout_s,
            )
            try:
                await w1.wait_ready()
                await produce(broker.bootstrap, topics.input, phase_a)
                await reader.wait_for(lambda: len(reader.events) >= 1, timeout_s=120)
                t0 = time.monotonic()
                w1.signal(signal.SIGTERM)
                rc = await w1.wait_exit(shutdown_timeout_s + 5)
                exit_s = time.monotonic() - t0
                log = w1.log_tail(20000)
            finally:
                w1.close()
            await reader.settle(1.0)
            first_run = list(reader.events)
            committed = await committed_offsets(broker.bootstrap, group, topics.input, topics.partitions)
            await produce(broker.bootstrap, topics.input, phase_b)
            cfg = worker_config(broker.bootstrap, topics, store, group)
            async with Worker(cfg):
                await reader.wait_for_ids([r.event_id for r in phase_a + phase_b], timeout_s=150)
                await reader.settle(1.5)
            return reader, rc, exit_s, log, first_run, committed

    reader, rc, exit_s, log, first_run, committed = asyncio.run(scenario())
    assert rc == 0, log
    assert exit_s <= shutdown_timeout_s
    assert "worker stopped" in log
    # Every event of the first run is covered by the commit made on the way out ...
    for e in first_run:
        src = e.value["source"]
        assert committed[src["partition"]] is not None and src["offset"] < committed[src["partition"]]
    # ... so the restarted worker repeats nothing and loses nothing.
    everything = phase_a + phase_b
    assert reader.duplicates() == 0
    assert reader.event_ids() == {r.event_id for r in everything}
    second_run = reader.events[len(first_run) :]
    _check_against_offline(second_run, expected, predictor.labels)  # windows restored from the log
    print(f"sigterm: exit in {exit_s:.1f} s; first run {len(first_run)} events, second {len(second_run)}")


# ---------------------------------------------------------------------- 8. health and metrics


@pytest.mark.timeout(180)
def test_health_ready_and_metrics_over_http(broker, topic_factory, store) -> None:
    topics = make_topics(topic_factory, partitions=2)
    convs = meld_dev(3, start=110)
    recs = turn_records(convs)
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def scenario():
        cfg = worker_config(broker.bootstrap, topics, store, _group(), metrics_port=port)
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, recs)
            await produce_raw(broker.bootstrap, topics.input, [(b"x", b"not json")])
            async with Worker(cfg):
                healthz = await http_get(base + "/healthz")
                deadline = time.monotonic() + 60
                while (ready := await http_get(base + "/readyz"))[0] != 200 and time.monotonic() < deadline:
                    assert ready[0] == 503
                    await asyncio.sleep(0.1)
                await reader.wait_for_ids([r.event_id for r in recs], timeout_s=90, dead=1)
                await asyncio.sleep(0.5)  # the ack callbacks run just after the events land
                metrics = await http_get(base + "/metrics")
                missing = await http_get(base + "/nope")
            return healthz, ready, metrics, missing

    healthz, ready, (status, text), missing = asyncio.run(scenario())
    assert healthz == (200, '{"status": "alive"}')
    assert ready == (200, '{"status": "ready"}')
    assert missing[0] == 404
    assert status == 200
    n = len(recs)
    assert metric_value(text, "erc_turns_consumed_total", topic=topics.input) == n + 1
    emitted = sum(metric_value(text, "erc_events_emitted_total", emotion=label) for label in MELD_LABELS)
    assert emitted == n
    assert metric_value(text, "erc_dead_letters_total", reason="not_json") == 1
    assert metric_value(text, "erc_model_info", version=VERSION, dataset="meld") == 1
    assert metric_value(text, "erc_model_reloads_total", result="ok") == 1
    assert metric_value(text, "erc_partitions_assigned") == 2
    assert metric_value(text, "erc_in_flight_turns") == 0
    assert metric_value(text, "erc_batch_size_count") >= 1
    assert metric_value(text, "erc_end_to_end_latency_seconds_count") == n
    for name in (
        "erc_inference_seconds_bucket",
        "erc_tokens_processed_total",
        "erc_offset_commits_total",
        "erc_active_conversations",
        "erc_consumer_paused",
    ):
        assert name in text, name
    # No per-conversation labels: no conversation id or speaker reaches /metrics.
    assert "meld-dev" not in text
    for conv in convs:
        for u in conv.utterances:
            assert f'"{u.speaker}"' not in text


# ---------------------------------------------------------------------- 9. CLI exits


@pytest.mark.timeout(120)
def test_cli_missing_model_store_and_bad_flag(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "400"})
    store = tmp_path / "no-store"
    run = subprocess.run(
        [
            str(CLI),
            "worker",
            "--model-store",
            str(store),
            "--metrics-port",
            "0",
            "--metrics-host",
            "127.0.0.1",
            "--bootstrap-servers",
            "127.0.0.1:1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 1, out
    assert "has no CURRENT version; train and publish one with" in out
    assert f"erc-train fit --store {store}" in out

    run = subprocess.run(
        [str(CLI), "worker", "--max-batch-size", "0"], env=env, capture_output=True, text=True, timeout=100
    )
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2, out
    assert "WorkerConfig.max_batch_size has an invalid value: 0" in out

    run = subprocess.run(
        [str(CLI), "worker"], env={**env, "ERC_MAX_IN_FLIGHT": "4"}, capture_output=True, text=True, timeout=100
    )
    out = " ".join((run.stdout + run.stderr).split())
    assert run.returncode == 2, out
    assert "WorkerConfig.max_in_flight has an invalid value: 4" in out
