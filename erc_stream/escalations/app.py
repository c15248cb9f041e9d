"""`erc-stream escalations`: the faust-streaming app over the emotions topic.

Data path: ``chat.emotions`` (key = conversation_id) → parse (bad records → DLQ with a reason)
→ the conversation's state from the faust table ``conversations`` → :class:`Escalator` step →
state written back (a changelog record) → escalations to ``chat.escalations``
(key = conversation_id). It consumes only the emotions topic: it is off the inference path.

Delivery and state, as faust-streaming 0.15 does them (checked in tests/integration):

- The table is in memory, backed by the compacted topic ``<app_id>-conversations-changelog``
  with as many partitions as the emotions topic; a conversation's state lives in the changelog
  partition of the emotions partition that carries it. On assignment faust restores the table
  from the changelog before the agent sees an event.
- At least once: faust commits an input offset only after the producer has flushed, so the
  changelog records and escalations caused by the events up to it are acknowledged. Events
  after the last commit are delivered again after a crash: the state drops them by turn id,
  and the outbox in the state re-sends what they emitted (same ``escalation_id``).
- On the local Tansu broker run with ``producer_max_batch_bytes=1``: the broker reports the
  end offset of a partition as the first offset of its last batch + 1, so after a multi-record
  batch faust's restore stops short and the last state updates are lost (docs/escalations.md).

Shutdown (SIGTERM/SIGINT, handled by faust's worker): the agent stops taking events, the
producer is flushed, offsets are committed, then the metrics server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as TallyCounter
from collections.abc import AsyncIterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from faust.types.auth import CredentialsT
from mode import Service

from erc_stream.errors import BrokerError
from erc_stream.escalations.config import EscalationsConfig
from erc_stream.escalations.messages import OPENED, Escalation, escalation_event, parse_emotion_event
from erc_stream.escalations.metrics import EscalationMetrics
from erc_stream.escalations.rules import RulesConfig, load_rules
from erc_stream.escalations.state import ConversationState, Escalator
from erc_stream.events import BadInput, Reason, SourceRef, dead_letter
from erc_stream.health import HealthServer

__all__ = ["EscalationsApp", "run_escalations"]

log = logging.getLogger(__name__)

TABLE_NAME = "conversations"
_TOPIC_ALREADY_EXISTS = 36


class _HttpService(Service):
    """/metrics, /healthz and /readyz as a service of the faust worker (started and stopped with it)."""

    def __init__(self, server: HealthServer, **kwargs: Any) -> None:
        self._server = server
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        await self._server.start()
        log.info("metrics and health on http://%s:%s", self._server.host, self._server.port)

    async def on_stop(self) -> None:
        await self._server.stop()


class EscalationsApp:
    """The app's wiring. Settings only in the constructor; :meth:`build` creates the faust app.

    Args:
        cfg: process settings.
        rules: the escalation rules (default: ``cfg.rules_file`` or the packaged defaults).
        metrics: metrics to record into (default: a fresh registry).
    """

    def __init__(
        self, cfg: EscalationsConfig, rules: RulesConfig | None = None, metrics: EscalationMetrics | None = None
    ) -> None:
        self.cfg = cfg
        self.rules = rules if rules is not None else load_rules(cfg.rules_file)
        self.metrics = metrics if metrics is not None else EscalationMetrics()
        self.escalator = Escalator(self.rules)
        self.app: faust.App | None = None
        self.http: HealthServer | None = None
        self._table: Any = None
        self._out: Any = None
        self._dlq: Any = None
        self._ready = False
        # conversation key -> (partition, (rule, severity) of its open escalation or None). Kept
        # beside the table so sweeps and gauges need not decode every state; rebuilt on recovery.
        self._index: dict[bytes, tuple[int, tuple[str, str] | None]] = {}
        self._next_offset: dict[int, int] = {}
        self._next_sweep_at: dict[int, float] = {}

    # -- setup ----------------------------------------------------------------------------

    async def prepare_topics(self) -> int:
        """The emotions topic's partition count; creates the output and DLQ topics if missing.

        Raises:
            BrokerError: the broker is unreachable or the emotions topic does not exist.
        """
        cfg = self.cfg
        consumer = AIOKafkaConsumer(**cfg.kafka_kwargs(), enable_auto_commit=False)
        try:
            await consumer.start()
            await consumer.topics()  # refreshes the cluster metadata
            found = consumer.partitions_for_topic(cfg.input_topic)
        except KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from exc
        finally:
            await consumer.stop()
        if not found:
            raise BrokerError(
                f"the emotions topic {cfg.input_topic!r} does not exist on {cfg.bootstrap_servers}: "
                "start `erc-stream worker` (or create the topic) first"
            )
        n = len(found)
        admin = AIOKafkaAdminClient(**cfg.kafka_kwargs())
        try:
            await admin.start()
            wanted = [
                NewTopic(cfg.output_topic, n, cfg.replication_factor),
                NewTopic(cfg.dlq_topic, 1, cfg.replication_factor),
            ]
            response = await admin.create_topics(wanted, timeout_ms=30000)
            for name, code, message in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise BrokerError(f"cannot create topic {name!r}: error {code} {message or ''}".rstrip())
        except KafkaError as exc:
            raise BrokerError(f"cannot create topics on {cfg.bootstrap_servers}: {exc}") from exc
        finally:
            await admin.close()
        return n

    def build(self, partitions: int, loop: asyncio.AbstractEventLoop | None = None) -> faust.App:
        """The faust app: topics, the table, the agent and the metrics timer."""
        cfg = self.cfg
        app = faust.App(
            cfg.app_id,
            broker=[f"kafka://{s.strip()}" for s in cfg.bootstrap_servers.split(",") if s.strip()],
            broker_credentials=self._credentials(),
            store="memory://",
            topic_partitions=partitions,
            topic_replication_factor=cfg.replication_factor,
            table_standby_replicas=0,  # recovery reads the changelog; no hot standby copies
            web_enabled=False,  # /metrics and health come from erc_stream.health, as for the worker
            autodiscover=False,
            consumer_auto_offset_reset=cfg.auto_offset_reset,
            broker_commit_interval=cfg.commit_interval_ms / 1000,
            broker_session_timeout=cfg.session_timeout_ms / 1000,
            broker_heartbeat_interval=cfg.heartbeat_interval_ms / 1000,
            producer_max_batch_size=cfg.producer_max_batch_bytes,
            producer_acks=-1,
            loop=loop,
        )
        source = app.topic(cfg.input_topic, key_serializer="raw", value_serializer="raw")
        self._out = app.topic(cfg.output_topic, key_serializer="raw", value_serializer="raw")
        self._dlq = app.topic(cfg.dlq_topic, key_serializer="raw", value_serializer="raw")
        self._table = app.Table(
            TABLE_NAME, partitions=partitions, key_type=bytes, value_type=bytes, on_recover=self._on_recover
        )
        app.agent(source, name="escalations")(self._agent)
        app.timer(cfg.lag_poll_s)(self._refresh_gauges)
        app.on_partitions_revoked.connect(self._on_revoked)
        self.http = HealthServer(cfg.metrics_host, cfg.metrics_port, self.metrics.registry, self.ready)
        self.app = app
        return app

    def _credentials(self) -> CredentialsT | None:
        cfg = self.cfg
        ctx = cfg.ssl_context()
        if cfg.security_protocol.startswith("SASL_"):
            return faust.SASLCredentials(
                username=cfg.sasl_username, password=cfg.sasl_password, ssl_context=ctx, mechanism=cfg.sasl_mechanism
            )
        if ctx is not None:
            return faust.SSLCredentials(ctx)
        return None

    def ready(self) -> bool:
        """Recovered and not rebalancing (the /readyz answer)."""
        return self._ready and self.app is not None and not self.app.rebalancing

    # -- the agent ------------------------------------------------------------------------

    async def _agent(self, stream: AsyncIterable[Any]) -> None:
        async for event in stream.events():  # type: ignore[attr-defined]
            msg = event.message
            source = SourceRef(msg.topic, msg.partition, msg.offset)
            self._next_offset[msg.partition] = msg.offset + 1
            try:
                await self._handle(msg.key, msg.value, source)
            except BadInput as exc:
                await self._dead_letter(msg.key, msg.value, exc.reason, exc.detail, source)
            except Exception as exc:  # a bug must not stop the stream: the record goes to the DLQ
                log.exception("escalations: failed on %s[%d]@%d", source.topic, source.partition, source.offset)
                await self._dead_letter(msg.key, msg.value, Reason.INTERNAL, f"{type(exc).__name__}: {exc}", source)

    async def _handle(self, key: bytes | None, value: bytes | None, source: SourceRef) -> None:
        event = parse_emotion_event(value, key)
        self.metrics.processing_lag_seconds.observe(max(0.0, time.time() - event.produced_at))
        conv_key = event.conversation_id.encode("utf-8")
        state = self._load(conv_key, event.conversation_id, source.partition)
        step = self.escalator.apply(state, event, source)
        self.metrics.events_processed.labels(result="duplicate" if step.duplicate else "applied").inc()
        if step.changed and step.state is not None:
            self._store(conv_key, step.state)
        await self._emit(step.escalations, resent=step.duplicate)
        await self._maybe_sweep(source.partition, event.produced_at)

    def _load(self, key: bytes, conversation_id: str, partition: int) -> ConversationState:
        raw = self._table.get(key)
        if raw is None:
            return self.escalator.new_state(conversation_id, partition)
        try:
            return ConversationState.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("escalations: unreadable state of %r (%s); starting it afresh", conversation_id, exc)
            return self.escalator.new_state(conversation_id, partition)

    def _store(self, key: bytes, state: ConversationState) -> None:
        self._table[key] = state.to_bytes()  # the changelog record goes to the event's partition
        op = state.open
        self._index[key] = (state.partition, None if op is None else (op.rule, op.severity))

    async def _emit(self, escalations: tuple[Escalation, ...], resent: bool) -> None:
        for esc in escalations:
            value = escalation_event(esc, emitted_at=time.time())
            await self._out.send(key=esc.conversation_id.encode("utf-8"), value=value)
            if resent:
                self.metrics.resent.inc()
            elif esc.status == OPENED:
                self.metrics.opened.labels(rule=esc.rule, severity=esc.severity).inc()
            else:
                self.metrics.resolved.labels(rule=esc.rule, severity=esc.severity, resolution=esc.resolution).inc()

    async def _dead_letter(
        self, key: bytes | None, value: bytes | None, reason: Reason, detail: str, source: SourceRef
    ) -> None:
        record = dead_letter(value, key, reason=reason, detail=detail, source=source, failed_at=time.time())
        await self._dlq.send(key=key, value=record)
        self.metrics.events_processed.labels(result="dead_letter").inc()
        self.metrics.dead_letters.labels(reason=reason.value).inc()

    async def _maybe_sweep(self, partition: int, now: float) -> None:
        """Idle handling for this partition's conversations, every ``sweep_interval_s`` of event time.

        Only the current event's partition is swept: faust writes a table change to the
        changelog partition of the event being processed, which is right only for keys of it.
        """
        due = self._next_sweep_at.setdefault(partition, now + self.cfg.sweep_interval_s)
        if now < due:
            return
        self._next_sweep_at[partition] = now + self.cfg.sweep_interval_s
        keys = [k for k, (p, _) in self._index.items() if p == partition]
        for key in keys:
            state = self._load(key, key.decode("utf-8", errors="replace"), partition)
            step = self.escalator.sweep(state, now)
            if step.state is None:
                del self._table[key]
                self._index.pop(key, None)
            elif step.changed:
                self._store(key, step.state)
            await self._emit(step.escalations, resent=step.state is None)

    # -- rebalances and gauges ------------------------------------------------------------

    async def _on_recover(self) -> None:
        """After faust restored the table: rebuild the index of the assigned partitions."""
        assert self.app is not None
        assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.cfg.input_topic}
        index: dict[bytes, tuple[int, tuple[str, str] | None]] = {}
        for key, raw in list(self._table.items()):
            try:
                state = ConversationState.from_bytes(raw)
            except (ValueError, KeyError, TypeError):
                continue
            if state.partition in assigned:
                op = state.open
                index[key] = (state.partition, None if op is None else (op.rule, op.severity))
        self._index = index
        self._ready = True
        log.info("escalations: table restored, %d conversations in partitions %s", len(index), sorted(assigned))
        await self._refresh_gauges()

    async def _on_revoked(self, sender: Any, /, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """faust's on_partitions_revoked signal: ``(app, revoked_tps, signal=...)``."""
        revoked: set[Any] = args[0] if args else set()
        gone = {tp.partition for tp in revoked if tp.topic == self.cfg.input_topic}
        self._index = {k: v for k, v in self._index.items() if v[0] not in gone}
        for p in gone:
            self._next_offset.pop(p, None)
            self._next_sweep_at.pop(p, None)
            with contextlib.suppress(KeyError):  # no series yet for that partition
                self.metrics.consumer_lag.remove(self.cfg.input_topic, str(p))

    async def _refresh_gauges(self) -> None:
        if self.app is None:
            return
        tally = TallyCounter(v[1] for v in self._index.values() if v[1] is not None)
        self.metrics.set_open(tally.items())
        self.metrics.conversations.set(len(self._index))
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic == self.cfg.input_topic]
        self.metrics.partitions_assigned.set(len(assigned))
        for tp in assigned:
            highwater = self.app.consumer.highwater(tp)
            if highwater is None:  # nothing fetched from this partition yet
                continue
            next_offset = self._next_offset.get(tp.partition)
            if next_offset is None:
                next_offset = await self.app.consumer.position(tp) or 0
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, highwater - next_offset)
            )


def run_escalations(cfg: EscalationsConfig, rules: RulesConfig | None = None) -> None:
    """Run the app until SIGTERM/SIGINT (faust's worker handles the signals and the shutdown order).

    Raises:
        ConfigError: bad rules file. BrokerError: Kafka unreachable or the emotions topic missing.
    """
    esc = EscalationsApp(cfg, rules)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        partitions = loop.run_until_complete(esc.prepare_topics())
    except BaseException:
        loop.close()
        raise
    app = esc.build(partitions, loop=loop)
    assert esc.http is not None
    worker = faust.Worker(
        app,
        _HttpService(esc.http, loop=loop),
        loop=loop,
        loglevel=cfg.log_level,
        quiet=True,
        redirect_stdouts=False,
    )
    worker.execute_from_commandline()
