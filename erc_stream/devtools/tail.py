"""Follow the emotion events live, one line per event, with the text of the turn; or, with
``escalations=True``, the escalation events of `erc-stream escalations` (``chat.escalations``).

An emotion event does not carry the turn's text, so :func:`tail` also reads the input
topic and joins the two on the event id ``conversation_id:turn_id`` (:class:`TextJoin`).
An event whose turn has not been read yet waits up to ``text_wait_s`` for it, then is
shown without text (its turn may be older than where the input topic was joined).

Line format (:func:`render_event`)::

    meld-dev-3#4   Monica     Are you kidding me?            surprise  0.87  surprise 0.61 · joy 0.42 · neutral 0.30
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

from erc_stream.clients import start_clients
from erc_stream.config import DEFAULT_TOPICS, validate_settings
from erc_stream.devtools.escalations import render_escalation
from erc_stream.errors import BrokerError
from erc_stream.events import BadInput, parse_turn

__all__ = ["EMOTION_STYLES", "TailConfig", "TextJoin", "top_scores", "render_event", "tail"]

# Colours per emotion, over the labels of all supported datasets; unknown labels are plain.
EMOTION_STYLES: dict[str, str] = {
    "neutral": "white",
    "joy": "bold yellow",
    "joyful": "bold yellow",
    "happy": "bold yellow",
    "happiness": "bold yellow",
    "excited": "bold bright_yellow",
    "powerful": "bold bright_magenta",
    "peaceful": "bold cyan",
    "surprise": "bold magenta",
    "fear": "bold bright_blue",
    "scared": "bold bright_blue",
    "sadness": "bold blue",
    "sad": "bold blue",
    "disgust": "bold green",
    "anger": "bold red",
    "angry": "bold red",
    "mad": "bold red",
    "frustrated": "bold bright_red",
}
_MISSING_TEXT = "(text not seen)"
_CONV_WIDTH = 20
_SPEAKER_WIDTH = 12
_EMOTION_WIDTH = 10
# Records this much older than the start of a tail that is not --from-beginning are old ones.
_CLOCK_SLACK_MS = 1000


def _fit(value: str, width: int) -> str:
    """``value`` on one line, cut to ``width`` characters with an ellipsis, padded."""
    value = " ".join(value.split())
    if len(value) > width:
        value = value[: width - 1] + "…"
    return value.ljust(width)


def top_scores(scores: Mapping[str, float], n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` highest scores, highest first; ties keep the labels' order."""
    return sorted(scores.items(), key=lambda kv: -kv[1])[:n]


def render_event(event: Mapping[str, Any], text: str | None, *, text_width: int = 40) -> Text:
    """One display line for an emotion event and the text of its turn (None: not known)."""
    emotion = str(event["emotion"])
    conv = _fit(f"{event['conversation_id']}#{event['turn_id']}", _CONV_WIDTH)
    line = Text()
    line.append(conv + " ", style="dim")
    line.append(_fit(str(event.get("speaker", "")), _SPEAKER_WIDTH) + " ", style="cyan")
    line.append(
        _fit(text if text is not None else _MISSING_TEXT, text_width) + " ",
        style=None if text is not None else "dim italic",
    )
    line.append(_fit(emotion, _EMOTION_WIDTH), style=EMOTION_STYLES.get(emotion, ""))
    line.append(f" {float(event['confidence']):.2f}  ")
    for j, (label, score) in enumerate(top_scores(event.get("scores", {}))):
        if j:
            line.append(" · ", style="dim")
        line.append(label, style=EMOTION_STYLES.get(label, ""))
        line.append(f" {score:.2f}")
    return line


class TextJoin:
    """Joins events with the text of their turns, by event id (``conversation_id:turn_id``).

    ``add_turn`` and ``add_event`` return the (event, text) pairs ready to show; an event
    whose turn is unknown waits until ``add_turn`` brings it or ``expired`` gives it up
    after ``wait_s``. At most ``max_turns`` texts are kept (the oldest are dropped).
    """

    def __init__(self, *, wait_s: float = 2.0, max_turns: int = 100_000) -> None:
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s!r}")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns!r}")
        self.wait_s = wait_s
        self.max_turns = max_turns
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._pending: OrderedDict[str, list[tuple[float, dict]]] = OrderedDict()

    def __len__(self) -> int:
        """Events waiting for their text."""
        return sum(len(v) for v in self._pending.values())

    def add_turn(self, event_id: str, text: str) -> list[tuple[dict, str | None]]:
        self._texts[event_id] = text
        self._texts.move_to_end(event_id)
        while len(self._texts) > self.max_turns:
            self._texts.popitem(last=False)
        waiting = self._pending.pop(event_id, [])
        return [(event, text) for _, event in waiting]

    def add_event(self, event: dict, now_s: float) -> list[tuple[dict, str | None]]:
        event_id = str(event["event_id"])
        text = self._texts.get(event_id)
        if text is not None:
            return [(event, text)]
        self._pending.setdefault(event_id, []).append((now_s, event))
        return []

    def expired(self, now_s: float) -> list[tuple[dict, str | None]]:
        """Events that waited ``wait_s`` or longer, in arrival order, without text."""
        out: list[tuple[dict, str | None]] = []
        for event_id in list(self._pending):
            waiting = self._pending[event_id]
            if waiting[0][0] + self.wait_s <= now_s:
                out.extend((event, None) for _, event in waiting)
                del self._pending[event_id]
        return out

    def drain(self) -> list[tuple[dict, str | None]]:
        """Every waiting event, without text (at shutdown)."""
        out: list[tuple[dict, str | None]] = [
            (event, None) for waiting in self._pending.values() for _, event in waiting
        ]
        self._pending.clear()
        return out


