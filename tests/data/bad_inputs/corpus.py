"""Loader of the bad-input corpus in this folder (see README.md).

``load_corpus()`` returns one :class:`Case` per manifest entry, plus the generated
cases (bodies too large to store), each with the raw record value, the record key
and the dead-letter reason the worker must give it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CORPUS_DIR", "Case", "load_corpus", "MEGABYTE_TEXT_CHARS"]

CORPUS_DIR = Path(__file__).resolve().parent
MEGABYTE_TEXT_CHARS = 1_000_000
_STAGES = ("parse", "window", "model")


@dataclass(frozen=True)
class Case:
    """One bad record: ``value`` (None = tombstone), ``key`` (None = no key), expected ``reason``.

    ``stage`` says where the reason is decided: ``parse`` (``events.parse_turn``),
    ``window`` (the worker's duplicate check, after ``repeat`` sends of the same record)
    or ``model`` (the prompt builder: depends on the model's ``max_length``).
    """

    name: str
    value: bytes | None
    key: bytes | None
    reason: str
    stage: str
    repeat: int
    why: str


def _key(raw: object, name: str) -> bytes | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.encode("utf-8")
    if isinstance(raw, dict) and isinstance(raw.get("hex"), str):
        return bytes.fromhex(raw["hex"])
    raise ValueError(f"manifest entry {name!r}: key must be a string, null or {{'hex': ...}}, got {raw!r}")


def _generated(name: str) -> tuple[bytes, bytes]:
    if name == "megabyte_text":
        body = {"conversation_id": "bad-mega", "turn_id": 1, "speaker": "Ross", "text": "x" * MEGABYTE_TEXT_CHARS}
        return json.dumps(body).encode("utf-8"), b"bad-mega"
    raise ValueError(f"unknown generated case {name!r}")


def load_corpus(*, include_generated: bool = True) -> list[Case]:
    """Every case of ``manifest.json``; raises ValueError on a malformed manifest."""
    manifest = json.loads((CORPUS_DIR / "manifest.json").read_text(encoding="utf-8"))
    cases: list[Case] = []
    for entry in manifest["entries"]:
        name = entry["file"] or f"<{entry['why']}>"
        if entry["stage"] not in _STAGES:
            raise ValueError(f"manifest entry {name!r}: stage must be one of {_STAGES}, got {entry['stage']!r}")
        value = None if entry["file"] is None else (CORPUS_DIR / entry["file"]).read_bytes()
        cases.append(
            Case(
                name,
                value,
                _key(entry["key"], name),
                entry["reason"],
                entry["stage"],
                int(entry.get("repeat", 1)),
                entry["why"],
            )
        )
    if include_generated:
        for gen in manifest["generated"]:
            value, key = _generated(gen["name"])
            cases.append(Case(gen["name"], value, key, gen["reason"], "parse", 1, gen["why"]))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("manifest.json names a case twice")
    return cases
