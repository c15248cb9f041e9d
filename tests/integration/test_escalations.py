"""`erc-stream escalations` against the real local broker: the real program as a subprocess.

Scripted emotion events go in through aiokafka; an independent reader (no consumer group) reads
the escalations and dead letters back. Expected escalations come from two places: written out
by hand for the scripted conversations, and recomputed with the pure :class:`Escalator` over
the very records produced (their partitions and offsets included), which the app must match
record for record (``emitted_at`` aside).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client.parser import text_string_to_metric_families

from erc_stream.devtools.broker import LocalBroker, free_port
from erc_stream.escalations.messages import escalation_event, parse_emotion_event
from erc_stream.escalations.rules import RulesConfig
from erc_stream.escalations.state import ConversationState, Escalator
from erc_stream.events import BadInput, SourceRef

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "erc-stream"
ESCALATION_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "schemas" / "escalation_event.schema.json").read_text())
)
DEAD_LETTER_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "schemas" / "dead_letter.schema.json").read_text())
)
LABELS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
PARTITIONS = 2


# ---------------------------------------------------------------- inputs


def emotion_value(conv: str, turn: int, emotion: str, confidence: float, speaker: str | None = None) -> bytes:
    """An emotion event as the worker writes it (schemas/emotion_event.schema.json)."""
    return orjson.dumps(
        {
            "event_id": f"{conv}:{turn}",
            "conversation_id": conv,
            "turn_id": str(turn),
            "speaker": speaker or ("Ann" if turn % 2 == 0 else "Bob"),
            "emotion": emotion,
            "confidence": confidence,
            "scores": {label: (0.8 if label == emotion else 0.1) for label in LABELS},
            "model_version": "test-v1",
            "context_turns": min(turn, 3),
            "source": {"topic": "chat.turns", "partition": 0, "offset": turn},
            "ts": None,
            "record_ts_ms": None,
            "produced_at": time.time(),
            "latency_ms": 5.0,
        }
    )


def conversation(conv: str, turns: Sequence[tuple[str, float]], start: int = 0) -> list[tuple[bytes, bytes]]:
    return [(conv.encode(), emotion_value(conv, start + i, e, c)) for i, (e, c) in enumerate(turns)]


@dataclass
class Sent:
    """Every record produced, in order, with where it landed."""

    topic: str
    records: list[tuple[bytes | None, bytes, int, int]] = field(default_factory=list)  # key, value, partition, offset

    async def produce(self, bootstrap: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in records:  # one at a time: per-conversation order is what counts
                meta = await producer.send_and_wait(self.topic, value=value, key=key)
                self.records.append((key, value, meta.partition, meta.offset))
        finally:
            await producer.stop()

    def reference(self, rules: RulesConfig | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        """(escalation_id, status) -> the escalation the pure rules give for these records."""
        escalator = Escalator(rules or RulesConfig())
        states: dict[str, ConversationState] = {}
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value, partition, offset in self.records:
            try:
                event = parse_emotion_event(value, key)
            except BadInput:
                continue
            state = states.setdefault(event.conversation_id, escalator.new_state(event.conversation_id, partition))
            step = escalator.apply(state, event, SourceRef(self.topic, partition, offset))
            for esc in step.escalations:
                out.setdefault((esc.escalation_id, esc.status), esc.to_dict())
        return out


# ---------------------------------------------------------------- the app as a subprocess


class EscalationsProcess:
    """``erc-stream escalations`` configured only through environment variables, as in the chart."""

    def __init__(self, bootstrap: str, topics: dict[str, str], app_id: str, log_path: Path, **settings: object) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
        env.update(
            {
                "ERC_BOOTSTRAP_SERVERS": bootstrap,
                "ERC_ESCALATIONS_INPUT_TOPIC": topics["input"],
                "ERC_ESCALATIONS_OUTPUT_TOPIC": topics["output"],
                "ERC_ESCALATIONS_DLQ_TOPIC": topics["dlq"],
                "ERC_ESCALATIONS_APP_ID": app_id,
                "ERC_ESCALATIONS_PRODUCER_MAX_BATCH_BYTES": "1",  # the local broker (docs/escalations.md)
                "ERC_ESCALATIONS_COMMIT_INTERVAL_MS": "300",
                "ERC_ESCALATIONS_SESSION_TIMEOUT_MS": "6000",
                "ERC_ESCALATIONS_HEARTBEAT_INTERVAL_MS": "500",
                "ERC_ESCALATIONS_LAG_POLL_S": "0.5",
                "ERC_ESCALATIONS_METRICS_HOST": "127.0.0.1",
                "ERC_ESCALATIONS_METRICS_PORT": str(self.port),
                "COLUMNS": "300",
            }
        )
        env.update({f"ERC_ESCALATIONS_{k.upper()}": str(v) for k, v in settings.items()})
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [str(CLI), "escalations"], env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return resp.status, await resp.text()

    async def wait_ready(self, timeout_s: float = 90.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"escalations exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = await self.get("/readyz")
                if status == 200:
                    return time.monotonic() - t0
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.25)
        raise AssertionError(f"escalations not ready after {timeout_s} s:\n{self.log_tail()}")

    async def metric(self, sample: str, **labels: str) -> float:
        _, text = await self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += float(s.value)
        return total

    async def wait_metric(
        self, sample: str, want: Callable[[float], bool], timeout_s: float = 60.0, **labels: str
    ) -> float:
        deadline = time.monotonic() + timeout_s
        value = await self.metric(sample, **labels)
        while not want(value) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            value = await self.metric(sample, **labels)
        assert want(value), f"{sample}{labels} = {value} after {timeout_s} s:\n{self.log_tail()}"
        return value

    async def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert self.proc.returncode is not None, f"still running after {timeout_s} s:\n{self.log_tail()}"
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


# ---------------------------------------------------------------- reading the outputs


@dataclass
class Reader:
    """Reads the escalations and dead-letter topics from the beginning; no group, nothing committed."""

    bootstrap: str
    output: str
    dlq: str
    escalations: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    _consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Self:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
        await self._consumer.start()
        tps = [TopicPartition(self.output, p) for p in range(PARTITIONS)] + [TopicPartition(self.dlq, 0)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._consumer is not None
        await self._consumer.stop()

    async def poll(self) -> int:
        assert self._consumer is not None
        n = 0
        for tp, recs in (await self._consumer.getmany(timeout_ms=200)).items():
            for rec in recs:
                value = orjson.loads(rec.value)
                if tp.topic == self.output:
                    assert rec.key == value["conversation_id"].encode()
                    self.escalations.append(value)
                else:
                    self.dead.append(value)
                n += 1
        return n

    async def wait_for(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            await self.poll()
        assert done(), f"after {timeout_s} s still waiting for {what}: {len(self.escalations)} escalations"

    async def settle(self, quiet_s: float = 1.5) -> None:
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if await self.poll():
                last = time.monotonic()

    def unique(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(escalation_id, status) -> the record without emitted_at; copies must be identical."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for rec in self.escalations:
            body = {k: v for k, v in rec.items() if k != "emitted_at"}
            key = (rec["escalation_id"], rec["status"])
            assert out.setdefault(key, body) == body, f"two different records share {key}"
        return out

    def summary(self) -> dict[str, list[tuple[str, str, str, str]]]:
        """conversation -> [(status, rule, severity, turn)] in output order."""
        out: dict[str, list[tuple[str, str, str, str]]] = defaultdict(list)
        for rec in self.unique().values():
            turn = rec["opened_turn_id"] if rec["status"] == "opened" else (rec["resolved_turn_id"] or "idle")
            out[rec["conversation_id"]].append((rec["status"], rec["rule"], rec["severity"], turn))
        return dict(out)


def _topics(topic_factory: Callable[..., str]) -> dict[str, str]:
    return {"input": topic_factory(PARTITIONS), "output": topic_factory(PARTITIONS), "dlq": topic_factory(1)}


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


def _end_offsets(sent: Sent) -> dict[int, int]:
    ends: dict[int, int] = {}
    for _, _, partition, offset in sent.records:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


async def _wait_committed(bootstrap: str, group: str, sent: Sent, timeout_s: float = 30.0) -> None:
    want = _end_offsets(sent)
    deadline = time.monotonic() + timeout_s
    while True:
        got = await _committed(bootstrap, group, sent.topic)
        if all((got.get(p) or 0) >= end for p, end in want.items()):
            return
        assert time.monotonic() < deadline, f"offsets {got} not committed up to {want}"
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- scripted conversations

MUST = {
    # Three negative turns: intensity .5, .75, .875 crosses 0.8 -> spike (high), which outranks the
    # sustained (3 of 5) that matches on the same turn; three calm turns cool it down (.109).
    "must-spike": [("anger", 0.9), ("anger", 0.9), ("sadness", 0.9)] + [("neutral", 0.9)] * 3,
    # 3 of 5 negative, never two in a row: intensity .5, .25, .625, .3125, .656 stays below 0.8.
    "must-sustained": [("anger", 0.6), ("neutral", 0.9), ("sadness", 0.6), ("neutral", 0.9), ("fear", 0.6)],
    # Calm twice, then two negatives: a shift (intensity .5, .75: no spike).
    "must-shift": [("neutral", 0.9), ("joy", 0.9), ("anger", 0.55), ("disgust", 0.55)],
}
MUST_NOT = {
    "calm": [("neutral", 0.9), ("joy", 0.8), ("surprise", 0.7), ("neutral", 0.9), ("neutral", 0.9), ("joy", 0.9)],
    "isolated-negatives": [
        ("neutral", 0.9),
        ("anger", 0.9),
        ("neutral", 0.9),
        ("joy", 0.9),
        ("sadness", 0.9),
        ("neutral", 0.9),
        ("neutral", 0.9),
        ("fear", 0.9),
    ],
    "unsure-anger": [("anger", 0.25)] * 6,  # below every rule's min_confidence (0.3)
}
EXPECTED = {
    "must-spike": [("opened", "spike", "high", "2"), ("resolved", "spike", "high", "5")],
    "must-sustained": [("opened", "sustained", "medium", "4")],
    "must-shift": [("opened", "shift", "low", "3")],
}


@pytest.mark.timeout(240)
def test_scripted_conversations_repeats_and_bad_records(broker: LocalBroker, topic_factory, tmp_path: Path) -> None:
    topics = _topics(topic_factory)
    sent = Sent(topics["input"])
    app_id = f"esc-scripted-{os.getpid()}-{time.monotonic_ns()}"
    records = _round_robin([conversation(conv, turns) for conv, turns in {**MUST, **MUST_NOT}.items()])
    # Repeats: counted twice they would make a sustained (3 of 5) and a shift; counted once, nothing.
    guard = conversation("repeat-guard", [("neutral", 0.9), ("neutral", 0.9), ("anger", 0.55)])
    records += guard + [guard[2], guard[2]] + conversation("repeat-guard", [("neutral", 0.9)], start=3)
    # A repeat of the record that opened must-spike's escalation, as a new record: nothing new.
    records.append(conversation("must-spike", [("sadness", 0.9)], start=2)[0])
    bad = [
        (b"must-spike", b"not json at all"),
        (b"someone-else", emotion_value("must-shift", 9, "anger", 0.9)),  # key mismatch
        (b"c9", orjson.dumps({**orjson.loads(emotion_value("c9", 1, "anger", 0.9)), "event_id": "c9:2"})),
    ]
    records += bad

    async def scenario() -> tuple[Reader, dict[str, float]]:
        app = EscalationsProcess(broker.bootstrap, topics, app_id, tmp_path / "escalations.log")
        try:
            await app.wait_ready()
            await sent.produce(broker.bootstrap, records)
            processed = len(records)
            await app.wait_metric("erc_escalations_events_processed_total", lambda v: v >= processed)
            await app.wait_metric("erc_escalations_open", lambda v: v == 2)  # sustained and shift stay open
            await app.wait_metric("erc_escalations_consumer_lag", lambda v: v == 0)
            async with Reader(broker.bootstrap, topics["output"], topics["dlq"]) as reader:
                await reader.wait_for(lambda: len(reader.dead) >= 3 and len(reader.escalations) >= 4, 30, "outputs")
                await reader.settle()
            m = {
                "applied": await app.metric("erc_escalations_events_processed_total", result="applied"),
                "duplicate": await app.metric("erc_escalations_events_processed_total", result="duplicate"),
                "dead_letter": await app.metric("erc_escalations_events_processed_total", result="dead_letter"),
                "opened_spike": await app.metric("erc_escalations_opened_total", rule="spike", severity="high"),
                "open_shift": await app.metric("erc_escalations_open", rule="shift", severity="low"),
                "resent": await app.metric("erc_escalations_resent_total"),
            }
            app.proc.send_signal(signal.SIGTERM)
            assert await app.wait_exit(30) == 0, app.log_tail()
            return reader, m
        finally:
            app.close()

    reader, m = asyncio.run(scenario())
    assert reader.summary() == EXPECTED
    assert len(reader.escalations) == 4, "a repeat re-sent an escalation"
    assert reader.unique() == sent.reference()
    for rec in reader.escalations:
        ESCALATION_SCHEMA.validate(rec)
    opened = {r["conversation_id"]: r for r in reader.escalations if r["status"] == "opened"}
    assert [e["turn_id"] for e in opened["must-spike"]["evidence"]] == ["0", "1", "2"]
    assert [e["emotion"] for e in opened["must-sustained"]["evidence"]] == ["anger", "sadness", "fear"]
    assert opened["must-shift"]["trigger_turn_ids"] == ["0", "1", "2", "3"]
    for rec in reader.dead:
        DEAD_LETTER_SCHEMA.validate(rec)
    assert sorted(r["reason"] for r in reader.dead) == ["key_mismatch", "not_json", "schema_violation"]
    assert m == {
        "applied": len(records) - 3 - 3,
        "duplicate": 3,
        "dead_letter": 3,
        "opened_spike": 1,
        "open_shift": 1,
        "resent": 0,
    }


# ---------------------------------------------------------------- SIGKILL and restart


def _random_conversations(rng: random.Random, n: int, turns: int, prefix: str) -> dict[str, list[tuple[str, float]]]:
    weights = [0.35, 0.15, 0.1, 0.15, 0.1, 0.08, 0.07]
    return {
        f"{prefix}-{i}": [(rng.choices(LABELS, weights)[0], round(rng.uniform(0.35, 0.95), 3)) for _ in range(turns)]
        for i in range(n)
    }


def _round_robin(per_conversation: Sequence[list[tuple[bytes | None, bytes]]]) -> list[tuple[bytes | None, bytes]]:
    """Conversations taking turns, like live traffic; each conversation's records stay in order."""
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(max((len(r) for r in per_conversation), default=0)):
        out += [r[i] for r in per_conversation if i < len(r)]
    return out


