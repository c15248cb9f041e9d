"""Replay a dataset split onto the input topic as live chats would produce it.

``K`` conversations are open at a time and take turns round-robin, one utterance each,
so the topic sees interleaved conversations like a busy chat service; when one ends the
next conversation of the split takes its slot. Each record is keyed by conversation_id
and carries the gold label in ``metadata.gold`` so a consumer (the demo) can score the
streamed predictions. ``rate_per_s`` paces the records (0 = as fast as the broker takes
them).

Dataset loading lives in ``trainer.datasets``. Only ``erc_stream.devtools`` may import
``trainer`` (ARCHITECTURE.md), and :func:`load_conversations` does so lazily, inside the
function. Both packages ship in the same distribution.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from erc_stream.clients import start_clients
from erc_stream.config import DEFAULT_TOPICS, validate_settings
from erc_stream.errors import BrokerError, ConfigError

if TYPE_CHECKING:  # only for annotations: no runtime dependency on trainer
    from trainer.datasets import Conversation, Utterance

__all__ = ["ReplayConfig", "ReplayResult", "SentTurn", "interleave", "turn_record", "load_conversations", "replay"]

# Acks are awaited in chunks of this many records, which bounds memory and keeps a broken
# broker from going unnoticed for long, without waiting for each ack in turn.
_ACK_CHUNK = 256


@dataclass(frozen=True)
class ReplayConfig:
    """Settings of one replay: which split, where to, how fast, how interleaved.

    ``conversations`` limits the replay to the first N conversations of the split (None:
    all); ``interleave`` is how many conversations are open at once; ``rate_per_s`` is
    the number of turns per second over all conversations (0: no pacing).
    """

    dataset: str = "meld"
    split: str = "dev"
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = DEFAULT_TOPICS.input
    rate_per_s: float = 0.0
    conversations: int | None = None
    interleave: int = 8
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        checks = [
            ("dataset", bool(self.dataset)),
            ("split", bool(self.split)),
            ("bootstrap_servers", bool(self.bootstrap_servers.strip())),
            ("topic", bool(self.topic)),
            ("rate_per_s", self.rate_per_s >= 0 and self.rate_per_s == self.rate_per_s),
            ("conversations", self.conversations is None or self.conversations >= 1),
            ("interleave", self.interleave >= 1),
        ]
        validate_settings(
            self, checks, hint="rate_per_s >= 0, conversations >= 1 or unset, interleave >= 1, names non-empty"
        )

    def replace(self, **changes: Any) -> ReplayConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class SentTurn:
    """One record the replay published (what a consumer needs to score and show it)."""

    event_id: str  # conversation_id:turn_id, the id the worker's event will carry
    conversation_id: str
    turn_id: int
    speaker: str
    text: str
    gold: str
    sent_at_s: float  # wall clock when the record was handed to the producer


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did."""

    turns_sent: int
    conversations: int
    wall_s: float
    interrupted: bool


