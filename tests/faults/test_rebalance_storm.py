"""Rebalance storm: workers join and leave (SIGTERM, one SIGKILL) while a replay streams in.

Graceful leaves commit what they acknowledged before giving partitions up, so only the
SIGKILLed member may cause repeats (at most ``max_in_flight``); nothing may be missing. Every
event, repeats included, equals the offline prediction of its turn: the windows a new owner
restores from the input log are the windows the turn had. Run with a window model and with a
turn-once model, whose new owners re-encode the restored turns into their cached vectors.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from erc_stream.artifact import read_current, version_path
from erc_stream.model import load_predictor
from tests.faults.helpers import FAULT_SETTINGS, group_id, report, tally
from tests.integration.worker_harness import (
    OutputReader,
    WorkerProcess,
    check_scores,
    make_topics,
    meld_dev,
    offline_expected,
    produce,
    turn_records,
)

PRODUCE_SECONDS = 16.0
SLICES = 16
SCORE_TOL = 1e-4


@pytest.mark.timeout(500)
@pytest.mark.parametrize("architecture", ["window", "turn"])
def test_workers_joining_and_leaving_during_a_replay(
    broker, topic_factory, architecture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fault_store: Path = request.getfixturevalue("fault_store" if architecture == "window" else "turn_fault_store")
    topics = make_topics(topic_factory, partitions=4)
    convs = meld_dev(20, start=40)
    records = turn_records(convs)
    group = group_id()
    max_in_flight = int(FAULT_SETTINGS["max_in_flight"])
    workers: dict[str, WorkerProcess] = {}
    timeline: list[str] = []
    exits: dict[str, int] = {}

    def start(name: str) -> WorkerProcess:
        w = WorkerProcess(broker.bootstrap, topics, fault_store, group, tmp_path / f"{name}.log", **FAULT_SETTINGS)
        workers[name] = w
        timeline.append(f"+{name}")
        return w

    async def leave(name: str, sig: int) -> None:
        w = workers[name]
        w.signal(sig)
        exits[name] = await w.wait_exit(60)
        timeline.append(("~" if sig == signal.SIGKILL else "-") + name)

    async def producer() -> None:
        step = -(-len(records) // SLICES)
        for i in range(0, len(records), step):
            await produce(broker.bootstrap, topics.input, records[i : i + step])
            await asyncio.sleep(PRODUCE_SECONDS / SLICES)

    async def storm() -> None:
        await asyncio.sleep(2)
        await leave("w2", signal.SIGTERM)  # leaves: its partitions move to w1, w3
        start("w4")  # joins (model load, then a rebalance)
        await asyncio.sleep(4)
        await leave("w1", signal.SIGKILL)  # crashes: its partitions move after the session times out
        start("w5")
        await workers["w4"].wait_ready(timeout_s=120)
        await asyncio.sleep(2)
        await leave("w3", signal.SIGTERM)
        await workers["w5"].wait_ready(timeout_s=120)

    async def scenario() -> OutputReader:
        async with OutputReader(broker.bootstrap, topics) as reader:
            try:
                for name in ("w1", "w2", "w3"):
                    start(name)
                await asyncio.gather(*(workers[n].wait_ready(timeout_s=150) for n in ("w1", "w2", "w3")))
                await asyncio.gather(producer(), storm())
                await reader.wait_for_ids([r.event_id for r in records], timeout_s=180)
                await reader.settle(2.0)
                await asyncio.gather(leave("w4", signal.SIGTERM), leave("w5", signal.SIGTERM))
            finally:
                for w in workers.values():
                    w.close()
            return reader

    reader = asyncio.run(scenario())
    t = tally(
        f"rebalance_storm[{architecture}]",
        records,
        reader,
        workers=len(workers),
        timeline=" ".join(timeline),
        max_in_flight=max_in_flight,
    )
    report(t)
    assert t.missing == 0
    assert reader.dead == []
    assert set(reader.event_ids()) == {r.event_id for r in records}
    assert {n: c for n, c in exits.items() if n != "w1"} == {"w2": 0, "w3": 0, "w4": 0, "w5": 0}
    assert exits["w1"] == -signal.SIGKILL
    assert t.duplicates <= max_in_flight  # one crash; graceful leaves repeat nothing
    version = read_current(fault_store)
    assert version is not None
    predictor = load_predictor(version_path(fault_store, version), device="cpu", dtype="fp32")
    assert {e.value["model_version"] for e in reader.events} == {version}
    check_scores(reader.events, offline_expected(predictor, convs), predictor.labels, SCORE_TOL)
