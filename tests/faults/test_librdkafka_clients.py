"""Kill-and-restart with an independent Kafka client on both ends.

librdkafka (confluent-kafka) produces the turns, with its own default partitioner, and reads
the events back; the worker in between is SIGKILLed mid-stream and restarted. No event id
may be missing, every event must validate, and repeats stay within the in-flight bound.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import jsonschema
import pytest

from tests.faults.helpers import FAULT_SETTINGS, group_id, report, tally
from tests.integration.worker_harness import OutputReader, WorkerProcess, make_topics, meld_dev, turn_records

confluent_kafka = pytest.importorskip("confluent_kafka")

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "emotion_event.schema.json").read_text())


def _produce_with_librdkafka(bootstrap: str, topic: str, records) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures: list[str] = []
    for r in records:
        producer.produce(
            topic, key=r.key, value=r.value, on_delivery=lambda err, msg: failures.append(str(err)) if err else None
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "librdkafka producer did not deliver everything"
    assert not failures, failures


def _consume_with_librdkafka(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[dict]:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{group_id()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    events: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if len({e["event_id"] for e in events}) >= expected:
                    break
                continue
            if msg.error():
                continue
            events.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return events


@pytest.mark.timeout(300)
def test_sigkill_restart_with_librdkafka_producer_and_consumer(
    broker, topic_factory, fault_store: Path, tmp_path: Path
) -> None:
    topics = make_topics(topic_factory, partitions=3)
    records = turn_records(meld_dev(8, start=40))
    expected_ids = {r.event_id for r in records}
    group = group_id()
    max_in_flight = int(FAULT_SETTINGS["max_in_flight"])
    _produce_with_librdkafka(broker.bootstrap, topics.input, records)

    async def scenario() -> None:
        async with OutputReader(broker.bootstrap, topics) as reader:
            first = WorkerProcess(broker.bootstrap, topics, fault_store, group, tmp_path / "w0.log", **FAULT_SETTINGS)
            try:
                await first.wait_ready(timeout_s=120)
                ok = await reader.wait_for(lambda: len(reader.event_ids()) >= len(records) // 3, timeout_s=120)
                assert ok, f"no progress before the kill:\n{first.log_tail()}"
                first.signal(signal.SIGKILL)
                assert await first.wait_exit(10) == -signal.SIGKILL
            finally:
                first.close()
            second = WorkerProcess(broker.bootstrap, topics, fault_store, group, tmp_path / "w1.log", **FAULT_SETTINGS)
            try:
                await second.wait_ready(timeout_s=120)
                await reader.wait_for_ids(expected_ids, timeout_s=150)
                second.signal(signal.SIGTERM)
                assert await second.wait_exit(60) == 0, second.log_tail()
            finally:
                second.close()
            report(tally("librdkafka_sigkill_restart", records, reader))

    asyncio.run(scenario())
    events = _consume_with_librdkafka(broker.bootstrap, topics.output, len(expected_ids), timeout_s=60)
    seen = {e["event_id"] for e in events}
    assert expected_ids - seen == set(), f"missing event ids: {sorted(expected_ids - seen)[:10]}"
    assert seen <= expected_ids
    for e in events:
        jsonschema.validate(e, SCHEMA)
    duplicates = len(events) - len(seen)
    assert duplicates <= max_in_flight, f"{duplicates} repeated events exceed the in-flight bound {max_in_flight}"