@dataclass(frozen=True)
class TailConfig:
    """Settings of ``erc-stream tail``. ``input_topic=None`` shows events without text.

    ``escalations=True``: ``topic`` holds escalation events (``schemas/escalation_event.schema.json``),
    shown one line each; ``input_topic`` must then be ``None``.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = DEFAULT_TOPICS.output
    input_topic: str | None = DEFAULT_TOPICS.input
    from_beginning: bool = False
    max_events: int | None = None
    text_wait_s: float = 2.0
    text_width: int = 40
    escalations: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("bootstrap_servers", bool(self.bootstrap_servers.strip())),
            ("topic", bool(self.topic)),
            ("input_topic", self.input_topic is None or (bool(self.input_topic) and self.input_topic != self.topic)),
            ("max_events", self.max_events is None or self.max_events >= 1),
            ("text_wait_s", self.text_wait_s >= 0),
            ("text_width", self.text_width >= 8),
            ("input_topic", not (self.escalations and self.input_topic)),
        ]
        validate_settings(
            self,
            checks,
            hint="topics non-empty and different, max_events >= 1 or unset, text_wait_s >= 0, text_width >= 8",
        )


def _event_id_of_turn(value: bytes | None, key: bytes | None) -> tuple[str, str] | None:
    try:
        turn = parse_turn(value, key, max_text_chars=1_000_000)
    except BadInput:
        return None  # not a valid turn: the worker dead-letters it, there is no event to join
    return f"{turn.conversation_id}:{turn.turn_id}", turn.text


async def tail(cfg: TailConfig, *, console: Console, stop: asyncio.Event | None = None) -> int:
    """Print events until ``stop`` is set or ``max_events`` were shown; returns how many were shown.

    Raises:
        BrokerError: the broker is unreachable or a topic does not exist.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    stop = stop or asyncio.Event()
    # The local broker answers "latest" with the first offset of a partition's last batch + 1,
    # so a consumer starting there re-reads the rest of that batch (README, "Delivery
    # guarantees"). Records older than the start are therefore skipped unless from_beginning.
    oldest_ms = 0 if cfg.from_beginning else int(time.time() * 1000) - _CLOCK_SLACK_MS
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if cfg.from_beginning else "latest",
    )
    await start_clients([consumer], cfg.bootstrap_servers)
    shown = 0
    join = TextJoin(wait_s=cfg.text_wait_s)

    def show_escalation(topic: str, partition: int, offset: int, value: bytes | None) -> bool:
        nonlocal shown
        try:
            event = orjson.loads(value or b"")
            event["escalation_id"], event["status"], event["rule"]  # noqa: B018 - shape check
        except (orjson.JSONDecodeError, TypeError, KeyError):
            skipped = f"(skipped a record at {topic}[{partition}]@{offset}: not an escalation event)"
            console.print(Text(skipped, style="dim"))
            return False
        console.print(render_escalation(event), soft_wrap=True)
        shown += 1
        return cfg.max_events is not None and shown >= cfg.max_events

    def show(pairs) -> bool:
        nonlocal shown
        for event, text in pairs:
            console.print(render_event(event, text, text_width=cfg.text_width), soft_wrap=True)
            shown += 1
            if cfg.max_events is not None and shown >= cfg.max_events:
                return True
        return False

    try:
        wanted = [cfg.topic] + ([cfg.input_topic] if cfg.input_topic else [])
        existing = await consumer.topics()
        missing = [t for t in wanted if t not in existing]
        if missing:
            raise BrokerError(
                f"topic(s) {missing} do not exist on {cfg.bootstrap_servers}; start the worker "
                "(or `erc-stream broker`, which creates them) or pass --topic/--input-topic"
            )
        consumer.subscribe(wanted)
        done = False
        while not done and not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            now = time.monotonic()
            # Turns first, so events in the same fetch find their text.
            for tp, records in batches.items():
                if tp.topic != cfg.input_topic:
                    continue
                for rec in records:
                    if rec.timestamp < oldest_ms:
                        continue
                    joined = _event_id_of_turn(rec.value, rec.key)
                    if joined is not None and not done:
                        done = show(join.add_turn(*joined))
            for tp, records in batches.items():
                if tp.topic != cfg.topic:
                    continue
                for rec in records:
                    if done:
                        break
                    if rec.timestamp < oldest_ms:
                        continue
                    if cfg.escalations:
                        done = show_escalation(tp.topic, tp.partition, rec.offset, rec.value)
                        continue
                    try:
                        event = orjson.loads(rec.value)
                        event["event_id"], event["emotion"], event["confidence"]  # noqa: B018 - shape check
                    except (orjson.JSONDecodeError, TypeError, KeyError):
                        console.print(
                            Text(
                                f"(skipped a record at {tp.topic}[{tp.partition}]@{rec.offset}: not an emotion event)",
                                style="dim",
                            )
                        )
                        continue
                    if cfg.input_topic is None:
                        done = show([(event, None)])
                    else:
                        done = show(join.add_event(event, now))
            if not done:
                done = show(join.expired(now))
        if not done:
            show(join.drain())
    except KafkaError as exc:
        raise BrokerError(f"reading from {cfg.bootstrap_servers} failed: {exc!r}") from exc
    finally:
        await consumer.stop()
    return shown
