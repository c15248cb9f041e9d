"""The local tools: replay (interleaving, records on a real topic), tail (format, join), demo end to end.

Pure parts (interleaving order, line format, text join, config validation) run without a
broker; the rest uses the real local broker and, for the demo, a real subprocess that
starts its own broker and an in-process worker with a test model
(``tests.fixtures_model.publish_test_model``: real encoder, untrained head).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console

from erc_stream.devtools.demo import Backlog
from erc_stream.devtools.replay import ReplayConfig, interleave, load_conversations, replay
from erc_stream.devtools.tail import TailConfig, TextJoin, render_event, tail, top_scores
from erc_stream.errors import ConfigError
from erc_stream.events import SourceRef, emotion_event, parse_turn
from trainer.datasets import Conversation, Utterance, data_dir_from_env

CLI = [sys.executable, "-c", "from erc_stream.cli import main; main()"]


def _conv(cid: str, n: int) -> Conversation:
    return Conversation(cid, tuple(Utterance(f"s{i % 2}", f"{cid} turn {i}", "neutral") for i in range(n)))


def _meld_dev_dir() -> Path:
    root = data_dir_from_env()
    if not (root / "meld" / "dev_sent_emo.csv").is_file():
        pytest.skip(f"MELD dev not found under {root.resolve()}: set ERC_DATA_DIR to the shared datasets")
    return root


def _env(data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ERC_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200",
    }


# -------------------------------------------------------------------- replay, pure
def test_interleave_round_robin_refills_freed_slots() -> None:
    convs = [_conv("a", 3), _conv("b", 1), _conv("empty", 0), _conv("c", 2), _conv("d", 1)]
    order = [(c.id, i) for c, i, _ in interleave(convs, 2)]
    assert order == [("a", 0), ("b", 0), ("a", 1), ("c", 0), ("a", 2), ("c", 1), ("d", 0)]


def test_interleave_one_at_a_time_is_sequential() -> None:
    convs = [_conv("a", 2), _conv("b", 2)]
    assert [(c.id, i) for c, i, _ in interleave(convs, 1)] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]


def test_interleave_rejects_k_zero() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        list(interleave([_conv("a", 1)], 0))


@pytest.mark.parametrize("field,value", [("interleave", 0), ("rate_per_s", -1.0), ("conversations", 0), ("topic", "")])
def test_replay_config_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"ReplayConfig.{field} has an invalid value"):
        ReplayConfig(**{field: value})


def test_replay_cli_bad_dataset_exits_2_with_message() -> None:
    proc = subprocess.run([*CLI, "replay", "--dataset", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "meld" in proc.stderr


# -------------------------------------------------------------------- tail, pure
EVENT = {
    "event_id": "c1:0",
    "conversation_id": "c1",
    "turn_id": "0",
    "speaker": "Monica",
    "emotion": "joy",
    "confidence": 0.876,
    "scores": {"neutral": 0.1, "joy": 0.61, "surprise": 0.42, "anger": 0.3},
}


def test_render_event_line() -> None:
    line = render_event(EVENT, "Hi  there\n", text_width=10).plain
    assert line == (
        "c1#0                 Monica       Hi there   joy        0.88  joy 0.61 · surprise 0.42 · anger 0.30"
    )


def test_render_event_cuts_long_text_and_marks_missing_text() -> None:
    assert (
        render_event(EVENT, "Ohh, you guys, remember", text_width=10).plain.split("Monica       ")[1][:11]
        == "Ohh, you … "
    )
    assert "Monica       (text not… joy" in render_event(EVENT, None, text_width=10).plain


def test_top_scores_highest_first_ties_keep_order() -> None:
    assert top_scores({"a": 0.1, "b": 0.5, "c": 0.5, "d": 0.7}) == [("d", 0.7), ("b", 0.5), ("c", 0.5)]


def test_text_join_waits_for_turn_then_gives_up() -> None:
    join = TextJoin(wait_s=2.0)
    e0 = {"event_id": "c:0"}
    e1 = {"event_id": "c:1"}
    assert join.add_turn("c:0", "hello") == []
    assert join.add_event(e0, now_s=10.0) == [(e0, "hello")]
    assert join.add_event(e1, now_s=10.0) == []
    assert len(join) == 1
    assert join.expired(11.9) == []
    assert join.add_turn("c:1", "late") == [(e1, "late")]
    e2 = {"event_id": "c:2"}
    join.add_event(e2, now_s=20.0)
    assert join.expired(22.0) == [(e2, None)]
    e3 = {"event_id": "c:3"}
    join.add_event(e3, now_s=30.0)
    assert join.drain() == [(e3, None)] and len(join) == 0


def test_text_join_keeps_at_most_max_turns() -> None:
    join = TextJoin(max_turns=2)
    for i in range(3):
        join.add_turn(f"c:{i}", f"t{i}")
    assert join.add_event({"event_id": "c:0"}, 0.0) == []  # evicted
    assert join.add_event({"event_id": "c:2"}, 0.0) == [({"event_id": "c:2"}, "t2")]


def test_tail_config_rejects_same_topics() -> None:
    with pytest.raises(ConfigError, match="TailConfig.input_topic"):
        TailConfig(topic="x", input_topic="x")


# -------------------------------------------------------------------- replay on the broker
async def _read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(recs)
        # Nothing beyond the expected count arrives.
        for recs in (await consumer.getmany(timeout_ms=1000)).values():
            records.extend(recs)
    finally:
        await consumer.stop()
    return records


@pytest.mark.broker
def test_replay_publishes_every_turn_keyed_with_gold(broker, topic_factory) -> None:
    data_dir = _meld_dev_dir()
    topic = topic_factory(3)
    cfg = ReplayConfig(
        dataset="meld",
        split="dev",
        bootstrap_servers=broker.bootstrap,
        topic=topic,
        conversations=5,
        interleave=3,
        data_dir=data_dir,
    )
    convs = load_conversations(cfg)
    expected = {(c.id, i): u for c in convs for i, u in enumerate(c.utterances)}
    sent = []
    result = asyncio.run(replay(cfg, convs, on_sent=sent.append))
    assert result.turns_sent == len(expected) == len(sent)
    assert [(t.conversation_id, t.turn_id) for t in sent] == [(c.id, i) for c, i, _ in interleave(convs, 3)]

    records = asyncio.run(_read_all(broker.bootstrap, topic, len(expected)))
    assert len(records) == len(expected)
    per_conv: dict[str, list[int]] = {}
    for rec in records:
        body = orjson.loads(rec.value)
        turn = parse_turn(rec.value, rec.key)  # the worker's own validation accepts it
        assert rec.key == body["conversation_id"].encode()
        utt = expected[(body["conversation_id"], body["turn_id"])]
        assert (turn.speaker, turn.text) == (utt.speaker, utt.text)
        assert body["metadata"] == {"dataset": "meld", "split": "dev", "gold": utt.label}
        per_conv.setdefault(body["conversation_id"], []).append(body["turn_id"])
    # Keyed by conversation: each conversation's turns are in order within its partition.
    assert {cid: ids for cid, ids in per_conv.items()} == {c.id: list(range(len(c.utterances))) for c in convs}


@pytest.mark.broker
def test_replay_rate_paces_the_records(broker, topic_factory) -> None:
    topic = topic_factory(1)
    convs = [_conv("a", 5), _conv("b", 5)]
    cfg = ReplayConfig(bootstrap_servers=broker.bootstrap, topic=topic, rate_per_s=20.0, interleave=2)
    result = asyncio.run(replay(cfg, convs))
    assert result.turns_sent == 10
    # 10 records at 20/s: the last is scheduled 9 intervals (0.45 s) after the first.
    assert 0.45 <= result.wall_s < 3.0


def test_backlog_holds_at_the_limit_until_an_answer_or_stop() -> None:
    async def scenario() -> list[str]:
        stop = asyncio.Event()
        backlog = Backlog(2, stop)
        seen = []
        backlog.on_sent()
        await asyncio.wait_for(backlog.wait_for_room(), 1.0)  # 1 unanswered < 2: room
        backlog.on_sent()
        waiter = asyncio.create_task(backlog.wait_for_room())
        await asyncio.sleep(0.2)
        seen.append(f"held={not waiter.done()}")
        backlog.on_answered()
        await asyncio.wait_for(waiter, 1.0)
        seen.append(f"unanswered={backlog.unanswered}")
        backlog.on_sent()
        waiter = asyncio.create_task(backlog.wait_for_room())
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(waiter, 2.0)  # released by stop, not by an answer
        seen.append(f"after stop unanswered={backlog.unanswered}")
        await asyncio.wait_for(Backlog(0, asyncio.Event()).wait_for_room(), 1.0)  # 0: no limit
        return seen

    assert asyncio.run(scenario()) == ["held=True", "unanswered=1", "after stop unanswered=2"]


@pytest.mark.broker
def test_replay_waits_for_room_before_each_record(broker, topic_factory) -> None:
    """With nobody answering, a backlog of 3 lets exactly 3 records out; stop ends the replay."""
    topic = topic_factory(1)
    convs = [_conv("a", 5), _conv("b", 5)]
    cfg = ReplayConfig(bootstrap_servers=broker.bootstrap, topic=topic, interleave=2)

    async def scenario():
        stop = asyncio.Event()
        backlog = Backlog(3, stop)
        task = asyncio.create_task(
            replay(cfg, convs, on_sent=lambda _t: backlog.on_sent(), stop=stop, wait_for_room=backlog.wait_for_room)
        )
        await asyncio.sleep(1.5)
        held = (backlog.sent, task.done())
        backlog.on_answered()  # one answer: one more record
        await asyncio.sleep(1.0)
        one_more = backlog.sent
        stop.set()
        return held, one_more, await asyncio.wait_for(task, 10.0)

    held, one_more, result = asyncio.run(scenario())
    assert held == (3, False)
    assert one_more == 4
    assert result.interrupted and result.turns_sent == 4
    assert len(asyncio.run(_read_all(broker.bootstrap, topic, 4))) == 4


# -------------------------------------------------------------------- tail on the broker
@pytest.mark.broker
def test_tail_prints_joined_lines(broker, topic_factory) -> None:
    turns_topic, events_topic = topic_factory(1), topic_factory(1)
    turns = [("c1", 0, "Monica", "Are you kidding me?"), ("c2", 0, "Joey", "How you doin'?")]
    scores = [
        {"neutral": 0.2, "surprise": 0.8, "joy": 0.5},
        {"neutral": 0.6, "surprise": 0.1, "joy": 0.7},
        {"neutral": 0.9, "surprise": 0.3, "joy": 0.2},
    ]
    events = []
    for (cid, tid, speaker, text), sc in zip([*turns, ("c1", 1, "Ross", "never sent")], scores, strict=True):
        turn = parse_turn(
            orjson.dumps({"conversation_id": cid, "turn_id": tid, "speaker": speaker, "text": text}), None
        )
        emotion = max(sc, key=sc.get)
        events.append(
            emotion_event(
                turn,
                emotion=emotion,
                confidence=0.9,
                scores=sc,
                model_version="v",
                context_turns=0,
                source=SourceRef(turns_topic, 0, tid),
                record_ts_ms=None,
                produced_at=time.time(),
                latency_ms=1.0,
            )
        )

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for cid, tid, speaker, text in turns:
                await producer.send_and_wait(
                    turns_topic,
                    orjson.dumps({"conversation_id": cid, "turn_id": tid, "speaker": speaker, "text": text}),
                    key=cid.encode(),
                )
            for ev in events:
                await producer.send_and_wait(events_topic, ev, key=orjson.loads(ev)["conversation_id"].encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    proc = subprocess.run(
        [
            *CLI,
            "tail",
            "--bootstrap-servers",
            broker.bootstrap,
            "--topic",
            events_topic,
            "--input-topic",
            turns_topic,
            "--from-beginning",
            "--max-events",
            "3",
            "--text-width",
            "24",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "60"},
    )
    assert proc.returncode == 0, proc.stderr
    decoded = [orjson.loads(e) for e in events]
    # The event whose turn never appears is shown last, without text, after text_wait_s.
    assert proc.stdout.splitlines() == [
        render_event(decoded[0], "Are you kidding me?", text_width=24).plain,
        render_event(decoded[1], "How you doin'?", text_width=24).plain,
        render_event(decoded[2], None, text_width=24).plain,
    ]
    assert proc.stdout.splitlines()[0] == (
        "c1#0                 Monica       Are you kidding me?      surprise   0.90  surprise 0.80 · joy 0.50 · "
        "neutral 0.20"
    )
    assert "3 events shown" in proc.stderr


@pytest.mark.broker
def test_tail_without_from_beginning_shows_only_new_events(broker, topic_factory) -> None:
    """The local broker's "latest" points inside the last batch (README, "Delivery guarantees"):
    tail must still show only events produced after it started, not the rest of that batch."""
    events_topic = topic_factory(1)

    def event(turn_id: int) -> bytes:
        turn = parse_turn(
            orjson.dumps({"conversation_id": "c", "turn_id": turn_id, "speaker": "A", "text": "hi"}), None
        )
        return emotion_event(
            turn,
            emotion="joy",
            confidence=0.9,
            scores={"joy": 0.9, "neutral": 0.1},
            model_version="v",
            context_turns=0,
            source=SourceRef("t", 0, turn_id),
            record_ts_ms=None,
            produced_at=time.time(),
            latency_ms=1.0,
        )

    async def publish(turn_ids: range) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=200)  # one batch
        await producer.start()
        try:
            futures = [await producer.send(events_topic, event(i), key=b"c") for i in turn_ids]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def scenario() -> tuple[int, str]:
        out = io.StringIO()
        cfg = TailConfig(bootstrap_servers=broker.bootstrap, topic=events_topic, input_topic=None, max_events=2)
        shown = asyncio.create_task(tail(cfg, console=Console(file=out, width=200)))
        await asyncio.sleep(4.0)  # old events are due now, if they were to be shown
        await publish(range(100, 102))
        return await asyncio.wait_for(shown, 60), out.getvalue()

    asyncio.run(publish(range(10)))
    time.sleep(1.5)  # older than tail's clock slack
    shown, text = asyncio.run(scenario())
    assert shown == 2
    assert [line.split()[0] for line in text.splitlines()] == ["c#100", "c#101"]


@pytest.mark.broker
def test_tail_missing_topic_is_a_clear_error(broker) -> None:
    proc = subprocess.run(
        [*CLI, "tail", "--bootstrap-servers", broker.bootstrap, "--topic", "no-such-topic-xyz"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "no-such-topic-xyz" in proc.stderr and "do not exist" in proc.stderr


# -------------------------------------------------------------------- the demo, end to end
@pytest.fixture(scope="module")
def test_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures_model import publish_test_model

    store = tmp_path_factory.mktemp("store")
    publish_test_model(store)
    return store


@pytest.mark.broker
@pytest.mark.slow
def test_demo_end_to_end(test_store: Path, tmp_path: Path) -> None:
    data_dir = _meld_dev_dir()
    convs = load_conversations(ReplayConfig(conversations=6, data_dir=data_dir))
    gold = Counter(u.label for c in convs for u in c.utterances)
    total = sum(gold.values())
    summary_path = tmp_path / "summary.json"
    proc = subprocess.run(
        [*CLI, "demo", "--conversations", "6", "--store", str(test_store), "--summary-json", str(summary_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(data_dir),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "weighted F1" in out and "macro F1" in out and "accuracy" in out
    assert re.search(r"turns sent\s*│\s*" + str(total) + r"\s*│", out)
    assert re.search(r"events\s*│\s*" + str(total) + r"\s*│", out)
    event_lines = [line for line in out.splitlines() if re.match(r"meld-dev-\d+#\d+ ", line)]
    assert len(event_lines) == total
    assert "worker stopped" in out and "broker stopped" in out and "/metrics" in out
    s = json.loads(summary_path.read_text())
    assert (s["turns_sent"], s["events"], s["dead_letters"], s["missing"], s["duplicate_events"]) == (
        total,
        total,
        0,
        0,
        0,
    )
    assert s["metrics"]["n"] == total
    assert 0.0 <= s["metrics"]["weighted_f1"] <= 1.0
    assert {k: v for k, v in s["gold_counts"].items() if v} == dict(gold)
    assert sum(s["predicted_counts"].values()) == total
    assert s["latency_ms_p50"] is not None and s["latency_ms_p50"] <= s["latency_ms_p95"]
    assert s["interrupted"] is False
    # The worker's model path, from its metrics: every turn went through the model once.
    mp = s["model"]
    assert mp["prompts"] == total and 1 <= mp["batches"] <= total
    assert mp["mean_batch"] == pytest.approx(total / mp["batches"])
    assert 0 < mp["real_tokens"] <= mp["padded_tokens"] and 0.0 <= mp["padding_share"] < 1.0
    assert 0.0 < mp["seconds"] <= s["wall_s"] and mp["prompts_per_s"] == pytest.approx(total / mp["seconds"])
    assert re.search(r"model batches \(mean prompts each\)\s*│\s*" + str(mp["batches"]) + r" \(", out)


@pytest.mark.broker
@pytest.mark.slow
def test_demo_ctrl_c_stops_cleanly(test_store: Path, tmp_path: Path) -> None:
    data_dir = _meld_dev_dir()
    summary_path = tmp_path / "summary.json"
    log_path = tmp_path / "demo.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                *CLI,
                "demo",
                "--conversations",
                "20",
                "--rate",
                "4",
                "--quiet",
                "--store",
                str(test_store),
                "--summary-json",
                str(summary_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(data_dir),
        )
        try:
            deadline = time.monotonic() + 180
            while "replaying" not in log_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert "replaying" in log_path.read_text(), log_path.read_text()
            time.sleep(2.0)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert "(interrupted)" in out and "worker stopped" in out and "broker stopped" in out
    s = json.loads(summary_path.read_text())
    assert s["interrupted"] is True
    assert 0 < s["turns_sent"] < 200
    # Every turn sent before Ctrl-C still got its event before the worker stopped.
    assert s["events"] + s["dead_letters"] == s["turns_sent"] and s["missing"] == 0
