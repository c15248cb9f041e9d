"""parse_turn, emotion_event and dead_letter against exact values and the JSON Schemas."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from erc_stream.events import (
    BadInput,
    ChatTurn,
    Reason,
    SourceRef,
    dead_letter,
    emotion_event,
    parse_turn,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


TURN_SCHEMA = _validator("chat_turn.schema.json")
EVENT_SCHEMA = _validator("emotion_event.schema.json")
DLQ_SCHEMA = _validator("dead_letter.schema.json")

SRC = SourceRef(topic="chat.turns", partition=2, offset=41)


def _j(obj: object) -> bytes:
    # The stdlib encoder: it also writes integers beyond 64 bits, as producers may.
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _turn(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"conversation_id": "c1", "turn_id": "t1", "speaker": "Ann", "text": "hi"}
    base.update(over)
    return base


def _reason(value: bytes | None, key: bytes | None = None, **kw: int) -> BadInput:
    with pytest.raises(BadInput) as info:
        parse_turn(value, key, **kw)
    return info.value


# -- parse_turn: accepted inputs ------------------------------------------------


def test_parse_full_turn() -> None:
    value = _j(
        {
            "conversation_id": "conv-7",
            "turn_id": 3,
            "speaker": "Monica",
            "text": "Oh my God!",
            "ts": 1714566600.5,
            "metadata": {"lang": "en", "n": [1, 2]},
        }
    )
    assert parse_turn(value, b"conv-7") == ChatTurn(
        conversation_id="conv-7",
        turn_id="3",
        speaker="Monica",
        text="Oh my God!",
        ts=1714566600.5,
        metadata={"lang": "en", "n": [1, 2]},
    )


def test_parse_minimal_turn_without_key() -> None:
    assert parse_turn(_j(_turn()), None) == ChatTurn("c1", "t1", "Ann", "hi", None, None)


@pytest.mark.parametrize(
    ("turn_id", "expected"),
    [("t-9", "t-9"), (0, "0"), (42, "42"), (7.0, "7"), (2**63 - 1, "9223372036854775807")],
)
def test_turn_id_normalised_to_str(turn_id: object, expected: str) -> None:
    assert parse_turn(_j(_turn(turn_id=turn_id)), None).turn_id == expected


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0, 0.0),
        (1714566600, 1714566600.0),
        ("2024-05-01T12:30:00Z", 1714566600.0),
        ("2024-05-01T12:30:00", 1714566600.0),  # no offset: UTC
        ("2024-05-01 14:30:00+02:00", 1714566600.0),
        ("2024-05-01T14:30+0200", 1714566600.0),
        ("2024-05-01T12:30:00.25Z", 1714566600.25),
        (None, None),
    ],
)
def test_ts_normalised_to_epoch_seconds(ts: object, expected: float | None) -> None:
    assert parse_turn(_j(_turn(ts=ts)), None).ts == expected


def test_control_characters_removed_but_tab_newline_cr_kept() -> None:
    text = "a\x00b\x07c\x1b[31md\x7fe\x85f\x9fg\th\ni\rj\x0bk\x0cl"
    assert parse_turn(_j(_turn(text=text)), None).text == "abc[31mdefg\th\ni\rjkl"


def test_text_of_exactly_max_chars_is_accepted() -> None:
    assert parse_turn(_j(_turn(text="x" * 10)), None, max_text_chars=10).text == "x" * 10


# -- parse_turn: rejected inputs, with their reason ------------------------------


@pytest.mark.parametrize("value", [None, b""])
def test_missing_value_is_not_json(value: bytes | None) -> None:
    err = _reason(value)
    assert err.reason is Reason.NOT_JSON
    assert "no value" in err.detail


def test_invalid_utf8() -> None:
    err = _reason(b'{"text": "\xff\xfe"}')
    assert err.reason is Reason.NOT_UTF8
    assert "byte 10" in err.detail


@pytest.mark.parametrize("value", [b"{", b"hello", b'{"a": 1,}', b"NaN", b'"\\ud800"'])
def test_not_json(value: bytes) -> None:
    assert _reason(value).reason is Reason.NOT_JSON


def test_extra_fields_named() -> None:
    err = _reason(_j(_turn(emotion="joy", zeta=1)))
    assert err.reason is Reason.SCHEMA
    assert err.detail.startswith("unexpected field(s) emotion, zeta;")


def test_missing_fields_named() -> None:
    err = _reason(_j({"conversation_id": "c", "text": "x"}))
    assert err.reason is Reason.SCHEMA
    assert err.detail == "missing required field(s) turn_id, speaker"


@pytest.mark.parametrize(
    ("over", "detail"),
    [
        ({"conversation_id": ""}, "conversation_id must not be empty"),
        ({"conversation_id": 5}, "conversation_id must be a string, got number"),
        ({"conversation_id": "c" * 257}, "conversation_id has 257 characters, at most 256 allowed"),
        ({"speaker": None}, "speaker must be a string, got null"),
        ({"speaker": "s" * 129}, "speaker has 129 characters, at most 128 allowed"),
        ({"turn_id": ""}, "turn_id must not be empty"),
        ({"turn_id": "t" * 129}, "turn_id has 129 characters, at most 128 allowed"),
        ({"turn_id": -1}, "integer turn_id must be in 0..9223372036854775807, got -1"),
        ({"turn_id": True}, "turn_id must be a string or a non-negative integer, got boolean True"),
        ({"turn_id": 1.5}, "turn_id must be a string or a non-negative integer, got number 1.5"),
        ({"text": ["hi"]}, "text must be a string, got array"),
        ({"metadata": [1]}, "metadata must be an object or null, got array"),
        ({"ts": True}, "ts must be a number or an ISO-8601 string, got boolean"),
        ({"ts": -1}, "ts must be epoch seconds in 0..100000000000, got -1"),
        (
            {"ts": 1714566600000},
            "ts must be epoch seconds in 0..100000000000, got 1714566600000 (looks like milliseconds: divide by 1000)",
        ),
        (
            {"ts": "yesterday"},
            "ts string 'yesterday' is not an ISO-8601 date-time like 2024-05-01T12:30:00Z; send that or epoch seconds",
        ),
    ],
)
def test_schema_violations(over: dict[str, object], detail: str) -> None:
    err = _reason(_j(_turn(**over)))
    assert err.reason is Reason.SCHEMA
    assert err.detail == detail


def test_not_an_object() -> None:
    err = _reason(b"[1, 2]")
    assert (err.reason, err.detail) == (Reason.SCHEMA, "value must be a JSON object, got array")


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r ", "\x00\x01", " \x7f\u2003"])
def test_empty_text(text: str) -> None:
    assert _reason(_j(_turn(text=text))).reason is Reason.EMPTY_TEXT


def test_text_too_long() -> None:
    err = _reason(_j(_turn(text="x" * 11)), max_text_chars=10)
    assert err.reason is Reason.TEXT_TOO_LONG
    assert err.detail == "text has 11 characters, at most 10 allowed; split the turn"
    assert _reason(_j(_turn(text="y" * 4001))).reason is Reason.TEXT_TOO_LONG


def test_key_must_equal_conversation_id() -> None:
    assert parse_turn(_j(_turn(conversation_id="ü-1")), "ü-1".encode()).conversation_id == "ü-1"
    err = _reason(_j(_turn()), b"c2")
    assert err.reason is Reason.KEY_MISMATCH
    assert err.detail.startswith("record key 'c2' differs from conversation_id 'c1';")
    assert _reason(_j(_turn()), b"").reason is Reason.KEY_MISMATCH


def test_bad_input_message() -> None:
    err = BadInput(Reason.EMPTY_TEXT, "nothing to classify")
    assert str(err) == "empty_text: nothing to classify"


def test_impossible_calendar_date_rejected_although_schema_pattern_accepts() -> None:
    # The one documented gap: a regex cannot know February has no 30th.
    sample = _turn(ts="2023-02-30T10:00:00Z")
    assert TURN_SCHEMA.is_valid(sample)
    err = _reason(_j(sample))
    assert err.reason is Reason.SCHEMA
    assert "not a valid date-time" in err.detail


# -- parse_turn and the JSON Schema agree -----------------------------------------

AGREEMENT_SAMPLES: list[object] = [
    _turn(),
    _turn(turn_id=0),
    _turn(turn_id=7.0),
    _turn(turn_id=2**63 - 1),
    _turn(turn_id=2**63),
    _turn(turn_id=-3),
    _turn(turn_id=1.5),
    _turn(turn_id=None),
    _turn(turn_id=False),
    _turn(turn_id=""),
    _turn(turn_id="x" * 128),
    _turn(turn_id="x" * 129),
    _turn(conversation_id="c" * 256),
    _turn(conversation_id="c" * 257),
    _turn(conversation_id=""),
    _turn(conversation_id=["c"]),
    _turn(speaker=""),
    _turn(speaker="s" * 128),
    _turn(speaker="s" * 129),
    _turn(text=""),
    _turn(text=" \t\n"),
    _turn(text="\x00\x1f\x7f\x9f"),
    _turn(text="\u3000\u2028"),
    _turn(text="a\x00"),
    _turn(text="é"),
    _turn(text="x" * 4000),
    _turn(text="x" * 4001),
    _turn(text=None),
    _turn(ts=0),
    _turn(ts=1.5),
    _turn(ts=-0.1),
    _turn(ts=1e11),
    _turn(ts=1e11 + 1),
    _turn(ts=None),
    _turn(ts="2024-05-01T12:30:00Z"),
    _turn(ts="2024-05-01T12:30"),
    _turn(ts="2024-05-01 12:30:00.123456789+05:30"),
    _turn(ts="2024-05-01T12:30:00-0800"),
    _turn(ts="2024-05-01"),
    _turn(ts="2024-13-01T00:00:00Z"),
    _turn(ts="2024-05-01T24:00:00Z"),
    _turn(ts="2024-05-01T12:30:00Z\n"),
    _turn(ts="2024-05-01t12:30:00z"),
    _turn(ts="\u0662024-05-01T12:30:00Z"),  # an Arabic-Indic digit is not [0-9]
    _turn(ts=[2024]),
    _turn(ts=False),
    _turn(metadata={}),
    _turn(metadata={"a": {"b": [1, None]}}),
    _turn(metadata=None),
    _turn(metadata="x"),
    _turn(extra=1),
    {"conversation_id": "c", "turn_id": "t", "text": "x"},
    {},
    [],
    "string",
    3,
    None,
]


@pytest.mark.parametrize("sample", AGREEMENT_SAMPLES, ids=lambda s: repr(s)[:60])
def test_parse_turn_agrees_with_schema(sample: object) -> None:
    schema_ok = TURN_SCHEMA.is_valid(sample)
    try:
        parse_turn(_j(sample), None)
        parsed_ok = True
    except BadInput:
        parsed_ok = False
    assert parsed_ok == schema_ok


def test_agreement_samples_include_both_outcomes() -> None:
    valid = sum(TURN_SCHEMA.is_valid(s) for s in AGREEMENT_SAMPLES)
    assert 15 <= valid <= len(AGREEMENT_SAMPLES) - 15


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
_field_value = st.one_of(
    _json_leaf,
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.text(alphabet=" \t\n\r\x00\x0b\x1f\x7f\x85\xa0\u2003ab", max_size=8),
    st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda d: d.isoformat()),
    st.lists(_json_leaf, max_size=2),
    st.dictionaries(st.text(max_size=3), _json_leaf, max_size=2),
)
_turn_like = st.dictionaries(
    st.sampled_from(["conversation_id", "turn_id", "speaker", "text", "ts", "metadata", "other"]),
    _field_value,
)


@settings(max_examples=400, deadline=None)
@given(base=st.just(_turn()), over=_turn_like)
def test_parse_turn_agrees_with_schema_on_generated_samples(base: dict[str, object], over: dict[str, object]) -> None:
    sample = {**base, **over}
    schema_ok = TURN_SCHEMA.is_valid(sample)
    try:
        parse_turn(_j(sample), None)
        parsed_ok = True
    except BadInput:
        parsed_ok = False
    assert parsed_ok == schema_ok, sample


# -- emotion_event -------------------------------------------------------------

SCORES = {"neutral": 0.1, "joy": 0.8, "anger": -0.25}


def _event(**over: object) -> bytes:
    turn = ChatTurn("conv-1", "17", "Ross", "We were on a break!", 1714566600.0, {"x": 1})
    kwargs: dict[str, object] = {
        "emotion": "joy",
        "confidence": 0.625,
        "scores": SCORES,
        "model_version": "meld-20240501-abc",
        "context_turns": 4,
        "source": SRC,
        "record_ts_ms": 1714566600123,
        "produced_at": 1714566601.5,
        "latency_ms": 12.5,
    }
    kwargs.update(over)
    return emotion_event(turn, **kwargs)  # type: ignore[arg-type]


def test_emotion_event_exact_fields() -> None:
    assert orjson.loads(_event()) == {
        "event_id": "conv-1:17",
        "conversation_id": "conv-1",
        "turn_id": "17",
        "speaker": "Ross",
        "emotion": "joy",
        "confidence": 0.625,
        "scores": {"neutral": 0.1, "joy": 0.8, "anger": -0.25},
        "model_version": "meld-20240501-abc",
        "context_turns": 4,
        "source": {"topic": "chat.turns", "partition": 2, "offset": 41},
        "ts": 1714566600.0,
        "record_ts_ms": 1714566600123,
        "produced_at": 1714566601.5,
        "latency_ms": 12.5,
    }


def test_emotion_events_validate() -> None:
    EVENT_SCHEMA.validate(orjson.loads(_event()))
    EVENT_SCHEMA.validate(orjson.loads(_event(record_ts_ms=None, context_turns=0)))
    turn = parse_turn(_j(_turn(turn_id=5)), b"c1")
    raw = emotion_event(
        turn,
        emotion="anger",
        confidence=1.0,
        scores={"anger": 1.00001},
        model_version="v1",
        context_turns=0,
        source=SourceRef("t", 0, 0),
        record_ts_ms=None,
        produced_at=0.0,
        latency_ms=0.0,
    )
    event = orjson.loads(raw)
    EVENT_SCHEMA.validate(event)
    assert (event["event_id"], event["ts"]) == ("c1:5", None)


def test_emotion_event_numpy_like_floats_become_json_numbers() -> None:
    np = pytest.importorskip("numpy")
    raw = _event(confidence=np.float32(0.5), scores={"joy": np.float32(0.75)})
    event = orjson.loads(raw)
    assert (event["confidence"], event["scores"]) == (0.5, {"joy": 0.75})


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"emotion": "fear"}, "emotion 'fear' is not among the scored labels"),
        ({"confidence": 1.5}, "confidence must be in [0, 1], got 1.5"),
        ({"scores": {"joy": float("nan")}}, "scores must be cosines in [-1, 1]"),
        ({"scores": {"joy": 1.5}}, "scores must be cosines in [-1, 1]"),
        ({"context_turns": -1}, "context_turns must be >= 0, got -1"),
    ],
)
def test_emotion_event_rejects_values_the_schema_would(over: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _event(**over)


# -- dead_letter ----------------------------------------------------------------


def test_dead_letter_exact_fields_and_roundtrip() -> None:
    value, key = b'{"text": "\xff"}', b"c\x00"
    letter = orjson.loads(dead_letter(value, key, reason=Reason.NOT_UTF8, detail="bad", source=SRC, failed_at=5.25))
    assert letter == {
        "reason": "not_utf8",
        "detail": "bad",
        "value_b64": base64.b64encode(value).decode(),
        "key_b64": "YwA=",
        "source": {"topic": "chat.turns", "partition": 2, "offset": 41},
        "failed_at": 5.25,
    }
    assert base64.b64decode(letter["value_b64"]) == value
    DLQ_SCHEMA.validate(letter)


def test_dead_letter_without_value_or_key_and_long_detail() -> None:
    letter = orjson.loads(dead_letter(None, None, reason=Reason.INTERNAL, detail="d" * 5000, source=SRC, failed_at=1.0))
    assert (letter["value_b64"], letter["key_b64"]) == (None, None)
    assert letter["detail"] == "d" * 999 + "\u2026"
    DLQ_SCHEMA.validate(letter)


def test_dead_letter_from_every_parse_failure_validates() -> None:
    inputs = [
        (None, None),
        (b"\xff", None),
        (b"{", None),
        (_j(_turn(x=1)), None),
        (_j(_turn(text=" ")), None),
        (_j(_turn(text="x" * 4001)), None),
        (_j(_turn()), b"other"),
    ]
    reasons = set()
    for value, key in inputs:
        with pytest.raises(BadInput) as info:
            parse_turn(value, key)
        err = info.value
        reasons.add(err.reason)
        DLQ_SCHEMA.validate(
            orjson.loads(dead_letter(value, key, reason=err.reason, detail=err.detail, source=SRC, failed_at=0.0))
        )
    assert reasons == {
        Reason.NOT_JSON,
        Reason.NOT_UTF8,
        Reason.SCHEMA,
        Reason.EMPTY_TEXT,
        Reason.TEXT_TOO_LONG,
        Reason.KEY_MISMATCH,
    }


def test_dead_letter_schema_lists_every_reason() -> None:
    enum = DLQ_SCHEMA.schema["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted(r.value for r in Reason)


def test_turn_schema_limits_match_parser_constants() -> None:
    from erc_stream import events

    props = TURN_SCHEMA.schema["properties"]
    assert props["conversation_id"]["maxLength"] == events.MAX_CONVERSATION_ID_CHARS
    assert props["speaker"]["maxLength"] == events.MAX_SPEAKER_CHARS
    assert props["turn_id"]["oneOf"][0]["maxLength"] == events.MAX_TURN_ID_CHARS
    assert props["turn_id"]["oneOf"][1]["maximum"] == events.MAX_TURN_ID_INT
    assert props["ts"]["oneOf"][0]["maximum"] == events.MAX_TS_S


def test_iso_ts_examples_from_datetime_isoformat() -> None:
    stamp = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert parse_turn(_j(_turn(ts=stamp.isoformat())), None).ts == stamp.timestamp()