@pytest.mark.timeout(420)
def test_sigkill_and_restart_keep_state_and_escalation_ids(broker: LocalBroker, topic_factory, tmp_path: Path) -> None:
    """Kill 1 after the offsets are committed: the state must come back from the changelog.
    Kill 2 right after outputs appear: the uncommitted events come again and are dropped or re-sent.
    An independent reader then sees every escalation of an uninterrupted run, under the same ids."""
    topics = _topics(topic_factory)
    sent = Sent(topics["input"])
    app_id = f"esc-kill-{os.getpid()}-{time.monotonic_ns()}"
    rng = random.Random(12)
    phases = [_random_conversations(rng, 40, 4, "r") for _ in range(3)]
    # Conversations whose escalation spans a kill: only a restored state gives the right result.
    phases[0]["k-open"] = [("anger", 0.9), ("anger", 0.9), ("fear", 0.9)]  # spike opens before kill 1 ...
    phases[1]["k-open"] = [("neutral", 0.9)] * 3  # ... and resolves after it, under the same id
    phases[0]["k-history"] = [("anger", 0.6), ("neutral", 0.9), ("sadness", 0.6)]  # 2 of 3 negative
    phases[1]["k-history"] = [("neutral", 0.9), ("fear", 0.6)]  # the third negative of 5: sustained
    starts = {name: 0 for phase in phases for name in phase}

    def records_of(phase: dict[str, list[tuple[str, float]]]) -> list[tuple[bytes | None, bytes]]:
        per = [conversation(name, turns, start=starts[name]) for name, turns in phase.items()]
        for name, turns in phase.items():
            starts[name] += len(turns)
        return _round_robin(per)

    async def scenario() -> tuple[Reader, dict[str, Any]]:
        facts: dict[str, Any] = {}
        log = tmp_path / "escalations.log"
        # Run 1: phase 0, wait until processed and committed, SIGKILL.
        app = EscalationsProcess(broker.bootstrap, topics, app_id, log)
        try:
            await app.wait_ready()
            await sent.produce(broker.bootstrap, records_of(phases[0]))
            await app.wait_metric("erc_escalations_events_processed_total", lambda v: v >= len(sent.records))
            await _wait_committed(broker.bootstrap, app_id, sent)
            facts["conversations_before"] = await app.wait_metric("erc_escalations_conversations", lambda v: v >= 42)
            app.proc.send_signal(signal.SIGKILL)
            assert await app.wait_exit(10) == -signal.SIGKILL
        finally:
            app.close()
        facts["changelog"] = await _describe(broker.bootstrap, f"{app_id}-conversations-changelog")
        # Run 2: the table must hold every conversation before any new event arrives. Commits are
        # rare here, so that the kill surely lands before one: run 3 gets phase 1 again.
        app = EscalationsProcess(broker.bootstrap, topics, app_id, log, commit_interval_ms=60000)
        try:
            await app.wait_ready()
            facts["conversations_restored"] = await app.wait_metric(
                "erc_escalations_conversations", lambda v: v >= facts["conversations_before"], timeout_s=10
            )
            n_before = len(sent.records)
            await sent.produce(broker.bootstrap, records_of(phases[1]))
            await app.wait_metric("erc_escalations_events_processed_total", lambda v: v >= len(sent.records) - n_before)
            app.proc.send_signal(signal.SIGKILL)  # no waiting for the commit this time
            await app.wait_exit(10)
        finally:
            app.close()
        # Run 3: phase 2, then a graceful stop.
        app = EscalationsProcess(broker.bootstrap, topics, app_id, log)
        try:
            await app.wait_ready()
            await sent.produce(broker.bootstrap, records_of(phases[2]))
            reference = sent.reference()
            async with Reader(broker.bootstrap, topics["output"], topics["dlq"]) as reader:
                await reader.wait_for(lambda: set(reference) <= set(reader.unique()), 90, "every reference escalation")
                await reader.settle(2.0)
            facts["duplicates_seen_by_run3"] = await app.metric(
                "erc_escalations_events_processed_total", result="duplicate"
            )
            app.proc.send_signal(signal.SIGTERM)
            assert await app.wait_exit(30) == 0, app.log_tail()
        finally:
            app.close()
        facts["reference"] = reference
        return reader, facts

    reader, facts = asyncio.run(scenario())
    changelog = facts["changelog"]
    assert changelog == {"partitions": PARTITIONS, "cleanup.policy": "compact"}
    assert facts["conversations_restored"] == facts["conversations_before"] == 42
    # Kill 2 came before the (rare) commit, so phase-1 events were delivered again and dropped as
    # repeats. How many depends on whether faust committed some offsets before the kill (seen once
    # under a loaded machine: 153 of 165), so only "some, and no more than were sent" is fixed here;
    # that no repeat counted twice is what the comparison with the reference below checks.
    assert 0 < facts["duplicates_seen_by_run3"] <= sum(len(t) for t in phases[1].values())
    unique = reader.unique()  # also asserts that copies of one (id, status) are identical
    assert unique == facts["reference"], "escalations lost or invented across the kills"
    assert not reader.dead
    for rec in reader.escalations:
        ESCALATION_SCHEMA.validate(rec)
    summary = reader.summary()
    assert summary["k-open"] == [("opened", "spike", "high", "2"), ("resolved", "spike", "high", "5")]
    assert summary["k-history"] == [("opened", "sustained", "medium", "4")]
    ids = defaultdict(set)
    for (eid, status), rec in unique.items():
        ids[eid].add((rec["conversation_id"], rec["rule"], rec["opened_turn_id"], status))
    assert all(len({v[:3] for v in owners}) == 1 for owners in ids.values()), "one escalation_id, two escalations"
    print(
        f"\n{len(unique)} escalations, {len(reader.escalations) - len(unique)} re-sent copies, "
        f"{facts['duplicates_seen_by_run3']:.0f} repeated events dropped after kill 2"
    )


