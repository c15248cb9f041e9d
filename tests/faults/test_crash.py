"""SIGKILL of the worker at seeded random points of a replay, restarted each time.

At-least-once with offsets committed only after acknowledgement: no turn may be lost, and
each crash may repeat at most the turns read but not yet committed, which the fetch loop
keeps within ``max_in_flight``.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from tests.faults.helpers import FAULT_SETTINGS, group_id, report, tally
from tests.integration.worker_harness import (
    OutputReader,
    WorkerProcess,
    make_topics,
    meld_dev,
    metric_value,
    produce,
    turn_records,
)

SEED = 20240506
KILLS = 5


@pytest.mark.timeout(420)
def test_sigkill_at_random_points_loses_nothing(broker, topic_factory, fault_store: Path, tmp_path: Path) -> None:
    topics = make_topics(topic_factory, partitions=3)
    records = turn_records(meld_dev(15, start=10))
    n = len(records)
    rng = random.Random(SEED)
    # Kill points: numbers of distinct events seen, spread over the replay.
    points = sorted(rng.sample(range(n // 10, n - n // 10), KILLS))
    group = group_id()
    max_in_flight = int(FAULT_SETTINGS["max_in_flight"])
    kills: list[dict] = []

    async def scenario() -> OutputReader:
        async with OutputReader(broker.bootstrap, topics) as reader:
            await produce(broker.bootstrap, topics.input, records)
            for i, point in enumerate(points):
                w = WorkerProcess(
                    broker.bootstrap, topics, fault_store, group, tmp_path / f"w{i}.log", **FAULT_SETTINGS
                )
                try:
                    await w.wait_ready(timeout_s=120)
                    before = len(reader.event_ids())
                    # Kill while it works: past the seeded point and at least one new event in.
                    target = max(point, before + 1)
                    ok = await reader.wait_for(lambda t=target: len(reader.event_ids()) >= t, timeout_s=120)
                    assert ok, f"no progress towards kill point {point}:\n{w.log_tail()}"
                    in_flight = metric_value(await w.metrics(), "erc_in_flight_turns")
                    w.signal(signal.SIGKILL)
                    assert await w.wait_exit(10) == -signal.SIGKILL
                    kills.append({"point": point, "seen": len(reader.event_ids()), "in_flight": int(in_flight)})
                finally:
                    w.close()
            w = WorkerProcess(broker.bootstrap, topics, fault_store, group, tmp_path / "final.log", **FAULT_SETTINGS)
            try:
                await reader.wait_for_ids([r.event_id for r in records], timeout_s=180)
                await reader.settle(2.0)
                w.signal(signal.SIGTERM)
                assert await w.wait_exit(40) == 0
            finally:
                w.close()
            return reader

    reader = asyncio.run(scenario())
    t = tally(
        "sigkill_x5",
        records,
        reader,
        kills=len(points),
        max_in_flight=max_in_flight,
        kill_points=[k["point"] for k in kills],
        in_flight_at_kill=[k["in_flight"] for k in kills],
    )
    report(t)
    assert t.missing == 0
    assert reader.dead == []
    assert set(reader.event_ids()) == {r.event_id for r in records}
    assert t.duplicates <= KILLS * max_in_flight, kills
