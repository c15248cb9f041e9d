"""Messages of the escalations app: emotion events in, escalation events out.

Bytes from ``chat.emotions`` become a validated :class:`EmotionEvent` here and nowhere else
(:func:`parse_emotion_event`); a record that cannot become one raises
:class:`~erc_stream.events.BadInput` with a :class:`~erc_stream.events.Reason`, and the app
writes it to its dead-letter topic with :func:`erc_stream.events.dead_letter` (the same
``schemas/dead_letter.schema.json`` as the worker's). Escalations leave as
:func:`escalation_event` bytes (``schemas/escalation_event.schema.json``).

The parser checks what the app relies on, by hand (jsonschema would cost more than the rules
themselves; a test checks it against ``schemas/emotion_event.schema.json``): the fields the rules
read, their types and ranges, ``event_id == conversation_id + ":" + turn_id`` (dedupe is by turn
id within a conversation) and, when the record has a key, ``key == conversation_id`` (the key
decides the partition and so which table partition holds the conversation). Fields it does not
read are not checked, so a producer adding fields does not send everything to the DLQ.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from erc_stream.events import BadInput, Reason, SourceRef, check_key, decode_json_object

__all__ = [
    "COOLED_DOWN",
    "IDLE",
    "OPENED",
    "RESOLVED",
    "EmotionEvent",
    "Escalation",
    "Evidence",
    "escalation_event",
    "escalation_id",
    "evidence_from_dict",
    "parse_emotion_event",
]

OPENED = "opened"
RESOLVED = "resolved"
COOLED_DOWN = "cooled_down"
IDLE = "idle"

_COSINE_LIMIT = 1.0001  # as in schemas/emotion_event.schema.json
_MAX_ID_CHARS = {"conversation_id": 256, "turn_id": 128, "speaker": 128}
# Fixed namespace of escalation ids: uuid5(namespace, conversation, rule, opening turn) is stable
# across restarts, replays and instances, so a re-sent escalation keeps its id.
_ESCALATION_NAMESPACE = uuid.UUID("5d0f7a52-8c1e-4f0b-9a39-4a6b2c1e7e12")


@dataclass(frozen=True, slots=True)
class EmotionEvent:
    """The fields of one ``chat.emotions`` event that the escalation rules use."""

    event_id: str
    conversation_id: str
    turn_id: str
    speaker: str
    emotion: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    produced_at: float  # epoch seconds: the event time the app works in
    ts: float | None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One turn as the rules saw it (kept in the conversation state and put in escalations)."""

    turn_id: str
    speaker: str
    emotion: str
    confidence: float
    scores: dict[str, float]


