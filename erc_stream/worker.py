"""The streaming worker: consume turns, window them, batch prompts, run the model, emit events.

Data path (one module per stage)::

    aiokafka consumer ─▶ events.parse_turn ─▶ window (last k turns) ─▶ prompt (token ids cached
    per turn) ─▶ batcher (length-grouped, size/tokens/wait bounded) ─▶ model thread ─▶ events ─▶
    producer ─▶ ack ─▶ offsets (commit only what is acknowledged)

Tasks on the event loop: fetch (intake), inference (batches into the one model thread),
commit, housekeeping (lag, TTL sweep), model-store watch. Bad input never stops the worker:
it becomes a dead letter with a reason code.

Delivery is at-least-once with stable event ids (``conversation_id:turn_id``). Windows are
restored from the input log after a rebalance or restart: for each newly assigned partition
the records just before the committed offset (``restore_lookback_records``) are re-read
before fetching resumes, so the next event of a conversation sees the same context it would
have seen without the interruption (within that lookback and the window TTL).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry

from erc_stream.artifact import read_current, version_path
from erc_stream.batcher import MicroBatcher
from erc_stream.config import WorkerConfig
from erc_stream.errors import ArtifactError, BrokerError, PromptTooLongError
from erc_stream.events import BadInput, ChatTurn, Reason, SourceRef, dead_letter, emotion_event, parse_turn
from erc_stream.health import HealthServer
from erc_stream.metrics import WorkerMetrics
from erc_stream.model import Predictor
from erc_stream.offsets import OffsetTracker
from erc_stream.prompt import Prompt
from erc_stream.window import WindowStore, WindowTurn

__all__ = ["Worker"]

log = logging.getLogger("erc_stream.worker")

# aiokafka retries a lost broker every retry_backoff_ms (default 100 ms: ~80 error lines a
# second from fetcher, coordinator and metadata while a broker is down). 500 ms keeps
# recovery quick and the log readable.
_RETRY_BACKOFF_MS = 500


@dataclass(slots=True)
class _Pending:
    """A valid turn on its way through the pipeline."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    turn: ChatTurn
    context: list[WindowTurn]
    current: WindowTurn
    record_ts_ms: int | None
    prompt: Prompt | None = None
    gen: int = -1  # model generation whose tokenizer built the prompt


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked) -> None:
        # aiokafka hands out records of the new assignment before on_partitions_assigned has
        # finished; intake waits at this gate until the new partitions' windows are restored.
        self._worker._assignment_ready.clear()
        await self._worker._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        try:
            await self._worker._on_assigned(list(assigned))
        finally:
            self._worker._assignments += 1
            self._worker._assignment_ready.set()


