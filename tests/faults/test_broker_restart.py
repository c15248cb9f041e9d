"""The broker goes away for several seconds and comes back on the same port, empty.

The worker must keep running (retrying with backoff, no crash, no tight loop) and resume
once the broker is back. The local broker keeps everything in memory, so the restart
also loses topics and committed offsets: the test recreates the topics and produces a
new batch, which must come out completely. What that loss means in general is written
down in docs/reliability.md ("Broker outage").
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from erc_stream.devtools.broker import LocalBroker, create_topics
from tests.faults.helpers import FAULT_SETTINGS, group_id, report, tally
from tests.integration.worker_harness import (
    OutputReader,
    Topics,
    WorkerProcess,
    http_get,
    meld_dev,
    produce,
    turn_records,
)

OUTAGE_S = 8.0


@pytest.mark.timeout(300)
def test_worker_survives_a_broker_restart(fault_store: Path, tmp_path: Path) -> None:
    topics = Topics("restart.turns", "restart.emotions", "restart.dlq", 3)
    batch_a = turn_records(meld_dev(8, start=60))
    batch_b = turn_records(meld_dev(8, start=68))
    broker = LocalBroker(log_path=tmp_path / "tansu.log")
    broker.start()

    def make_topics() -> None:
        create_topics(broker.bootstrap, {topics.input: 3, topics.output: 3, topics.dlq: 1})

    figures: dict[str, object] = {}

    async def scenario() -> tuple[OutputReader, OutputReader]:
        make_topics()
        w = WorkerProcess(broker.bootstrap, topics, fault_store, group_id(), tmp_path / "worker.log", **FAULT_SETTINGS)
        try:
            await w.wait_ready(timeout_s=120)
            async with OutputReader(broker.bootstrap, topics) as reader_a:
                await produce(broker.bootstrap, topics.input, batch_a)
                await reader_a.wait_for_ids([r.event_id for r in batch_a], timeout_s=120)
                await reader_a.settle(1.0)
            log_before = len(w.log_tail(10**9))
            broker.stop()
            t_down = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            assert w.proc.poll() is None, f"worker died while the broker was down:\n{w.log_tail()}"
            status, _ = await http_get(w.url + "/healthz")
            figures["healthz_during_outage"] = status
            outage_log = w.log_tail(10**9)[log_before:]
            figures["log_lines_during_outage"] = outage_log.count("\n")
            broker.restart()  # same port, memory storage: no topics, no groups, no offsets
            make_topics()
            figures["outage_s"] = round(time.monotonic() - t_down, 1)
            t_back = time.monotonic()
            # The worker notices the broker forgot its group (unknown member id), rejoins and
            # starts the recreated partitions from the beginning (no committed offsets).
            # Until then it holds its old positions: records written below them into the new
            # topic would be skipped, hence B is produced after the rejoin (docs/reliability.md).
            assigned = w.log_tail(10**9).count("partitions assigned")
            deadline = time.monotonic() + 60
            while w.log_tail(10**9).count("partitions assigned") == assigned:
                assert time.monotonic() < deadline, f"worker did not rejoin the group:\n{w.log_tail()}"
                await asyncio.sleep(0.2)
            figures["rejoin_s"] = round(time.monotonic() - t_back, 1)
            async with OutputReader(broker.bootstrap, topics) as reader_b:
                await produce(broker.bootstrap, topics.input, batch_b)
                await reader_b.wait_for_ids([r.event_id for r in batch_b], timeout_s=150)
                figures["resume_s"] = round(time.monotonic() - t_back, 1)
                await reader_b.settle(2.0)
            assert w.proc.poll() is None, w.log_tail()
            w.signal(signal.SIGTERM)
            figures["exit_code"] = await w.wait_exit(60)
            return reader_a, reader_b
        finally:
            w.close()
            broker.stop()

    reader_a, reader_b = asyncio.run(scenario())
    ta = tally("broker_restart", batch_a, reader_a)
    tb = tally("broker_restart", batch_b, reader_b)
    t = tally("broker_restart", batch_a + batch_b, reader_a)
    t.events_out, t.dead_letters = ta.events_out + tb.events_out, ta.dead_letters + tb.dead_letters
    t.duplicates, t.missing = ta.duplicates + tb.duplicates, ta.missing + tb.missing
    t.extra = figures
    report(t)
    assert ta.missing == 0 and tb.missing == 0
    assert reader_a.dead == [] and reader_b.dead == []
    assert tb.duplicates == 0  # batch B went into fresh topics and was read once
    assert figures["healthz_during_outage"] == 200
    assert figures["exit_code"] == 0
    # Backoff, not a busy loop: aiokafka retries every 500 ms (the worker's setting), a few
    # error lines per retry; with its default 100 ms it was ~80 lines a second.
    assert figures["log_lines_during_outage"] < 25 * OUTAGE_S
