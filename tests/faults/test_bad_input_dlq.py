"""The whole bad-input corpus (tests/data/bad_inputs) through a real worker and broker.

Each record must come out on the dead-letter topic exactly once, with the expected reason,
its original bytes and its source coordinates, while valid turns around it still get their
events and the worker keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path

import pytest

from erc_stream.events import MAX_DLQ_ORIGINAL_BYTES
from tests.data.bad_inputs.corpus import load_corpus
from tests.faults.helpers import FAULT_SETTINGS, group_id, report, tally
from tests.integration.worker_harness import (
    OutputReader,
    WorkerProcess,
    make_topics,
    meld_dev,
    produce_raw,
    turn_records,
)


@pytest.mark.timeout(300)
def test_every_bad_input_lands_in_the_dlq_with_its_reason(
    broker, topic_factory, fault_store: Path, tmp_path: Path
) -> None:
    topics = make_topics(topic_factory, partitions=2)
    cases = load_corpus()
    valid = turn_records(meld_dev(3, start=5))
    # Valid turns first, then the corpus, then valid turns again: bad records in between
    # must not hold up or disturb the good ones.
    half = len(valid) // 2
    sends: list[tuple[str, bytes | None, bytes | None]] = [("valid", r.key, r.value) for r in valid[:half]]
    for case in cases:
        sends.extend((case.name, case.key, case.value) for _ in range(case.repeat))
    sends.extend(("valid", r.key, r.value) for r in valid[half:])
    expected_dead = sum(1 for c in cases for i in range(c.repeat) if c.stage != "window" or i > 0)
    dup_case = next(c for c in cases if c.stage == "window")

    async def scenario() -> tuple[OutputReader, list]:
        w = WorkerProcess(broker.bootstrap, topics, fault_store, group_id(), tmp_path / "worker.log", **FAULT_SETTINGS)
        try:
            await w.wait_ready(timeout_s=120)
            async with OutputReader(broker.bootstrap, topics) as reader:
                metas = await produce_raw(broker.bootstrap, topics.input, ((k, v) for _, k, v in sends))
                want = [r.event_id for r in valid] + ["bad-dup:7"]
                await reader.wait_for_ids(want, timeout_s=120, dead=expected_dead)
                await reader.settle(2.0)
                assert w.proc.poll() is None, w.log_tail()
                w.signal(signal.SIGTERM)
                assert await w.wait_exit(60) == 0
                return reader, metas
        finally:
            w.close()

    reader, metas = asyncio.run(scenario())
    by_source = {(d.value["source"]["partition"], d.value["source"]["offset"]): d.value for d in reader.dead}
    assert len(by_source) == len(reader.dead) == expected_dead  # one dead letter per bad record
    wrong = []
    seen_dup = 0
    for (name, key, value), meta in zip(sends, metas, strict=True):
        letter = by_source.get((meta.partition, meta.offset))
        if name == "valid":
            assert letter is None
            continue
        case = next(c for c in cases if c.name == name)
        if case is dup_case and seen_dup == 0:
            seen_dup += 1
            assert letter is None  # the first one is a valid turn
            continue
        if letter is None or letter["reason"] != case.reason:
            wrong.append((name, case.reason, None if letter is None else letter["reason"]))
            continue
        assert letter["source"]["topic"] == topics.input
        assert letter["key_b64"] == (None if key is None else base64.b64encode(key).decode())
        if value is None:
            assert letter["value_b64"] is None
        else:  # every stage carries the record as received
            assert base64.b64decode(letter["value_b64"]) == value[:MAX_DLQ_ORIGINAL_BYTES]
    t = tally(
        "bad_input_corpus",
        valid,
        reader,
        cases=len(cases),
        records_sent=len(sends),
        reasons=len({c.reason for c in cases}),
        wrong=len(wrong),
    )
    report(t)
    assert wrong == []
    assert t.missing == 0 and t.duplicates == 0
    assert t.events_out == len(valid) + 1  # plus the first copy of the duplicated turn