def interleave(conversations: Sequence[Conversation], k: int) -> Iterator[tuple[Conversation, int, Utterance]]:
    """Yield ``(conversation, turn_index, utterance)`` with ``k`` conversations open round-robin.

    Slots are visited in order; each open conversation contributes its next turn per
    round, and a conversation that ends frees its slot for the next one of the sequence
    (which joins at the end of the current round order). Every turn is yielded exactly
    once and each conversation's turns keep their order.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    pending = iter(conversations)
    # (conversation, index of its next turn); conversations without turns are skipped.
    open_: deque[tuple[Any, int]] = deque()

    def refill() -> None:
        while len(open_) < k:
            conv = next(pending, None)
            if conv is None:
                return
            if conv.utterances:
                open_.append((conv, 0))

    refill()
    while open_:
        conv, i = open_.popleft()
        yield conv, i, conv.utterances[i]
        if i + 1 < len(conv.utterances):
            open_.append((conv, i + 1))
        else:
            refill()


def turn_record(
    conv: Conversation, turn_index: int, utt: Utterance, *, dataset: str, split: str, ts_s: float
) -> tuple[bytes, bytes]:
    """(key, value) of one input record, following ``schemas/chat_turn.schema.json``."""
    value = {
        "conversation_id": conv.id,
        "turn_id": turn_index,
        "speaker": utt.speaker,
        "text": utt.text,
        "ts": round(ts_s, 6),
        "metadata": {"dataset": dataset, "split": split, "gold": utt.label},
    }
    return conv.id.encode("utf-8"), orjson.dumps(value)


def load_conversations(cfg: ReplayConfig) -> list[Conversation]:
    """The split's conversations (the first ``cfg.conversations`` of them).

    Raises ``ConfigError`` (unknown dataset or split) or ``DataNotFoundError``.
    """
    # Deliberate exception to "erc_stream never imports trainer" (see the module docstring):
    # imported here, lazily, so the worker never loads the trainer package.
    from trainer.datasets import load_split

    convs = load_split(cfg.dataset, cfg.split, cfg.data_dir)
    if cfg.conversations is not None:
        convs = convs[: cfg.conversations]
    if not convs:
        raise ConfigError(f"{cfg.dataset} {cfg.split} has no conversations to replay")
    return convs


async def replay(
    cfg: ReplayConfig,
    conversations: Sequence[Conversation],
    *,
    producer: Any = None,
    on_sent: Callable[[SentTurn], None] | None = None,
    stop: asyncio.Event | None = None,
    producer_kwargs: dict[str, Any] | None = None,
    wait_for_room: Callable[[], Awaitable[None]] | None = None,
) -> ReplayResult:
    """Publish the conversations turn by turn; returns once every record is acknowledged.

    ``producer``: a started ``AIOKafkaProducer`` to use (left running); by default one is
    created from ``cfg.bootstrap_servers`` (plus ``producer_kwargs``) and stopped at the
    end. ``on_sent`` is called for each record right after it is handed to the producer.
    Setting ``stop`` ends the replay early (``interrupted=True``); what was sent is still
    flushed. ``wait_for_room`` is awaited before each record: a consumer that reads the
    results applies backpressure through it (the demo waits while too many turns have no
    event yet).

    Raises:
        BrokerError: the broker cannot be reached or does not acknowledge a record.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    own = producer is None
    if own:
        producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers, acks="all", linger_ms=5, **(producer_kwargs or {})
        )
        await start_clients([producer], cfg.bootstrap_servers)
    interval_s = 1.0 / cfg.rate_per_s if cfg.rate_per_s > 0 else 0.0
    sent = 0
    interrupted = False
    acks: list[asyncio.Future] = []
    t0 = time.monotonic()

    async def settle() -> None:
        try:
            await asyncio.gather(*acks)
        except KafkaError as exc:
            raise BrokerError(
                f"the broker at {cfg.bootstrap_servers} did not acknowledge a record on {cfg.topic!r}: {exc!r}"
            ) from exc
        acks.clear()

    try:
        for conv, i, utt in interleave(conversations, cfg.interleave):
            if wait_for_room is not None:
                await wait_for_room()
            if stop is not None and stop.is_set():
                interrupted = True
                break
            if interval_s:
                # Pace against the schedule, not the previous send, so slow sends do not
                # accumulate into a lower rate.
                delay_s = t0 + sent * interval_s - time.monotonic()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            now = time.time()
            key, value = turn_record(conv, i, utt, dataset=cfg.dataset, split=cfg.split, ts_s=now)
            try:
                acks.append(await producer.send(cfg.topic, value=value, key=key))
            except KafkaError as exc:
                raise BrokerError(f"cannot send to {cfg.topic!r} on {cfg.bootstrap_servers}: {exc!r}") from exc
            sent += 1
            if on_sent is not None:
                on_sent(SentTurn(f"{conv.id}:{i}", conv.id, i, utt.speaker, utt.text, utt.label, now))
            if len(acks) >= _ACK_CHUNK:
                await settle()
        await producer.flush()
        await settle()
    finally:
        if own:
            await producer.stop()
    return ReplayResult(
        turns_sent=sent, conversations=len(conversations), wall_s=time.monotonic() - t0, interrupted=interrupted
    )
