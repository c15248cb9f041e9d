"""The streaming worker: consume turns, window them, batch prompts, run the model, emit events.

Data path (one module per stage)::

    aiokafka consumer ─▶ events.parse_turn ─▶ window (last k turns) ─▶ prompt (token ids cached
    per turn) ─▶ batcher (length-grouped, size/tokens/wait bounded) ─▶ model thread ─▶ emit ─▶
    producer ─▶ ack ─▶ offsets (commit only what is acknowledged)

Tasks on the event loop: fetch (intake), inference (batches into the one model thread),
commit, housekeeping (lag, TTL sweep) and the model-store watch (``reload.py``). Bad input
never stops the worker: it becomes a dead letter with a reason code and its original bytes.

Delivery is at-least-once with stable event ids (``conversation_id:turn_id``). Windows are
restored from the input log after a rebalance or restart: for each newly assigned partition
the records just before the committed offset (``restore_lookback_records``) are re-read
before fetching resumes, so the next event of a conversation sees the same context it would
have seen without the interruption (within that lookback and the window TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from erc_stream.batcher import MicroBatcher
from erc_stream.clients import start_clients
from erc_stream.config import WorkerConfig
from erc_stream.emit import Emitter, Outgoing, dead_letter_message
from erc_stream.errors import PromptTooLongError
from erc_stream.events import BadInput, ChatTurn, Reason, SourceRef, emotion_event, parse_turn
from erc_stream.health import HealthServer
from erc_stream.metrics import WorkerMetrics
from erc_stream.model import Predictions, Predictor, TurnInput, TurnPredictor
from erc_stream.offsets import OffsetTracker
from erc_stream.prompt import EncodedTurn, Prompt
from erc_stream.reload import ModelReloader, Served
from erc_stream.window import TurnCache, WindowStore, WindowTurn

__all__ = ["Worker"]

log = logging.getLogger("erc_stream.worker")

# aiokafka retries a lost broker every retry_backoff_ms (default 100 ms: ~80 error lines a
# second from fetcher, coordinator and metadata while a broker is down). 500 ms keeps
# recovery quick and the log readable.
_RETRY_BACKOFF_MS = 500
_HOUSEKEEPING_S = 2.0


class _Record(Protocol):
    """What the worker reads of an aiokafka ``ConsumerRecord`` (no deserializers: bytes)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...  # ms since the epoch


@dataclass(slots=True)
class _Pending:
    """A valid turn on its way through the pipeline."""

    tp: TopicPartition
    record: _Record  # as received: offset, key, timestamp, and the bytes a dead letter carries
    turn: ChatTurn
    context: list[WindowTurn]
    current: WindowTurn
    prompt: Prompt
    generation: int  # the model generation whose tokenizer built the prompt


@dataclass(frozen=True, slots=True)
class _Clients:
    """The worker's Kafka clients: the group consumer, the producer, and a group-less consumer
    that re-reads the input log to restore windows."""

    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    restorer: AIOKafkaConsumer

    async def stop(self) -> None:
        for client in (self.consumer, self.restorer, self.producer):
            try:
                await client.stop()
            except Exception as exc:  # closing must not mask the original error
                log.warning("closing %s: %r", type(client).__name__, exc)