async def _describe(bootstrap: str, topic: str) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        configs = {name: value for name, value, *_ in resp.resources[0][4]}
    finally:
        await admin.close()
    return {"partitions": len(described["partitions"]), "cleanup.policy": configs.get("cleanup.policy")}


# ---------------------------------------------------------------- the broker quirk behind producer_max_batch_bytes=1


@pytest.mark.timeout(60)
def test_local_broker_end_offset_after_a_multi_record_batch(broker: LocalBroker, topic_factory) -> None:
    """Why the app runs with producer_max_batch_bytes=1 here: this broker answers ListOffsets(latest)
    with the first offset of the last batch + 1, so faust's changelog restore (which reads up to
    that end offset) misses the rest of a batch. Fails when the broker is fixed: then drop the setting."""
    topic = topic_factory(1)

    async def ends(max_batch_size: int) -> tuple[list[int], int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50, max_batch_size=max_batch_size)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=b"v%d" % i) for i in range(3)]
            offsets = [(await f).offset for f in futures]
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            end = (await consumer.end_offsets([TopicPartition(topic, 0)]))[TopicPartition(topic, 0)]
        finally:
            await consumer.stop()
        return offsets, end

    batched, end_batched = asyncio.run(ends(16384))
    assert batched == [0, 1, 2] and end_batched == 1  # Kafka would answer 3
    single, end_single = asyncio.run(ends(1))
    assert single == [3, 4, 5] and end_single == 6


