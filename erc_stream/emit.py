"""Output: emotion events and dead letters to the broker.

Each :class:`Outgoing` message completes one input offset: once the broker acknowledges
it, the emitter calls ``on_acked(message)`` and the worker marks that offset done (only
done offsets are committed). A batch is sent in order; a failed send is retried with
backoff until it succeeds or the emitter is stopped, so no turn is dropped while the
worker runs (what is unacknowledged at a stop is not committed and is read again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from erc_stream.events import Reason, SourceRef, dead_letter

__all__ = ["Outgoing", "dead_letter_message", "Emitter"]

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 0.2
_RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to produce and the input record it completes.

    Exactly one of ``emotion`` (an event) and ``reason`` (a dead letter) is set.
    """

    topic: str
    key: bytes | None
    value: bytes
    source: TopicPartition  # the input partition ...
    offset: int  # ... and offset this message completes
    emotion: str | None = None
    reason: Reason | None = None
    record_ts_ms: int | None = None  # the input record's timestamp, for end-to-end latency


def dead_letter_message(
    topic: str,
    source: TopicPartition,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: Reason,
    detail: str,
) -> Outgoing:
    """The dead letter of one input record: its original key and value bytes, the reason, where it was."""
    body = dead_letter(
        value,
        key,
        reason=reason,
        detail=detail,
        source=SourceRef(source.topic, source.partition, offset),
        failed_at=time.time(),
    )
    return Outgoing(topic, key, body, source, offset, reason=reason)


class Emitter:
    """Sends :class:`Outgoing` batches on a started producer; one asyncio task per batch."""

    def __init__(self, producer: AIOKafkaProducer, on_acked: Callable[[Outgoing], None]) -> None:
        self._producer = producer
        self._on_acked = on_acked
        self._deliveries: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Batches still being delivered."""
        return len(self._deliveries)

    def send(self, messages: Sequence[Outgoing]) -> None:
        """Deliver ``messages`` in order, in the background."""
        task = asyncio.get_running_loop().create_task(self._send_all(messages))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every delivery; cancel what is still unacknowledged then."""
        if not self._deliveries:
            return
        await asyncio.wait(self._deliveries, timeout=max(0.1, timeout_s))
        for task in list(self._deliveries):  # unacknowledged: not committed, so re-read on restart
            task.cancel()

    async def _send_all(self, messages: Sequence[Outgoing]) -> None:
        futures: list[asyncio.Future | KafkaError] = []
        for msg in messages:  # hand all to the producer first: it batches them
            try:
                futures.append(await self._producer.send(msg.topic, value=msg.value, key=msg.key))
            except KafkaError as exc:
                futures.append(exc)
        for msg, fut in zip(messages, futures, strict=True):
            if isinstance(fut, KafkaError) or not await self._acknowledged(msg, fut):
                await self._send_retrying(msg)
            self._on_acked(msg)

    async def _acknowledged(self, msg: Outgoing, fut: asyncio.Future) -> bool:
        try:
            await fut
            return True
        except KafkaError as exc:
            log.warning("send to %s failed (%r); retrying", msg.topic, exc)
            return False

    async def _send_retrying(self, msg: Outgoing) -> None:
        delay_s = _RETRY_FIRST_S
        while True:  # until acknowledged, or cancelled by drain()
            try:
                await (await self._producer.send(msg.topic, value=msg.value, key=msg.key))
                return
            except KafkaError as exc:
                log.warning("send to %s failed (%r); retry in %.1f s", msg.topic, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
