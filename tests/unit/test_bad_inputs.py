"""The bad-input corpus (tests/data/bad_inputs) at the parser level: every case gets its reason.

The same corpus goes through a real worker and broker in tests/faults/test_bad_input_dlq.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from erc_stream.errors import PromptTooLongError
from erc_stream.events import (
    MAX_DETAIL_CHARS,
    MAX_DLQ_ORIGINAL_BYTES,
    BadInput,
    ChatTurn,
    Reason,
    SourceRef,
    dead_letter,
    parse_turn,
)
from erc_stream.window import WindowStore, WindowTurn
from tests.data.bad_inputs.corpus import CORPUS_DIR, MEGABYTE_TEXT_CHARS, Case, load_corpus

ROOT = Path(__file__).resolve().parents[2]
DLQ_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "dead_letter.schema.json").read_text()))
SRC = SourceRef("chat.turns", 0, 7)
CASES = load_corpus()
TEST_MODEL_MAX_LENGTH = 128  # tests/fixtures_model.publish_test_model's default


def _ids(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


def test_manifest_covers_every_file_and_names_known_reasons() -> None:
    listed = {c.name for c in CASES}
    stored = {p.name for p in CORPUS_DIR.iterdir() if p.is_file()} - {"manifest.json", "README.md", "corpus.py"}
    assert stored <= listed, f"files not in manifest.json: {sorted(stored - listed)}"
    known = {r.value for r in Reason}
    assert {c.reason for c in CASES} <= known


def test_corpus_reaches_every_input_reason() -> None:
    # internal_error cannot be caused by input: it is a model/runtime failure.
    assert {c.reason for c in CASES} == {r.value for r in Reason} - {Reason.INTERNAL.value}


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.stage == "parse"], ids=_ids([c for c in CASES if c.stage == "parse"])
)
def test_parse_stage_case_gets_its_reason(case: Case) -> None:
    with pytest.raises(BadInput) as info:
        parse_turn(case.value, case.key)
    err = info.value
    assert err.reason.value == case.reason, err.detail
    assert err.detail.strip()
    letter = orjson.loads(
        dead_letter(case.value, case.key, reason=err.reason, detail=err.detail, source=SRC, failed_at=1.0)
    )
    DLQ_SCHEMA.validate(letter)
    assert letter["reason"] == case.reason
    if case.value is not None and len(case.value) <= MAX_DLQ_ORIGINAL_BYTES:
        assert base64.b64decode(letter["value_b64"]) == case.value


def test_window_stage_duplicate_is_valid_then_seen() -> None:
    (case,) = [c for c in CASES if c.stage == "window"]
    assert case.repeat == 2
    turn = parse_turn(case.value, case.key)
    store = WindowStore(context_turns=2, ttl_s=60, max_conversations=10)
    assert not store.seen(turn.conversation_id, turn.turn_id)
    store.push(turn.conversation_id, WindowTurn(turn.turn_id, turn.speaker, turn.text))
    assert store.seen(turn.conversation_id, turn.turn_id)


def test_model_stage_prompt_too_long_with_the_test_models_max_length() -> None:
    from transformers import AutoTokenizer

    from erc_stream.model import default_encoder_path
    from erc_stream.prompt import PromptBuilder

    (case,) = [c for c in CASES if c.stage == "model"]
    turn = parse_turn(case.value, case.key)
    assert len(turn.text) <= 4000  # within max_text_chars: only the model's limit rejects it
    tok = AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)
    builder = PromptBuilder(tok, context_turns=2, max_length=TEST_MODEL_MAX_LENGTH)
    with pytest.raises(PromptTooLongError, match="max_length=128"):
        builder.build([], builder.encode_turn(turn.speaker, turn.text))


def test_megabyte_text_dead_letter_fits_a_kafka_message() -> None:
    (case,) = [c for c in CASES if c.name == "megabyte_text"]
    assert len(case.value) > MEGABYTE_TEXT_CHARS
    with pytest.raises(BadInput) as info:
        parse_turn(case.value, case.key)
    assert info.value.reason is Reason.TEXT_TOO_LONG
    assert f"text has {MEGABYTE_TEXT_CHARS} characters, at most 4000 allowed" in info.value.detail
    body = dead_letter(
        case.value, case.key, reason=info.value.reason, detail=info.value.detail, source=SRC, failed_at=1.0
    )
    assert len(body) < 1_000_000  # Kafka's default message.max.bytes is 1048588
    letter = orjson.loads(body)
    DLQ_SCHEMA.validate(letter)
    assert base64.b64decode(letter["value_b64"]) == case.value[:MAX_DLQ_ORIGINAL_BYTES]
    assert letter["detail"].endswith(f"[value_b64 holds the first {MAX_DLQ_ORIGINAL_BYTES} of {len(case.value)} bytes]")


def test_oversized_key_and_long_detail_are_both_capped() -> None:
    key = b"k" * (MAX_DLQ_ORIGINAL_BYTES + 5)
    letter = orjson.loads(
        dead_letter(b"v", key, reason=Reason.KEY_MISMATCH, detail="d" * 5000, source=SRC, failed_at=1.0)
    )
    DLQ_SCHEMA.validate(letter)
    note = f" [key_b64 holds the first {MAX_DLQ_ORIGINAL_BYTES} of {len(key)} bytes]"
    assert len(letter["detail"]) == MAX_DETAIL_CHARS
    assert letter["detail"] == "d" * (MAX_DETAIL_CHARS - len(note) - 1) + "\u2026" + note
    assert base64.b64decode(letter["key_b64"]) == key[:MAX_DLQ_ORIGINAL_BYTES]
    assert base64.b64decode(letter["value_b64"]) == b"v"


# Documented handling of inputs that are accepted (docs/reliability.md, "Bad input").


def _body(**over: object) -> bytes:
    base: dict[str, object] = {"conversation_id": "c", "turn_id": 1, "speaker": "A", "text": "hi"}
    base.update(over)
    return orjson.dumps(base)


def test_duplicate_json_keys_last_one_wins() -> None:
    raw = b'{"conversation_id": "c", "turn_id": 1, "speaker": "A", "text": "first", "text": "second"}'
    assert parse_turn(raw, b"c").text == "second"


def test_control_characters_inside_text_are_removed() -> None:
    turn = parse_turn(_body(text="a\u0000b\u001bc\u007fd\u009fe\tf\ng"), None)
    assert turn.text == "abcde\tf\ng"


def test_metadata_nested_within_the_parser_limit_is_kept() -> None:
    deep: object = 1
    for _ in range(200):
        deep = {"a": deep}
    turn = parse_turn(_body(metadata=deep), None)
    assert isinstance(turn, ChatTurn) and turn.metadata == deep


def test_negative_zero_turn_id_is_zero() -> None:
    assert parse_turn(b'{"conversation_id": "c", "turn_id": -0.0, "speaker": "A", "text": "hi"}', None).turn_id == "0"