# ---------------------------------------------------------------- tail and demo


@pytest.mark.timeout(60)
def test_tail_follows_the_escalations_topic(broker: LocalBroker, topic_factory) -> None:
    from rich.console import Console

    from erc_stream.devtools.tail import TailConfig, tail

    topic = topic_factory(1)
    sent = Sent(topic)
    escalator = Escalator(RulesConfig())
    state = escalator.new_state("tail-1", 0)
    out: list[bytes] = []
    for i, emotion in enumerate(["anger", "anger", "anger", "neutral", "neutral", "neutral"]):
        event = parse_emotion_event(emotion_value("tail-1", i, emotion, 0.9), b"tail-1")
        for esc in escalator.apply(state, event, SourceRef("chat.emotions", 0, i)).escalations:
            out.append(escalation_event(esc, emitted_at=time.time()))
    assert len(out) == 2
    asyncio.run(sent.produce(broker.bootstrap, [(b"tail-1", out[0]), (b"tail-1", b"garbage"), (b"tail-1", out[1])]))
    console = Console(record=True, width=200, highlight=False)
    cfg = TailConfig(
        bootstrap_servers=broker.bootstrap,
        topic=topic,
        input_topic=None,
        from_beginning=True,
        max_events=2,
        escalations=True,
    )
    shown = asyncio.run(asyncio.wait_for(tail(cfg, console=console), 30))
    lines = console.export_text().splitlines()
    assert shown == 2
    assert lines[0].startswith(
        "▲ OPENED   tail-1         spike     high    turn 2    anger 0.90 · anger 0.90 · anger 0.90"
    )
    assert "not an escalation event" in lines[1]
    assert lines[2].startswith("▼ resolved tail-1         spike     high    turn 5    cooled_down")
    # The command: --escalations reads ERC_ESCALATIONS_OUTPUT_TOPIC when no --topic is given.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_")}
    env.update({"ERC_ESCALATIONS_OUTPUT_TOPIC": topic, "COLUMNS": "200"})
    proc = subprocess.run(
        [str(CLI), "tail", "--escalations", "--bootstrap-servers", broker.bootstrap, "--from-beginning"]
        + ["--max-events", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line[:10] for line in proc.stdout.splitlines() if line.startswith(("▲", "▼"))] == [
        "▲ OPENED  ",
        "▼ resolved",
    ]
    assert "2 escalation events shown" in proc.stderr


@pytest.mark.timeout(400)
def test_demo_shows_and_counts_escalations(tmp_path: Path) -> None:
    """`erc-stream demo` (as `make demo` runs it, on the shipped model) starts the escalations app,
    prints every escalation as it comes and counts them in its summary."""
    store = ROOT / "models"
    if not (store / "CURRENT").is_file():
        pytest.skip("no shipped model store at models/")
    summary_path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERC_") or k == "ERC_DATA_DIR"}
    env.setdefault("ERC_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [str(CLI), "demo", "--store", str(store), "--conversations", "12", "--rate", "0", "--quiet"]
        + ["--summary-json", str(summary_path)],
        capture_output=True,
        text=True,
        timeout=380,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    e = s["escalations"]
    opened_lines = [line for line in proc.stdout.splitlines() if line.startswith("▲ OPENED")]
    resolved_lines = [line for line in proc.stdout.splitlines() if line.startswith("▼ resolved")]
    # Every emotion event reached the app; each escalation was shown once and counted once.
    assert e["events_processed"] == s["events"] == s["turns_sent"]
    assert sum(e["opened"].values()) == len(opened_lines) >= 1
    assert sum(e["resolved"].values()) == len(resolved_lines)
    assert e["still_open"] == len(opened_lines) - len(resolved_lines)
    assert "escalations opened" in proc.stdout and "escalations app stopped" in proc.stdout
