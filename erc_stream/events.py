"""Messages on the topics: decode and validate input turns, serialize output events.

Bytes from ``chat.turns`` become a validated :class:`ChatTurn` here and nowhere else
(:func:`parse_turn`); anything that cannot become one raises :class:`BadInput` with a
:class:`Reason` that the worker writes to the dead-letter topic with
:func:`dead_letter`. Valid turns leave as :func:`emotion_event` bytes.

The contract is ``schemas/chat_turn.schema.json``; :func:`parse_turn` is a hand-written
equivalent of it (jsonschema is too slow for every record) and a test checks that both
accept and reject the same samples. Decisions the schema encodes:

- ``turn_id`` is a non-empty string or an integer in 0..2**63-1, normalised to a
  string. As in JSON Schema, a float with no fractional part (``7.0``) is an integer.
- ``ts`` is epoch seconds (0..1e11; larger values are almost surely milliseconds and
  are rejected with a hint) or an ISO-8601 date-time ``YYYY-MM-DD[T ]hh:mm[:ss[.f]]``
  with an optional ``Z``/``±hh:mm``/``±hhmm`` offset; a date-time without offset is
  UTC. It is normalised to epoch seconds. ``null`` means absent, as for ``metadata``.
  The schema's pattern cannot check calendar validity (``2023-02-30``): that one case
  is rejected here only.
- ``text`` longer than ``max_text_chars`` (4000 in the schema) is ``text_too_long``;
  the length is that of the text as sent. Control characters (C0 and C1, DEL) other
  than tab, newline and carriage return are then removed; a text with nothing but
  whitespace left is ``empty_text``.
- A record key, when present, must be the UTF-8 ``conversation_id`` (``key_mismatch``):
  the key decides the partition and so the order of a conversation's turns.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson

from erc_stream.errors import ErcError

__all__ = [
    "Reason",
    "BadInput",
    "ChatTurn",
    "SourceRef",
    "parse_turn",
    "decode_json_object",
    "check_key",
    "emotion_event",
    "dead_letter",
    "MAX_CONVERSATION_ID_CHARS",
    "MAX_TURN_ID_CHARS",
    "MAX_SPEAKER_CHARS",
    "MAX_DETAIL_CHARS",
    "MAX_DLQ_ORIGINAL_BYTES",
]

MAX_CONVERSATION_ID_CHARS = 256
MAX_TURN_ID_CHARS = 128
MAX_SPEAKER_CHARS = 128
MAX_TURN_ID_INT = 2**63 - 1
MAX_TS_S = 1e11  # year 5138; larger epoch values are milliseconds or nanoseconds
MAX_DETAIL_CHARS = 1000
# Original key/value bytes kept in a dead letter. Base64 grows them by 4/3, so a dead letter
# stays below ~700 KB, under Kafka's default 1 MB message.max.bytes and aiokafka's
# max_request_size: a megabyte input must not make its own dead letter unproducible.
MAX_DLQ_ORIGINAL_BYTES = 256 * 1024
_COSINE_LIMIT = 1.0001  # cosines in float32 can exceed 1 by rounding; the schema allows this

_REQUIRED = ("conversation_id", "turn_id", "speaker", "text")
_ALLOWED = frozenset((*_REQUIRED, "ts", "metadata"))
# C0 and C1 control characters and DEL, except tab, newline, carriage return.
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Must match the "ts" pattern in schemas/chat_turn.schema.json (there with (?![\s\S])
# as the end anchor, since "$" differs between regex dialects).
_ISO_TS_RE = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])[T ]"
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])?"
)


class Reason(str, Enum):
    """Why an input record went to the dead-letter topic (the ``reason`` field)."""

    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    SCHEMA = "schema_violation"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    DUPLICATE_TURN = "duplicate_turn"
    KEY_MISMATCH = "key_mismatch"
    PROMPT_TOO_LONG = "prompt_too_long"
    INTERNAL = "internal_error"


class BadInput(ErcError):
    """An input record that cannot be processed; goes to the dead-letter topic."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One validated conversation turn. ``ts`` is epoch seconds or ``None``."""

    conversation_id: str
    turn_id: str
    speaker: str
    text: str
    ts: float | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where an input record came from."""

    topic: str
    partition: int
    offset: int


def _schema_error(detail: str) -> BadInput:
    return BadInput(Reason.SCHEMA, detail)


def _bounded_str(obj: dict[str, Any], name: str, max_chars: int) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise _schema_error(f"{name} must be a string, got {_json_type(value)}")
    if not value:
        raise _schema_error(f"{name} must not be empty")
    if len(value) > max_chars:
        raise _schema_error(f"{name} has {len(value)} characters, at most {max_chars} allowed")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _turn_id(value: object) -> str:
    if isinstance(value, str):
        if not value:
            raise _schema_error("turn_id must not be empty")
        if len(value) > MAX_TURN_ID_CHARS:
            raise _schema_error(f"turn_id has {len(value)} characters, at most {MAX_TURN_ID_CHARS} allowed")
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_TURN_ID_INT:
            raise _schema_error(f"integer turn_id must be in 0..{MAX_TURN_ID_INT}, got {value}")
        return str(value)
    raise _schema_error(f"turn_id must be a string or a non-negative integer, got {_json_type(value)} {value!r}")


def _ts(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = float(value)
        if not 0 <= ts <= MAX_TS_S:
            hint = " (looks like milliseconds: divide by 1000)" if ts > MAX_TS_S else ""
            raise _schema_error(f"ts must be epoch seconds in 0..{MAX_TS_S:.0f}, got {value}{hint}")
        return ts
    if isinstance(value, str):
        if _ISO_TS_RE.fullmatch(value) is None:
            raise _schema_error(
                f"ts string {value[:64]!r} is not an ISO-8601 date-time like "
                "2024-05-01T12:30:00Z; send that or epoch seconds"
            )
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise _schema_error(f"ts {value!r} is not a valid date-time: {exc}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise _schema_error(f"ts must be a number or an ISO-8601 string, got {_json_type(value)}")


def decode_json_object(value: bytes | None, *, expected: str) -> dict[str, Any]:
    """The JSON object in a record's value; shared by every topic's parser.

    Raises:
        BadInput: ``not_json`` for no value or invalid JSON (the message names ``expected``),
            ``not_utf8`` for bytes that are not UTF-8, ``schema_violation`` for JSON that is
            not an object.
    """
    if not value:
        raise BadInput(Reason.NOT_JSON, f"record has no value (tombstone or empty); expected {expected}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson reports bad UTF-8 as a JSON error; the dead letter says which it was.
        try:
            bytes(value).decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise BadInput(
                Reason.NOT_UTF8,
                f"value is not valid UTF-8 ({uexc.reason} at byte {uexc.start}); encode JSON as UTF-8",
            ) from None
        raise BadInput(Reason.NOT_JSON, f"value is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _schema_error(f"value must be a JSON object, got {_json_type(obj)}")
    return obj


def check_key(key: bytes | None, conversation_id: str) -> None:
    """Raise ``key_mismatch`` unless ``key`` is absent or the UTF-8 ``conversation_id``."""
    if key is not None and key != conversation_id.encode("utf-8"):
        shown = bytes(key[:80]).decode("utf-8", errors="replace")
        raise BadInput(
            Reason.KEY_MISMATCH,
            f"record key {shown!r} differs from conversation_id {conversation_id[:80]!r}; "
            "produce with key=conversation_id so a conversation stays on one partition",
        )


def parse_turn(value: bytes | None, key: bytes | None, *, max_text_chars: int = 4000) -> ChatTurn:
    """Decode and validate one record of the turns topic.

    Args:
        value: the record value (JSON, UTF-8).
        key: the record key; when not ``None`` it must equal ``conversation_id``.
        max_text_chars: longest accepted ``text``, in characters.

    Raises:
        BadInput: with the reason and a message saying what to fix.
    """
    obj = decode_json_object(value, expected="a JSON object")
    extra = obj.keys() - _ALLOWED
    if extra:
        raise _schema_error(
            f"unexpected field(s) {', '.join(sorted(extra))}; allowed: "
            "conversation_id, turn_id, speaker, text, ts, metadata (put anything else in metadata)"
        )
    missing = [name for name in _REQUIRED if name not in obj]
    if missing:
        raise _schema_error(f"missing required field(s) {', '.join(missing)}")

    conversation_id = _bounded_str(obj, "conversation_id", MAX_CONVERSATION_ID_CHARS)
    turn_id = _turn_id(obj["turn_id"])
    speaker = _bounded_str(obj, "speaker", MAX_SPEAKER_CHARS)
    text = obj["text"]
    if not isinstance(text, str):
        raise _schema_error(f"text must be a string, got {_json_type(text)}")
    ts = _ts(obj.get("ts"))
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _schema_error(f"metadata must be an object or null, got {_json_type(metadata)}")

    if len(text) > max_text_chars:
        raise BadInput(
            Reason.TEXT_TOO_LONG,
            f"text has {len(text)} characters, at most {max_text_chars} allowed; split the turn",
        )
    if _CONTROL_RE.search(text) is not None:
        text = _CONTROL_RE.sub("", text)
    if not text.strip():
        raise BadInput(Reason.EMPTY_TEXT, "text is empty or only whitespace/control characters")

    check_key(key, conversation_id)
    return ChatTurn(conversation_id, turn_id, speaker, text, ts, metadata)


def _source(source: SourceRef) -> dict[str, Any]:
    return {"topic": source.topic, "partition": source.partition, "offset": source.offset}


def emotion_event(
    turn: ChatTurn,
    *,
    emotion: str,
    confidence: float,
    scores: dict[str, float],
    model_version: str,
    context_turns: int,
    source: SourceRef,
    record_ts_ms: int | None,
    produced_at: float,
    latency_ms: float,
) -> bytes:
    """Serialize the output event for ``turn`` (``schemas/emotion_event.schema.json``).

    ``scores`` are cosine similarities to every emotion anchor, ``confidence`` the
    softmax probability of ``emotion``, ``context_turns`` the number of earlier turns
    actually in the prompt, ``record_ts_ms`` the Kafka timestamp of the input record.

    Raises:
        ValueError: a value the schema would reject (a bug in the caller).
    """
    clean_scores = {label: float(s) for label, s in scores.items()}
    if emotion not in clean_scores:
        raise ValueError(f"emotion {emotion!r} is not among the scored labels {sorted(clean_scores)}")
    if not all(math.isfinite(s) and -_COSINE_LIMIT <= s <= _COSINE_LIMIT for s in clean_scores.values()):
        raise ValueError(f"scores must be cosines in [-1, 1], got {clean_scores}")
    confidence = float(confidence)
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
    if context_turns < 0:
        raise ValueError(f"context_turns must be >= 0, got {context_turns!r}")
    return orjson.dumps(
        {
            "event_id": f"{turn.conversation_id}:{turn.turn_id}",
            "conversation_id": turn.conversation_id,
            "turn_id": turn.turn_id,
            "speaker": turn.speaker,
            "emotion": emotion,
            "confidence": confidence,
            "scores": clean_scores,
            "model_version": model_version,
            "context_turns": int(context_turns),
            "source": _source(source),
            "ts": turn.ts,
            "record_ts_ms": None if record_ts_ms is None else int(record_ts_ms),
            "produced_at": float(produced_at),
            "latency_ms": float(latency_ms),
        }
    )


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    *,
    reason: Reason,
    detail: str,
    source: SourceRef,
    failed_at: float,
) -> bytes:
    """Serialize a dead letter (``schemas/dead_letter.schema.json``).

    The original key and value travel base64-encoded (``null`` when absent) so any
    bytes survive; ``detail`` is cut to 1000 characters. A key or value longer than
    ``MAX_DLQ_ORIGINAL_BYTES`` keeps only its first ``MAX_DLQ_ORIGINAL_BYTES`` bytes, and
    ``detail`` ends with a note saying so (the full record stays in the input topic at
    ``source``).
    """
    notes = []
    if value is not None and len(value) > MAX_DLQ_ORIGINAL_BYTES:
        notes.append(f"value_b64 holds the first {MAX_DLQ_ORIGINAL_BYTES} of {len(value)} bytes")
        value = bytes(value[:MAX_DLQ_ORIGINAL_BYTES])
    if key is not None and len(key) > MAX_DLQ_ORIGINAL_BYTES:
        notes.append(f"key_b64 holds the first {MAX_DLQ_ORIGINAL_BYTES} of {len(key)} bytes")
        key = bytes(key[:MAX_DLQ_ORIGINAL_BYTES])
    suffix = f" [{'; '.join(notes)}]" if notes else ""
    room = MAX_DETAIL_CHARS - len(suffix)
    if len(detail) > room:
        detail = detail[: room - 1] + "\u2026"
    detail += suffix
    return orjson.dumps(
        {
            "reason": Reason(reason).value,
            "detail": detail,
            "value_b64": _b64(value),
            "key_b64": _b64(key),
            "source": _source(source),
            "failed_at": float(failed_at),
        }
    )