class _AssignmentGate:
    """Intake waits here while a new assignment's windows are being restored."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._completed = 0  # assignments completed so far

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._completed += 1
        self._open.set()

    async def passed_once(self) -> bool:
        """Wait until open; True when exactly one assignment completed meanwhile."""
        seen = self._completed
        await self._open.wait()
        return self._completed == seen + 1


class _Rebalance(ConsumerRebalanceListener):
    """Closes the gate while partitions move; the worker's handlers do the work."""

    def __init__(
        self,
        gate: _AssignmentGate,
        on_revoked: Callable[[list[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[list[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._gate = gate
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # aiokafka hands out records of the new assignment before on_partitions_assigned has
        # finished; intake waits at this gate until the new partitions' windows are restored.
        self._gate.close()
        await self._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        try:
            await self._on_assigned(list(assigned))
        finally:
            self._gate.open()


def _cached(turn: WindowTurn) -> EncodedTurn:
    assert turn.cache is not None, "turns are encoded before their prompt is built"
    return turn.cache.encoded


def _vector(turn: WindowTurn) -> torch.Tensor | None:
    assert turn.cache is not None, "turns are encoded before their prompt is built"
    return turn.cache.vector


def _turn_window(p: _Pending, context_turns: int) -> list[WindowTurn]:
    """What a turn model reads for ``p``: its last ``context_turns`` context turns, then its own turn
    (windows may hold more turns after a reload from a model with a longer context)."""
    context = p.context[max(0, len(p.context) - context_turns) :] if context_turns else []
    return [*context, p.current]


class Worker:
    """One worker process. ``async with Worker(cfg):`` or ``start()``/``stop()``."""

    def __init__(self, cfg: WorkerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.metrics = WorkerMetrics(registry)
        self.stats = {"events": 0, "dead_letters": 0, "batches": 0}
        self._wake = asyncio.Event()  # the inference loop looks at the batcher again
        self._models = ModelReloader(cfg, self.metrics, on_loaded=self._wake.set)
        self._tracker = OffsetTracker()
        self._batcher: MicroBatcher[_Pending] = MicroBatcher(cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_wait_s)
        self._gate = _AssignmentGate()
        self._drained = asyncio.Event()  # in-flight turns fell to half of max_in_flight
        self._stop_requested = asyncio.Event()
        self._conv_partition: dict[str, tuple[str, int]] = {}
        self._paused = False
        # Live resources, made in start().
        self._windows: WindowStore
        self._emitter: Emitter
        self._kafka: _Clients | None = None
        self._http: HealthServer | None = None
        self._model_exec: ThreadPoolExecutor | None = None
        self._fetch_task: asyncio.Task[None] | None = None
        self._inference_task: asyncio.Task[None] | None = None
        self._other_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stopped = False
        self._started = False

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        """Model loaded, partitions assigned, not stopping (``/readyz``)."""
        assigned = self._kafka is not None and bool(self._kafka.consumer.assignment())
        return self._models.served is not None and assigned and not self._stopping

    @property
    def model_version(self) -> str | None:
        return self._models.served.version if self._models.served is not None else None

    async def start(self) -> None:
        """Load the model, connect to Kafka, serve /metrics, start the pipeline tasks."""
        cfg = self.cfg
        self._http = HealthServer(cfg.metrics_host, cfg.metrics_port, self.metrics.registry, ready=lambda: self.ready)
        await self._http.start()
        self._model_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erc-model")
        served = await self._models.start()
        self._windows = WindowStore(
            context_turns=served.predictor.builder.context_turns,
            ttl_s=cfg.window_ttl_s,
            max_conversations=cfg.max_conversations,
            on_evict=self._on_evict,
        )
        self._kafka = await self._connect()
        self._emitter = Emitter(self._kafka.producer, on_acked=self._acked)
        self._kafka.consumer.subscribe(
            [cfg.input_topic], listener=_Rebalance(self._gate, self._on_revoked, self._on_assigned)
        )
        self._fetch_task = self._spawn(self._fetch_loop(), "fetch")
        self._inference_task = self._spawn(self._inference_loop(), "inference")
        self._other_tasks = [
            self._spawn(self._commit_loop(), "commit"),
            self._spawn(self._housekeeping_loop(), "housekeeping"),
            self._spawn(self._models.watch(), "reload"),
        ]
        self._started = True
        log.info(
            "worker started: model %s, input %s, group %s, metrics on %s:%d",
            self.model_version,
            cfg.input_topic,
            cfg.group_id,
            cfg.metrics_host,
            self._http.port,
        )

    async def _connect(self) -> _Clients:
        cfg = self.cfg
        kw = {**cfg.kafka_kwargs(), "retry_backoff_ms": _RETRY_BACKOFF_MS}
        clients = _Clients(
            consumer=AIOKafkaConsumer(
                **kw,
                group_id=cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_interval_ms=300000,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            ),
            producer=AIOKafkaProducer(
                **kw, acks="all", enable_idempotence=cfg.enable_idempotence, linger_ms=5, request_timeout_ms=30000
            ),
            restorer=AIOKafkaConsumer(
                **{**kw, "client_id": cfg.client_id + "-restore"},
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            ),
        )
        await start_clients(
            [clients.producer, clients.restorer, clients.consumer], cfg.bootstrap_servers, cfg.security_protocol
        )
        return clients

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"erc-{name}")
        task.add_done_callback(self._task_died)
        return task

    def _task_died(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("pipeline task %s failed: %r; stopping the worker", task.get_name(), exc, exc_info=exc)
            self._stop_requested.set()

    def request_stop(self) -> None:
        self._stop_requested.set()

    def request_reload(self) -> None:
        self._models.request()

    async def wait_stopped(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        """Graceful stop; safe to call twice."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        self._stop_requested.set()
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        # Shutdown order: 1) stop fetching, 2) finish the in-flight batches, 3) wait for every
        # ack (flush the producer), 4) commit what is acknowledged, 5) leave the group.
        await _cancel([self._fetch_task])
        await self._finish_inference(deadline)
        if self._started and self._kafka is not None:
            await self._emitter.drain(deadline - time.monotonic())
            await self._flush(self._kafka.producer, deadline)
            await self._commit_now()
        await _cancel(self._other_tasks)
        if self._kafka is not None:
            await self._kafka.stop()
        if self._model_exec is not None:
            self._model_exec.shutdown(wait=True)
        if self._http is not None:
            await self._http.stop()
        log.info("worker stopped: %s", self.stats)

    async def _finish_inference(self, deadline: float) -> None:
        if self._inference_task is None:
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._inference_task), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("in-flight batches did not finish within shutdown_timeout_s; they will be re-read")
            await _cancel([self._inference_task])
        except Exception:  # noqa: BLE001 - already reported by _task_died
            pass

    @staticmethod
    async def _flush(producer: AIOKafkaProducer, deadline: float) -> None:
        try:
            await asyncio.wait_for(producer.flush(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, KafkaError) as exc:
            log.warning("producer flush failed: %r", exc)

    def _clients(self) -> _Clients:
        assert self._kafka is not None, "the worker is not started"
        return self._kafka

    # ------------------------------------------------------------------ intake
    async def _fetch_loop(self) -> None:
        consumer = self._clients().consumer
        cfg = self.cfg
        while not self._stopping:
            if await self._backpressure(consumer):
                continue
            # Never fetch past max_in_flight: it bounds the turns a crash can replay (duplicates).
            room = cfg.max_in_flight - self._tracker.in_flight()
            records = await consumer.getmany(timeout_ms=200, max_records=min(room, max(cfg.max_batch_size * 4, 64)))
            if records and not self._gate.is_open and not await self._gate.passed_once():
                # Fetched for an assignment that another rebalance replaced meanwhile: positions
                # were reset to the committed offsets, so these records come again. Drop them.
                continue
            assigned = consumer.assignment()
            for tp, recs in records.items():
                if tp in assigned:  # a partition revoked meanwhile belongs to another worker now
                    self._intake(tp, recs)

    async def _backpressure(self, consumer: AIOKafkaConsumer) -> bool:
        """Pause fetching while ``max_in_flight`` turns are in flight, until half of them are
        acknowledged; True while paused."""
        if self._tracker.in_flight() >= self.cfg.max_in_flight:
            if not self._paused:
                consumer.pause(*consumer.assignment())
                self._paused = True
                self.metrics.consumer_paused.set(1)
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
            return True
        if self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
            self.metrics.consumer_paused.set(0)
        return False

    def _intake(self, tp: TopicPartition, records: Sequence[_Record]) -> None:
        part = self._tracker.partition(tp)
        for rec in records:
            if not part.is_new(rec.offset):
                log.debug("skipping re-delivered offset %d of %s", rec.offset, tp)
                continue
            part.read(rec.offset)
            self.metrics.turns_consumed.labels(topic=tp.topic).inc()
            pending = self._accept(tp, rec, self._served())
            if pending is not None:
                self._batcher.add(pending, len(pending.prompt), key=pending.turn.conversation_id)
        self.metrics.in_flight_turns.set(self._tracker.in_flight())
        self._wake.set()

    def _accept(self, tp: TopicPartition, rec: _Record, served: Served) -> _Pending | None:
        """Parse one record, add its turn to its conversation's window, build its prompt; bad
        input is dead-lettered (None)."""
        try:
            turn = parse_turn(rec.value, rec.key, max_text_chars=self.cfg.max_text_chars)
            if self._windows.seen(turn.conversation_id, turn.turn_id):
                raise BadInput(
                    Reason.DUPLICATE_TURN, f"turn {turn.turn_id!r} of {turn.conversation_id!r} was already seen"
                )
        except BadInput as exc:
            self._dead_letter(tp, rec, exc.reason, exc.detail)
            return None
        context = self._windows.context(turn.conversation_id)
        current = WindowTurn(turn.turn_id, turn.speaker, turn.text)
        self._windows.push(turn.conversation_id, current)
        self._conv_partition[turn.conversation_id] = (tp.topic, tp.partition)
        prompt = self._prompt_or_dead_letter(tp, rec, context, current, served)
        if prompt is None:
            return None
        return _Pending(tp, rec, turn, context, current, prompt, served.generation)

    def _served(self) -> Served:
        served = self._models.served
        assert served is not None, "the worker is not started"
        return served

    def _refresh(self, p: _Pending, served: Served) -> bool:
        """Rebuild a prompt built by an earlier model's tokenizer; False when now too long (dead-lettered)."""
        if p.generation == served.generation:
            return True
        prompt = self._prompt_or_dead_letter(p.tp, p.record, p.context, p.current, served)
        if prompt is None:
            return False
        p.prompt, p.generation = prompt, served.generation
        return True

    def _prompt_or_dead_letter(
        self, tp: TopicPartition, rec: _Record, context: list[WindowTurn], current: WindowTurn, served: Served
    ) -> Prompt | None:
        try:
            return self._build_prompt(context, current, served)
        except PromptTooLongError as exc:
            self._dead_letter(tp, rec, Reason.PROMPT_TOO_LONG, str(exc))
            return None

    @staticmethod
    def _build_prompt(context: list[WindowTurn], current: WindowTurn, served: Served) -> Prompt:
        """Turns are tokenized once per model generation and cached in the window. A turn model's
        prompt is the current turn alone; its context is read from cached vectors in the batch."""
        builder = served.predictor.builder
        stale = [t for t in (*context, current) if t.cache is None or t.cache.generation != served.generation]
        if stale:
            encoded = builder.encode_turns([t.speaker for t in stale], [t.text for t in stale])
            for t, e in zip(stale, encoded, strict=True):
                t.cache = TurnCache(served.generation, e)
        if isinstance(served.predictor, TurnPredictor):
            return builder.build_turn(_cached(current))
        return builder.build([_cached(t) for t in context], _cached(current))

    # ------------------------------------------------------------------ inference
    async def _inference_loop(self) -> None:
        while True:
            served = self._install_next_model()
            batch = await self._next_batch()
            if batch is None:
                return
            runnable = [p for p in batch if self._refresh(p, served)]
            if runnable:
                await self._run_batch(runnable, served)

    def _install_next_model(self) -> Served:
        """Between batches: serve a newly loaded model; windows grow to its context length."""
        served = self._models.swap()
        if served is not None:
            self._windows.resize(max(self._windows.context_turns, served.predictor.builder.context_turns))
        return self._served()

    async def _next_batch(self) -> list[_Pending] | None:
        """The next batch when one is due ([] when woken before), None once stopping with nothing left."""
        batcher = self._batcher
        if batcher.ready():
            return batcher.take()
        if self._stopping and len(batcher) == 0:
            return None
        self._wake.clear()
        if self._stopping:
            timeout_s: float | None = 0.0  # no new input will come: flush what waits now
        else:
            timeout_s = None if len(batcher) == 0 else max(0.0, batcher.wait_left_s())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        if batcher.ready() or (self._stopping and len(batcher)):
            return batcher.take()
        return []

    async def _run_batch(self, items: list[_Pending], served: Served) -> None:
        try:
            preds = await self._score(items, served)
        except Exception as exc:  # a model failure must not lose the turns
            log.exception("inference failed for a batch of %d", len(items))
            for p in items:
                self._dead_letter(p.tp, p.record, Reason.INTERNAL, f"inference failed: {exc!r}")
            return
        self._observe_batch(len(items), preds)
        now = time.time()
        self._emitter.send([self._event(p, i, preds, served.predictor, now) for i, p in enumerate(items)])

    async def _score(self, items: list[_Pending], served: Served) -> Predictions:
        """The batch's predictions, in the model thread, with the encoder tokens they cost (a turn
        model encodes only the turns without a vector, so its tokens are theirs)."""
        loop = asyncio.get_running_loop()
        predictor = served.predictor
        if isinstance(predictor, Predictor):
            run = functools.partial(predictor.predict, [p.prompt for p in items], max_forward=served.max_forward)
            return await loop.run_in_executor(self._model_exec, run)
        # Turn model: only turns without a vector of this generation go through the encoder (new
        # turns; after a restore or a reload, the window's turns, recomputed from their text), then
        # one context pass per turn. The new vectors are cached in the windows, stamped.
        k = predictor.builder.context_turns
        windows = [_turn_window(p, k) for p in items]
        inputs = [[TurnInput(id(t), t.speaker, _cached(t), _vector(t)) for t in w] for w in windows]
        run_turns = functools.partial(predictor.predict_turns, inputs, max_forward=served.max_forward)
        batch = await loop.run_in_executor(self._model_exec, run_turns)
        for t in {id(t): t for w in windows for t in w}.values():
            vector, cache = batch.vectors.get(id(t)), t.cache
            if vector is not None and cache is not None and cache.generation == served.generation:
                t.cache = TurnCache(cache.generation, cache.encoded, vector)
        return batch.predictions

    def _observe_batch(self, size: int, preds: Predictions) -> None:
        m = self.metrics
        m.batch_size.observe(size)
        m.batch_tokens.observe(preds.padded_tokens)
        m.tokens_processed.inc(preds.tokens)
        m.inference_seconds.observe(preds.seconds)
        self.stats["batches"] += 1

    def _event(
        self, p: _Pending, row: int, preds: Predictions, predictor: Predictor | TurnPredictor, now: float
    ) -> Outgoing:
        """The emotion event of ``p`` from row ``row`` of the batch's predictions."""
        labels = predictor.labels
        label_id = int(preds.label_ids[row])
        rec = p.record
        value = emotion_event(
            p.turn,
            emotion=labels[label_id],
            confidence=float(preds.confidence[row, label_id]),
            scores={label: round(float(preds.scores[row, j]), 6) for j, label in enumerate(labels)},
            model_version=predictor.version,
            context_turns=len(_turn_window(p, predictor.builder.context_turns)) - 1
            if isinstance(predictor, TurnPredictor)
            else p.prompt.context_used,
            source=SourceRef(p.tp.topic, p.tp.partition, rec.offset),
            record_ts_ms=rec.timestamp,
            produced_at=now,
            latency_ms=max(0.0, now * 1000.0 - rec.timestamp) if rec.timestamp else 0.0,
        )
        key = rec.key or p.turn.conversation_id.encode()
        return Outgoing(
            self.cfg.output_topic, key, value, p.tp, rec.offset, emotion=labels[label_id], record_ts_ms=rec.timestamp
        )

    # ------------------------------------------------------------------ output
    def _dead_letter(self, tp: TopicPartition, rec: _Record, reason: Reason, detail: str) -> None:
        """Send an input record, its original bytes, to the dead-letter topic."""
        self._emitter.send(
            [dead_letter_message(self.cfg.dlq_topic, tp, rec.offset, rec.key, rec.value, reason, detail)]
        )

    def _acked(self, msg: Outgoing) -> None:
        """The broker has ``msg``: its input offset is done."""
        self._tracker.done(msg.source, msg.offset)
        if msg.reason is None:
            self.metrics.events_emitted.labels(emotion=msg.emotion).inc()
            self.stats["events"] += 1
            if msg.record_ts_ms:
                self.metrics.end_to_end_latency_seconds.observe(max(0.0, time.time() - msg.record_ts_ms / 1000.0))
        else:
            self.metrics.dead_letters.labels(reason=msg.reason.value).inc()
            self.stats["dead_letters"] += 1
        in_flight = self._tracker.in_flight()
        self.metrics.in_flight_turns.set(in_flight)
        if in_flight <= self.cfg.max_in_flight // 2:
            self._drained.set()

    # ------------------------------------------------------------------ offsets
    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.commit_interval_ms / 1000.0)
            await self._commit_now()

    async def _commit_now(self, tps: Collection[TopicPartition] | None = None) -> None:
        consumer = self._clients().consumer
        offsets = self._tracker.committable(consumer.assignment() if tps is None else tps)
        if not offsets:
            return
        try:
            await consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in offsets.items()})
        except KafkaError as exc:
            self.metrics.commits.labels(result="failed").inc()
            log.warning("offset commit failed (%r); will retry", exc)
            return
        for key, off in offsets.items():
            self._tracker.mark_committed(key, off)
        self.metrics.commits.labels(result="ok").inc()

    # ------------------------------------------------------------------ rebalance
    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before partitions go: finish their in-flight turns, commit, forget their windows."""
        if not revoked:
            return
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        self._wake.set()
        while self._tracker.in_flight(revoked) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._commit_now(revoked)
        gone = {(tp.topic, tp.partition) for tp in revoked}
        for cid in [c for c, key in self._conv_partition.items() if key in gone]:
            self._windows.discard(cid)
            del self._conv_partition[cid]
        self._tracker.forget(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.metrics.partitions_assigned.set(len(self._clients().consumer.assignment()))
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """New partitions: rebuild their conversations' windows from the input log first."""
        consumer = self._clients().consumer
        self.metrics.partitions_assigned.set(len(consumer.assignment()))
        if not assigned:
            return
        t0 = time.perf_counter()
        restored = 0
        for tp in assigned:
            committed = await consumer.committed(tp)
            if committed:
                restored += await self._restore_partition(tp, committed)
        log.info(
            "partitions assigned: %s (restored %d turns into windows in %.2f s)",
            sorted(tp.partition for tp in assigned),
            restored,
            time.perf_counter() - t0,
        )

    async def _restore_partition(self, tp: TopicPartition, end: int) -> int:
        """Push the valid turns of the ``restore_lookback_records`` records before ``end`` into windows."""
        if self.cfg.restore_lookback_records == 0:
            return 0
        restorer = self._clients().restorer
        restorer.assign([tp])
        begin = (await restorer.beginning_offsets([tp]))[tp]
        start = max(begin, end - self.cfg.restore_lookback_records)
        if start >= end:
            return 0
        restorer.seek(tp, start)
        count = 0
        while True:
            recs = (await restorer.getmany(tp, timeout_ms=1000, max_records=1000)).get(tp, [])
            for rec in recs:
                if rec.offset >= end:
                    return count
                count += self._restore_record(tp, rec)
            if not recs or recs[-1].offset >= end - 1:
                return count

    def _restore_record(self, tp: TopicPartition, rec: _Record) -> int:
        try:
            turn = parse_turn(rec.value, rec.key, max_text_chars=self.cfg.max_text_chars)
        except BadInput:
            return 0
        if self._windows.seen(turn.conversation_id, turn.turn_id):
            return 0
        self._windows.push(turn.conversation_id, WindowTurn(turn.turn_id, turn.speaker, turn.text))
        self._conv_partition[turn.conversation_id] = (tp.topic, tp.partition)
        return 1

    # ------------------------------------------------------------------ housekeeping
    def _on_evict(self, conversation_id: str, cause: str) -> None:
        self.metrics.window_evictions.labels(cause=cause).inc()
        self._conv_partition.pop(conversation_id, None)

    async def _housekeeping_loop(self) -> None:
        consumer = self._clients().consumer
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            self._windows.sweep()
            self.metrics.active_conversations.set(len(self._windows))
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is None:
                    continue
                try:
                    pos = await consumer.position(tp)
                except Exception:  # noqa: BLE001 - position is unknown mid-rebalance
                    continue
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, hw - pos))


async def _cancel(tasks: Sequence[asyncio.Task[None] | None]) -> None:
    """Cancel tasks and wait until they are done."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    await asyncio.gather(*live, return_exceptions=True)