@dataclass(frozen=True, slots=True)
class Escalation:
    """One escalation event: an escalation ``opened`` or ``resolved`` (same ``escalation_id``)."""

    escalation_id: str
    status: str  # OPENED or RESOLVED
    conversation_id: str
    rule: str
    severity: str
    opened_turn_id: str
    trigger_turn_ids: tuple[str, ...]
    resolved_turn_id: str | None
    resolution: str | None  # COOLED_DOWN, IDLE, or None while opened
    evidence: tuple[Evidence, ...]
    intensity: float
    negative_runs: dict[str, int]
    model_version: str
    opened_at: float
    resolved_at: float | None
    source: SourceRef | None  # the emotion event that caused it; None for an idle resolution

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the event without ``emitted_at``)."""
        return {
            "escalation_id": self.escalation_id,
            "status": self.status,
            "conversation_id": self.conversation_id,
            "rule": self.rule,
            "severity": self.severity,
            "opened_turn_id": self.opened_turn_id,
            "trigger_turn_ids": list(self.trigger_turn_ids),
            "resolved_turn_id": self.resolved_turn_id,
            "resolution": self.resolution,
            "evidence": [dataclasses.asdict(e) for e in self.evidence],
            "intensity": self.intensity,
            "negative_runs": dict(self.negative_runs),
            "model_version": self.model_version,
            "opened_at": self.opened_at,
            "resolved_at": self.resolved_at,
            "source": None if self.source is None else dataclasses.asdict(self.source),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Escalation:
        """Inverse of :meth:`to_dict` (the state's outbox round-trips through JSON)."""
        src = d["source"]
        return cls(
            escalation_id=d["escalation_id"],
            status=d["status"],
            conversation_id=d["conversation_id"],
            rule=d["rule"],
            severity=d["severity"],
            opened_turn_id=d["opened_turn_id"],
            trigger_turn_ids=tuple(d["trigger_turn_ids"]),
            resolved_turn_id=d["resolved_turn_id"],
            resolution=d["resolution"],
            evidence=tuple(evidence_from_dict(e) for e in d["evidence"]),
            intensity=float(d["intensity"]),
            negative_runs={str(k): int(v) for k, v in d["negative_runs"].items()},
            model_version=d["model_version"],
            opened_at=float(d["opened_at"]),
            resolved_at=None if d["resolved_at"] is None else float(d["resolved_at"]),
            source=None if src is None else SourceRef(src["topic"], int(src["partition"]), int(src["offset"])),
        )


def evidence_from_dict(d: dict[str, Any]) -> Evidence:
    """An :class:`Evidence` from its JSON form."""
    return Evidence(
        turn_id=d["turn_id"],
        speaker=d["speaker"],
        emotion=d["emotion"],
        confidence=float(d["confidence"]),
        scores={str(k): float(v) for k, v in d["scores"].items()},
    )


def escalation_id(conversation_id: str, rule: str, opened_turn_id: str) -> str:
    """The stable id of the escalation ``rule`` opened at turn ``opened_turn_id`` (a UUID string)."""
    return str(uuid.uuid5(_ESCALATION_NAMESPACE, f"{conversation_id}\x1f{rule}\x1f{opened_turn_id}"))


def escalation_event(escalation: Escalation, *, emitted_at: float) -> bytes:
    """Serialize ``escalation`` (``schemas/escalation_event.schema.json``); ``emitted_at``: epoch s now."""
    body = escalation.to_dict()
    body["emitted_at"] = float(emitted_at)
    return orjson.dumps(body)


# -- parsing ------------------------------------------------------------------------------


def _schema_error(detail: str) -> BadInput:
    return BadInput(Reason.SCHEMA, detail)


def _str_field(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise _schema_error(f"missing required field {name}")
    value = obj[name]
    if not isinstance(value, str) or not value:
        raise _schema_error(f"{name} must be a non-empty string, got {value!r:.80}")
    limit = _MAX_ID_CHARS.get(name)
    if limit is not None and len(value) > limit:
        raise _schema_error(f"{name} has {len(value)} characters, at most {limit} allowed")
    return value


def _number(obj: dict[str, Any], name: str) -> float:
    if name not in obj:
        raise _schema_error(f"missing required field {name}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _schema_error(f"{name} must be a finite number, got {value!r:.80}")
    return float(value)


def _scores(value: object, emotion: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise _schema_error("scores must be a non-empty object of label -> cosine")
    out: dict[str, float] = {}
    for label, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise _schema_error(f"scores[{label!r}] must be a number, got {score!r:.40}")
        if not -_COSINE_LIMIT <= score <= _COSINE_LIMIT:
            raise _schema_error(f"scores[{label!r}] = {score} is not a cosine in [-1, 1]")
        out[label] = float(score)
    if emotion not in out:
        raise _schema_error(f"emotion {emotion!r} is not among the scored labels {sorted(out)}")
    return out


def parse_emotion_event(value: bytes | None, key: bytes | None) -> EmotionEvent:
    """Decode and validate one record of the emotions topic.

    Raises:
        BadInput: ``not_utf8``, ``not_json``, ``schema_violation`` or ``key_mismatch``, with a
            message saying what is wrong.
    """
    obj = decode_json_object(value, expected="an emotion event")

    event_id = _str_field(obj, "event_id")
    conversation_id = _str_field(obj, "conversation_id")
    turn_id = _str_field(obj, "turn_id")
    if event_id != f"{conversation_id}:{turn_id}":
        raise _schema_error(
            f"event_id {event_id[:80]!r} is not conversation_id + ':' + turn_id "
            f"({conversation_id[:40]!r}, {turn_id[:40]!r}); repeats are recognised by it"
        )
    speaker = _str_field(obj, "speaker")
    emotion = _str_field(obj, "emotion")
    model_version = _str_field(obj, "model_version")
    confidence = _number(obj, "confidence")
    if not 0.0 <= confidence <= 1.0:
        raise _schema_error(f"confidence must be in [0, 1], got {confidence}")
    scores = _scores(obj.get("scores"), emotion)
    produced_at = _number(obj, "produced_at")
    if produced_at < 0:
        raise _schema_error(f"produced_at must be epoch seconds >= 0, got {produced_at}")
    ts_raw = obj.get("ts")
    ts = None if ts_raw is None else _number(obj, "ts")

    check_key(key, conversation_id)
    return EmotionEvent(
        event_id=event_id,
        conversation_id=conversation_id,
        turn_id=turn_id,
        speaker=speaker,
        emotion=emotion,
        confidence=confidence,
        scores=scores,
        model_version=model_version,
        produced_at=produced_at,
        ts=ts,
    )