class Worker:
    """One worker process. ``async with Worker(cfg):`` or ``start()``/``stop()``."""

    def __init__(self, cfg: WorkerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.metrics = WorkerMetrics(registry)
        self._predictor: Predictor | None = None
        self._next_predictor: Predictor | None = None
        self._gen = 0
        self._failed_versions: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._http: HealthServer | None = None
        self._model_exec: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task] = []
        self._deliveries: set[asyncio.Task] = set()
        self._tracker = OffsetTracker()
        self._batcher: MicroBatcher[_Pending] | None = None
        self._windows: WindowStore | None = None
        self._conv_partition: dict[str, tuple[str, int]] = {}
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._reload_now = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._assignment_ready = asyncio.Event()  # set once an assignment's windows are restored
        self._assignments = 0  # completed assignments (rebalances)
        self._stopping = False
        self._stopped = False
        self._started = False
        self.stats = {"events": 0, "dead_letters": 0, "batches": 0}

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return (
            self._predictor is not None and bool(self._consumer and self._consumer.assignment()) and not self._stopping
        )

    @property
    def model_version(self) -> str | None:
        return self._predictor.version if self._predictor else None

    async def start(self) -> None:
        """Load the model, connect to Kafka, serve /metrics, start the pipeline tasks."""
        cfg = self.cfg
        self._http = HealthServer(cfg.metrics_host, cfg.metrics_port, self.metrics.registry, ready=lambda: self.ready)
        await self._http.start()
        self._model_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erc-model")
        version = read_current(cfg.model_store)
        if version is None:
            raise ArtifactError(
                f"model store {cfg.model_store} has no CURRENT version; train and publish one with "
                f"`erc-train fit --store {cfg.model_store}` (or `erc-train fit --quick` for a small one)"
            )
        predictor = await self._load(version)
        self._install(predictor)
        self.metrics.model_reloads.labels(result="ok").inc()
        self._windows = WindowStore(
            context_turns=predictor.builder.context_turns,
            ttl_s=cfg.window_ttl_s,
            max_conversations=cfg.max_conversations,
            on_evict=self._on_evict,
        )
        self._batcher = MicroBatcher(cfg.max_batch_size, cfg.max_batch_tokens, cfg.max_wait_s)
        kw = {**cfg.kafka_kwargs(), "retry_backoff_ms": _RETRY_BACKOFF_MS}
        self._producer = AIOKafkaProducer(
            **kw,
            acks="all",
            enable_idempotence=cfg.enable_idempotence,
            linger_ms=5,
            request_timeout_ms=30000,
        )
        self._consumer = AIOKafkaConsumer(
            **kw,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=300000,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        )
        self._restorer = AIOKafkaConsumer(
            **{**kw, "client_id": cfg.client_id + "-restore"},
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
        )
        try:
            await self._producer.start()
            await self._restorer.start()
            await self._consumer.start()
        except KafkaError as exc:
            await self._close_clients()
            raise BrokerError(
                f"cannot connect to Kafka at {cfg.bootstrap_servers} ({cfg.security_protocol}): {exc!r}; "
                "check bootstrap servers, TLS files and SASL credentials"
            ) from exc
        self._consumer.subscribe([cfg.input_topic], listener=_Rebalance(self))
        loop = asyncio.get_running_loop()
        for coro, name in (
            (self._fetch_loop(), "fetch"),
            (self._inference_loop(), "inference"),
            (self._commit_loop(), "commit"),
            (self._housekeeping_loop(), "housekeeping"),
            (self._reload_loop(), "reload"),
        ):
            task = loop.create_task(coro, name=f"erc-{name}")
            task.add_done_callback(self._task_died)
            self._tasks.append(task)
        self._started = True
        log.info(
            "worker started: model %s, input %s, group %s, metrics on %s:%d",
            self.model_version,
            cfg.input_topic,
            cfg.group_id,
            cfg.metrics_host,
            self._http.port,
        )

    def _task_died(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("pipeline task %s failed: %r; stopping the worker", task.get_name(), exc, exc_info=exc)
            self._stop_requested.set()

    def request_stop(self) -> None:
        self._stop_requested.set()

    def request_reload(self) -> None:
        self._reload_now.set()

    async def wait_stopped(self) -> None:
        await self._stop_requested.wait()

    async def stop(self) -> None:
        """Graceful stop; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        self._stop_requested.set()
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        # Shutdown order: 1) stop fetching, 2) finish the in-flight batches, 3) flush the
        # producer (wait for every ack), 4) commit what is acknowledged, 5) leave the group.
        fetch = [t for t in self._tasks if t.get_name() == "erc-fetch"]
        for t in fetch:
            t.cancel()
        await asyncio.gather(*fetch, return_exceptions=True)
        self._wake.set()
        inference = [t for t in self._tasks if t.get_name() == "erc-inference"]
        if inference:
            try:
                await asyncio.wait_for(
                    asyncio.gather(*inference, return_exceptions=True), max(0.1, deadline - time.monotonic())
                )
            except asyncio.TimeoutError:
                log.warning("in-flight batches did not finish within shutdown_timeout_s; they will be re-read")
        if self._deliveries:
            await asyncio.wait(self._deliveries, timeout=max(0.1, deadline - time.monotonic()))
            for t in list(self._deliveries):  # unacknowledged: not committed, so re-read on restart
                t.cancel()
        if self._producer is not None and self._started:
            try:
                await asyncio.wait_for(self._producer.flush(), max(0.1, deadline - time.monotonic()))
            except (asyncio.TimeoutError, KafkaError) as exc:
                log.warning("producer flush failed: %r", exc)
        if self._consumer is not None and self._started:
            await self._commit_now()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_clients()
        if self._model_exec is not None:
            self._model_exec.shutdown(wait=True)
        if self._http is not None:
            await self._http.stop()
        log.info("worker stopped: %s", self.stats)

    async def _close_clients(self) -> None:
        for client in (self._consumer, self._restorer, self._producer):
            if client is None:
                continue
            try:
                await client.stop()
            except Exception as exc:  # closing must not mask the original error
                log.warning("closing %s: %r", type(client).__name__, exc)

    # ------------------------------------------------------------------ model
    async def _load(self, version: str) -> Predictor:
        cfg = self.cfg
        path = version_path(cfg.model_store, version)

        def load() -> Predictor:
            p = Predictor.load(path, device=cfg.device, dtype=cfg.dtype)
            if cfg.context_turns is not None:
                p = p.with_context_turns(cfg.context_turns)
            p.warm_up(min(8, cfg.max_batch_size))
            return p

        # Loading and warming happen off the event loop, outside the model thread, so the
        # current model keeps serving while the next one loads.
        return await asyncio.to_thread(load)

    def _install(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self._gen += 1
        self.metrics.set_model(predictor.version, predictor.manifest.get("dataset", ""))
        if self._windows is not None and predictor.builder.context_turns > self._windows.context_turns:
            self._windows.context_turns = predictor.builder.context_turns

    async def _reload_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._reload_now.wait(), self.cfg.reload_poll_s)
                forced = True
            except asyncio.TimeoutError:
                forced = False
            self._reload_now.clear()
            try:
                version = read_current(self.cfg.model_store)
            except (ArtifactError, OSError) as exc:
                log.warning("cannot read the model store's CURRENT: %s", exc)
                continue
            current = self._next_predictor.version if self._next_predictor else self.model_version
            if version is None or version == current:
                if forced:
                    log.info("reload requested: already serving %s", current)
                continue
            if version in self._failed_versions and not forced:
                continue
            await self._try_reload(version)

    async def _try_reload(self, version: str) -> None:
        t0 = time.perf_counter()
        try:
            predictor = await self._load(version)
        except Exception as exc:  # noqa: BLE001 - any failure to load (e.g. safetensors' own SafetensorError
            # on a truncated file) must leave the served model in place, not end the reload task
            self._failed_versions.add(version)
            self.metrics.model_reloads.labels(result="failed").inc()
            log.error("model %s failed to load, still serving %s: %s", version, self.model_version, exc)
            return
        if self._predictor is not None and predictor.labels != self._predictor.labels:
            self._failed_versions.add(version)
            self.metrics.model_reloads.labels(result="incompatible").inc()
            log.error(
                "model %s predicts %s, the served model %s; still serving %s",
                version,
                list(predictor.labels),
                list(self._predictor.labels),
                self.model_version,
            )
            return
        self._next_predictor = predictor  # swapped in by the inference loop between batches
        self._wake.set()
        log.info(
            "model %s loaded and warmed in %.1f s; switching after the current batch", version, time.perf_counter() - t0
        )

    # ------------------------------------------------------------------ intake
    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        cfg = self.cfg
        paused = False
        while not self._stopping:
            if self._tracker.in_flight() >= cfg.max_in_flight:
                # Backpressure: stop fetching until the pipeline drains to half the bound.
                if not paused:
                    consumer.pause(*consumer.assignment())
                    paused = True
                    self.metrics.consumer_paused.set(1)
                self._drained.clear()
                try:
                    await asyncio.wait_for(self._drained.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            if paused:
                consumer.resume(*consumer.assignment())
                paused = False
                self.metrics.consumer_paused.set(0)
            # Never fetch past max_in_flight: it bounds the turns a crash can replay (duplicates).
            room = cfg.max_in_flight - self._tracker.in_flight()
            records = await consumer.getmany(timeout_ms=200, max_records=min(room, max(cfg.max_batch_size * 4, 64)))
            if records and not self._assignment_ready.is_set():
                # Records of an assignment whose windows are still being restored: wait for it.
                # If yet another rebalance completes meanwhile, positions were reset to the
                # committed offsets and these records will be fetched again: drop them.
                seen = self._assignments
                await self._assignment_ready.wait()
                if self._assignments != seen + 1:
                    continue
            assigned = consumer.assignment()
            for tp, recs in records.items():
                if tp in assigned:  # a partition revoked meanwhile belongs to another worker now
                    self._intake(tp, recs)

    def _intake(self, tp: TopicPartition, records) -> None:
        cfg = self.cfg
        windows = self._windows
        metrics = self.metrics
        valid: list[_Pending] = []
        part = self._tracker.partition(tp)
        for rec in records:
            if not part.is_new(rec.offset):
                log.debug("skipping re-delivered offset %d of %s", rec.offset, tp)
                continue
            part.read(rec.offset)
            metrics.turns_consumed.labels(topic=tp.topic).inc()
            try:
                turn = parse_turn(rec.value, rec.key, max_text_chars=cfg.max_text_chars)
                if windows.seen(turn.conversation_id, turn.turn_id):
                    raise BadInput(
                        Reason.DUPLICATE_TURN, f"turn {turn.turn_id!r} of {turn.conversation_id!r} was already seen"
                    )
            except BadInput as exc:
                self._send_dead_letter(tp, rec.offset, rec.key, rec.value, exc.reason, exc.detail)
                continue
            context = windows.context(turn.conversation_id)
            current = WindowTurn(turn.turn_id, turn.speaker, turn.text)
            windows.push(turn.conversation_id, current)
            self._conv_partition[turn.conversation_id] = (tp.topic, tp.partition)
            valid.append(_Pending(tp, rec.offset, rec.key, turn, context, current, rec.timestamp))
        if not valid:
            return
        predictor = self._predictor
        for p in valid:
            try:
                self._build_prompt(p, predictor, self._gen)
            except PromptTooLongError as exc:
                self._send_dead_letter(p.tp, p.offset, p.key, None, Reason.PROMPT_TOO_LONG, str(exc), turn=p.turn)
                continue
            self._batcher.add(p, len(p.prompt), key=p.turn.conversation_id)
        metrics.in_flight_turns.set(self._tracker.in_flight())
        self._wake.set()

    def _build_prompt(self, p: _Pending, predictor: Predictor, gen: int) -> None:
        """Prompt for ``p``; turns are tokenized once per model generation and cached in the window."""
        builder = predictor.builder
        stale = [t for t in (*p.context, p.current) if not (isinstance(t.payload, tuple) and t.payload[0] == gen)]
        if stale:
            encoded = builder.encode_turns([t.speaker for t in stale], [t.text for t in stale])
            for t, e in zip(stale, encoded):
                t.payload = (gen, e)
        p.prompt = builder.build([t.payload[1] for t in p.context], p.current.payload[1])
        p.gen = gen

    # ------------------------------------------------------------------ inference
    async def _inference_loop(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = self._batcher
        while True:
            if self._next_predictor is not None:
                self._install(self._next_predictor)
                self._next_predictor = None
                self.metrics.model_reloads.labels(result="ok").inc()
                log.info("now serving model %s", self.model_version)
            if not batcher.ready():
                if self._stopping and len(batcher) == 0:
                    return
                self._wake.clear()
                timeout = None if len(batcher) == 0 else max(0.0, batcher.wait_left_s())
                if self._stopping:
                    timeout = 0.0  # no new input will come: flush what waits now
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                if not batcher.ready() and not (self._stopping and len(batcher)):
                    continue
            batch = batcher.take()
            if not batch:
                continue
            predictor, gen = self._predictor, self._gen
            runnable: list[_Pending] = []
            for p in batch:
                if p.gen != gen:  # built by the previous model's tokenizer
                    try:
                        self._build_prompt(p, predictor, gen)
                    except PromptTooLongError as exc:
                        self._send_dead_letter(
                            p.tp, p.offset, p.key, None, Reason.PROMPT_TOO_LONG, str(exc), turn=p.turn
                        )
                        continue
                runnable.append(p)
            if not runnable:
                continue
            prompts = [p.prompt for p in runnable]
            try:
                preds = await loop.run_in_executor(self._model_exec, predictor.predict, prompts)
            except Exception as exc:  # a model failure must not lose the turns
                log.exception("inference failed for a batch of %d", len(runnable))
                for p in runnable:
                    self._send_dead_letter(
                        p.tp, p.offset, p.key, None, Reason.INTERNAL, f"inference failed: {exc!r}", turn=p.turn
                    )
                continue
            self._emit(runnable, preds, predictor)

    def _emit(self, items: list[_Pending], preds, predictor: Predictor) -> None:
        m = self.metrics
        labels = predictor.labels
        m.batch_size.observe(len(items))
        longest = max(len(p.prompt) for p in items)
        m.batch_tokens.observe(longest * len(items))
        m.tokens_processed.inc(sum(len(p.prompt) for p in items))
        m.inference_seconds.observe(preds.seconds)
        self.stats["batches"] += 1
        now = time.time()
        msgs = []
        for i, p in enumerate(items):
            lid = int(preds.label_ids[i])
            scores = {labels[j]: round(float(preds.scores[i, j]), 6) for j in range(len(labels))}
            latency_ms = (now * 1000.0 - p.record_ts_ms) if p.record_ts_ms else 0.0
            value = emotion_event(
                p.turn,
                emotion=labels[lid],
                confidence=float(preds.confidence[i, lid]),
                scores=scores,
                model_version=predictor.version,
                context_turns=p.prompt.context_used,
                source=SourceRef(p.tp.topic, p.tp.partition, p.offset),
                record_ts_ms=p.record_ts_ms,
                produced_at=now,
                latency_ms=max(0.0, latency_ms),
            )
            msgs.append(
                (
                    self.cfg.output_topic,
                    p.key or p.turn.conversation_id.encode(),
                    value,
                    p.tp,
                    p.offset,
                    p.record_ts_ms,
                    labels[lid],
                )
            )
        self._deliver(msgs)

    # ------------------------------------------------------------------ output
    def _send_dead_letter(
        self, tp, offset: int, key, value, reason: Reason, detail: str, turn: ChatTurn | None = None
    ) -> None:
        if value is None and turn is not None:
            value = orjson.dumps(
                {
                    "conversation_id": turn.conversation_id,
                    "turn_id": turn.turn_id,
                    "speaker": turn.speaker,
                    "text": turn.text,
                    "ts": turn.ts,
                    "metadata": turn.metadata,
                }
            )
        body = dead_letter(
            value,
            key,
            reason=reason,
            detail=detail,
            source=SourceRef(tp.topic, tp.partition, offset),
            failed_at=time.time(),
        )
        self._deliver([(self.cfg.dlq_topic, key, body, tp, offset, None, reason)])

    def _deliver(self, msgs) -> None:
        task = asyncio.get_running_loop().create_task(self._send_all(msgs))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _send_all(self, msgs) -> None:
        """Send in order; mark each offset done on ack; retry failures with backoff."""
        producer = self._producer
        futures = []
        for topic, key, value, *_ in msgs:
            try:
                futures.append(await producer.send(topic, value=value, key=key))
            except KafkaError as exc:
                futures.append(exc)
        for msg, fut in zip(msgs, futures):
            ok = False
            if not isinstance(fut, Exception):
                try:
                    await fut
                    ok = True
                except KafkaError as exc:
                    log.warning("send to %s failed (%r); retrying", msg[0], exc)
            if not ok:
                ok = await self._send_retrying(msg)
            if ok:
                self._acked(msg)

    async def _send_retrying(self, msg) -> bool:
        topic, key, value = msg[0], msg[1], msg[2]
        delay_s = 0.2
        while True:
            try:
                await (await self._producer.send(topic, value=value, key=key))
                return True
            except KafkaError as exc:
                if self._stopped and self._producer is None:
                    return False
                log.warning("send to %s failed (%r); retry in %.1f s", topic, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    def _acked(self, msg) -> None:
        topic, _, _, tp, offset, record_ts_ms, what = msg
        self._tracker.done(tp, offset)
        if topic == self.cfg.output_topic:
            self.metrics.events_emitted.labels(emotion=what).inc()
            self.stats["events"] += 1
            if record_ts_ms:
                self.metrics.end_to_end_latency_seconds.observe(max(0.0, time.time() - record_ts_ms / 1000.0))
        else:
            self.metrics.dead_letters.labels(reason=Reason(what).value).inc()
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

    async def _commit_now(self, tps=None) -> None:
        consumer = self._consumer
        assigned = consumer.assignment() if tps is None else tps
        offsets = self._tracker.committable(assigned)
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
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self.metrics.partitions_assigned.set(len(self._consumer.assignment()) if self._consumer else 0)
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """New partitions: rebuild their conversations' windows from the input log first."""
        self.metrics.partitions_assigned.set(len(self._consumer.assignment()))
        if not assigned:
            return
        t0 = time.perf_counter()
        restored = 0
        for tp in assigned:
            committed = await self._consumer.committed(tp)
            if not committed:
                continue
            restored += await self._restore_partition(tp, committed)
        log.info(
            "partitions assigned: %s (restored %d turns into windows in %.2f s)",
            sorted(tp.partition for tp in assigned),
            restored,
            time.perf_counter() - t0,
        )

    async def _restore_partition(self, tp: TopicPartition, end: int) -> int:
        lookback = self.cfg.restore_lookback_records
        if lookback == 0:
            return 0
        restorer = self._restorer
        restorer.assign([tp])
        begin = (await restorer.beginning_offsets([tp]))[tp]
        start = max(begin, end - lookback)
        if start >= end:
            return 0
        restorer.seek(tp, start)
        count = 0
        while True:
            batch = await restorer.getmany(tp, timeout_ms=1000, max_records=1000)
            recs = batch.get(tp, [])
            if not recs:
                break
            done = False
            for rec in recs:
                if rec.offset >= end:
                    done = True
                    break
                try:
                    turn = parse_turn(rec.value, rec.key, max_text_chars=self.cfg.max_text_chars)
                except BadInput:
                    continue
                if self._windows.seen(turn.conversation_id, turn.turn_id):
                    continue
                self._windows.push(turn.conversation_id, WindowTurn(turn.turn_id, turn.speaker, turn.text))
                self._conv_partition[turn.conversation_id] = (tp.topic, tp.partition)
                count += 1
            if done or recs[-1].offset >= end - 1:
                break
        return count

    # ------------------------------------------------------------------ housekeeping
    def _on_evict(self, conversation_id: str, cause: str) -> None:
        self.metrics.window_evictions.labels(cause=cause).inc()
        self._conv_partition.pop(conversation_id, None)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            self._windows.sweep()
            self.metrics.active_conversations.set(len(self._windows))
            consumer = self._consumer
            for tp in consumer.assignment():
                hw = consumer.highwater(tp)
                if hw is None:
                    continue
                try:
                    pos = await consumer.position(tp)
                except Exception:  # position is unknown mid-rebalance
                    continue
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, hw - pos))
