"""Property-based tests (hypothesis) of the two pure stages that see untrusted input first:
``events.parse_turn`` and ``window.WindowStore``.

Properties:
- ``parse_turn`` on any bytes and any JSON either returns a ``ChatTurn`` that satisfies
  the contract or raises ``BadInput`` with a ``Reason``; nothing else escapes.
- ``WindowStore`` under any sequence of pushes, reads, sweeps and clock steps behaves like
  a slow reference model (full scans instead of the O(1) ordered dict), never holds more
  than ``max_conversations`` and reports every eviction once with its cause.
Plus the scale cases: thousands of turns in one conversation, thousands of conversations
at once, and the memory of a 10k-bounded store fed 100k conversations (tracemalloc).
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from collections import deque

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from erc_stream.events import (
    MAX_CONVERSATION_ID_CHARS,
    MAX_SPEAKER_CHARS,
    MAX_TURN_ID_CHARS,
    BadInput,
    ChatTurn,
    Reason,
    parse_turn,
)
from erc_stream.prompt import EncodedTurn
from erc_stream.window import EVICT_LRU, EVICT_TTL, TurnCache, WindowStore, WindowTurn

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_CONTROL = {*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)}


def _parse_or_reason(value: bytes | None, key: bytes | None, max_text_chars: int = 4000) -> ChatTurn | Reason:
    """The property itself: a ChatTurn or a BadInput; any other exception fails the test."""
    try:
        turn = parse_turn(value, key, max_text_chars=max_text_chars)
    except BadInput as exc:
        assert isinstance(exc.reason, Reason)
        assert exc.detail and str(exc).startswith(exc.reason.value + ": ")
        return exc.reason
    _check_turn(turn, key, max_text_chars)
    return turn


def _check_turn(turn: ChatTurn, key: bytes | None, max_text_chars: int) -> None:
    assert isinstance(turn, ChatTurn)
    assert isinstance(turn.conversation_id, str) and 1 <= len(turn.conversation_id) <= MAX_CONVERSATION_ID_CHARS
    assert isinstance(turn.turn_id, str) and 1 <= len(turn.turn_id) <= MAX_TURN_ID_CHARS
    assert isinstance(turn.speaker, str) and 1 <= len(turn.speaker) <= MAX_SPEAKER_CHARS
    assert isinstance(turn.text, str) and turn.text.strip() and len(turn.text) <= max_text_chars
    assert not any(ord(ch) in _CONTROL for ch in turn.text)
    assert turn.ts is None or (isinstance(turn.ts, float) and math.isfinite(turn.ts))
    assert turn.metadata is None or isinstance(turn.metadata, dict)
    assert key is None or key == turn.conversation_id.encode("utf-8")


# -- parse_turn -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(["conversation_id", "turn_id", "speaker", "text", "ts", "metadata", "extra", ""])
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)


@SETTINGS
@given(value=st.none() | st.binary(max_size=300), key=st.none() | st.binary(max_size=20))
def test_any_bytes_give_a_turn_or_bad_input(value: bytes | None, key: bytes | None) -> None:
    _parse_or_reason(value, key)


def _encode(obj: object, ascii_escapes: bool) -> bytes:
    """JSON the way odd producers write it: big integers as digits, lone surrogates either
    escaped (``\\ud800``) or written as raw (invalid) UTF-8 bytes."""
    return json.dumps(obj, ensure_ascii=ascii_escapes).encode("utf-8", "surrogatepass")


@SETTINGS
@given(obj=json_values, ascii_escapes=st.booleans())
def test_any_json_value_gives_a_turn_or_bad_input(obj: object, ascii_escapes: bool) -> None:
    _parse_or_reason(_encode(obj, ascii_escapes), None)


@SETTINGS
@given(
    obj=st.dictionaries(field_names, json_values, max_size=7),
    ascii_escapes=st.booleans(),
    key=st.none() | st.sampled_from([b"c", b"", b"\xff"]),
)
def test_turn_shaped_objects_with_any_field_values(obj: dict, ascii_escapes: bool, key: bytes | None) -> None:
    _parse_or_reason(_encode(obj, ascii_escapes), key)


@SETTINGS
@given(
    conversation_id=st.text(min_size=1, max_size=MAX_CONVERSATION_ID_CHARS),
    turn_id=st.integers(0, 2**63 - 1) | st.text(min_size=1, max_size=MAX_TURN_ID_CHARS),
    speaker=st.text(min_size=1, max_size=MAX_SPEAKER_CHARS),
    text=texts,
    with_key=st.booleans(),
)
def test_well_formed_turns_parse_or_fail_only_on_text(conversation_id, turn_id, speaker, text, with_key) -> None:
    body = {"conversation_id": conversation_id, "turn_id": turn_id, "speaker": speaker, "text": text}
    try:
        raw = orjson.dumps(body)
    except orjson.JSONEncodeError:  # lone surrogates cannot be encoded as UTF-8 at all
        assume(False)
    key = conversation_id.encode("utf-8") if with_key else None
    result = _parse_or_reason(raw, key)
    cleaned = "".join(ch for ch in text if ord(ch) not in _CONTROL)
    if cleaned.strip():
        assert isinstance(result, ChatTurn)
        assert (result.conversation_id, result.turn_id, result.speaker, result.text) == (
            conversation_id,
            str(turn_id),
            speaker,
            cleaned,
        )
    else:
        assert result is Reason.EMPTY_TEXT


@SETTINGS
@given(text=st.text(min_size=1, max_size=60), max_text_chars=st.integers(1, 50))
def test_text_length_limit_is_on_the_text_as_sent(text: str, max_text_chars: int) -> None:
    try:
        raw = orjson.dumps({"conversation_id": "c", "turn_id": 1, "speaker": "A", "text": text})
    except orjson.JSONEncodeError:
        assume(False)
    result = _parse_or_reason(raw, None, max_text_chars=max_text_chars)
    if len(text) > max_text_chars:
        assert result is Reason.TEXT_TOO_LONG


@SETTINGS
@given(key=st.binary(max_size=20))
def test_any_key_other_than_the_conversation_id_is_a_mismatch(key: bytes) -> None:
    assume(key != b"conv-1")
    raw = orjson.dumps({"conversation_id": "conv-1", "turn_id": 1, "speaker": "A", "text": "hi"})
    assert _parse_or_reason(raw, key) is Reason.KEY_MISMATCH


@pytest.mark.parametrize("chars", [1_000_000, 4_000_000])
def test_megabyte_texts_are_rejected_quickly(chars: int) -> None:
    raw = orjson.dumps({"conversation_id": "c", "turn_id": 1, "speaker": "A", "text": "\u00e9" * chars})
    t0 = time.perf_counter()
    assert _parse_or_reason(raw, None) is Reason.TEXT_TOO_LONG
    assert time.perf_counter() - t0 < 2.0  # no quadratic work on huge input


def test_control_characters_alone_are_empty_text() -> None:
    text = "".join(chr(c) for c in sorted(_CONTROL))
    raw = orjson.dumps({"conversation_id": "c", "turn_id": 1, "speaker": "A", "text": text})
    assert _parse_or_reason(raw, None) is Reason.EMPTY_TEXT


# -- WindowStore: a state machine against a reference model ------------------------------


class _RefConversation:
    def __init__(self, k: int, dedup: int, now: float, seq: int) -> None:
        self.turns: deque[str] = deque(maxlen=k)
        self.ids: list[str] = []
        self.dedup = dedup
        self.last_used = now
        self.seq = seq

    def append(self, turn_id: str) -> None:
        self.turns.append(turn_id)
        if turn_id in self.ids:
            self.ids.remove(turn_id)
        self.ids.append(turn_id)
        del self.ids[: max(0, len(self.ids) - self.dedup)]


class WindowMachine(RuleBasedStateMachine):
    """Random pushes, reads, restores, discards, sweeps and clock steps; compared with a
    reference that scans everything (LRU = smallest use sequence, TTL = full scan)."""

    @initialize(
        k=st.integers(0, 4),
        max_conversations=st.integers(1, 6),
        ttl_s=st.sampled_from([1.0, 5.0, 1e9]),
        dedup=st.none() | st.integers(1, 6),
    )
    def setup(self, k: int, max_conversations: int, ttl_s: float, dedup: int | None) -> None:
        self.now = 0.0
        self.evicted: list[tuple[str, str]] = []
        self.store = WindowStore(
            context_turns=k,
            ttl_s=ttl_s,
            max_conversations=max_conversations,
            clock=lambda: self.now,
            on_evict=lambda c, cause: self.evicted.append((c, cause)),
            dedup_turns=dedup,
        )
        self.k, self.max, self.ttl = k, max_conversations, ttl_s
        self.dedup = self.store.dedup_turns
        self.ref: dict[str, _RefConversation] = {}
        self.expected_evictions: list[tuple[str, str]] = []
        self.seq = 0

    def _ref_expire(self, cid: str) -> None:
        conv = self.ref.get(cid)
        if conv is not None and self.now - conv.last_used > self.ttl:
            del self.ref[cid]
            self.expected_evictions.append((cid, EVICT_TTL))

    def _ref_touch(self, conv: _RefConversation) -> None:
        self.seq += 1
        conv.seq = self.seq
        conv.last_used = self.now
        while len(self.ref) > self.max:
            victim = min(self.ref, key=lambda c: self.ref[c].seq)
            del self.ref[victim]
            self.expected_evictions.append((victim, EVICT_LRU))

    conversation_ids = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"])
    turn_ids = st.integers(0, 9).map(str)  # small range: duplicates and out-of-order ids are common

    @rule(cid=conversation_ids, turn_id=turn_ids)
    def push(self, cid: str, turn_id: str) -> None:
        self.store.push(cid, WindowTurn(turn_id, "s", f"text {turn_id}"))
        self._ref_expire(cid)
        conv = self.ref.get(cid)
        if conv is None:
            conv = self.ref[cid] = _RefConversation(self.k, self.dedup, self.now, 0)
        conv.append(turn_id)
        self._ref_touch(conv)

    @rule(cid=conversation_ids, ids=st.lists(turn_ids, max_size=6))
    def restore(self, cid: str, ids: list[str]) -> None:
        self.store.restore(cid, [WindowTurn(t, "s", t) for t in ids])
        conv = _RefConversation(self.k, self.dedup, self.now, 0)
        for t in ids:
            conv.append(t)
        self.ref.pop(cid, None)  # replaced, not evicted
        self.ref[cid] = conv
        self._ref_touch(conv)

    @rule(cid=conversation_ids)
    def read(self, cid: str) -> None:
        got = [t.turn_id for t in self.store.context(cid)]
        self._ref_expire(cid)
        conv = self.ref.get(cid)
        assert got == ([] if conv is None else list(conv.turns))

    @rule(cid=conversation_ids, turn_id=turn_ids)
    def seen(self, cid: str, turn_id: str) -> None:
        got = self.store.seen(cid, turn_id)
        self._ref_expire(cid)
        conv = self.ref.get(cid)
        assert got == (conv is not None and turn_id in conv.ids)

    @rule(cid=conversation_ids)
    def discard(self, cid: str) -> None:
        assert self.store.discard(cid) == (self.ref.pop(cid, None) is not None)

    @rule()
    def sweep(self) -> None:
        n = self.store.sweep()
        expired = sorted(
            (c for c in self.ref if self.now - self.ref[c].last_used > self.ttl), key=lambda c: self.ref[c].seq
        )
        for cid in expired:
            del self.ref[cid]
            self.expected_evictions.append((cid, EVICT_TTL))
        assert n == len(expired)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 1.5, 6.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def same_conversations(self) -> None:
        assert len(self.store) == len(self.ref) <= self.max
        assert all(cid in self.store for cid in self.ref)
        assert self.evicted == self.expected_evictions


TestWindowMachine = WindowMachine.TestCase
TestWindowMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


# -- WindowStore at scale ----------------------------------------------------------------


def test_thousands_of_turns_in_one_conversation_stay_bounded() -> None:
    store = WindowStore(context_turns=5, ttl_s=60, max_conversations=10)
    for i in range(20_000):
        store.push("long", WindowTurn(str(i), "A" if i % 2 else "B", f"turn {i}"))
    assert [t.turn_id for t in store.context("long")] == [str(i) for i in range(19_995, 20_000)]
    assert store.dedup_turns == 32
    assert all(store.seen("long", str(i)) for i in range(20_000 - 32, 20_000))
    assert not store.seen("long", str(20_000 - 33))  # older ids are forgotten: memory stays O(dedup_turns)
    assert len(store) == 1


def test_out_of_order_and_repeated_turn_ids_follow_arrival_order() -> None:
    # The window is in arrival (= partition) order; turn ids are opaque strings, never
    # compared as numbers. The worker asks seen() before push(); the store itself
    # accepts a repeated id and keeps it once in its id memory, as the newest.
    store = WindowStore(context_turns=3, ttl_s=60, max_conversations=10, dedup_turns=3)
    for tid in ["5", "3", "4", "3"]:
        store.push("c", WindowTurn(tid, "A", tid))
    assert [t.turn_id for t in store.context("c")] == ["3", "4", "3"]
    store.push("c", WindowTurn("9", "A", "9"))
    store.push("c", WindowTurn("8", "A", "8"))
    # Id memory (3 ids, oldest first): 5,3,4 -> the repeat moves 3 to the end: 5,4,3 ->
    # 9 drops 5: 4,3,9 -> 8 drops 4: 3,9,8.
    assert [store.seen("c", t) for t in ["5", "4", "3", "9", "8"]] == [False, False, True, True, True]


def test_thousands_of_conversations_at_once_keep_the_lru_bound() -> None:
    evicted: list[tuple[str, str]] = []
    store = WindowStore(
        context_turns=2, ttl_s=3600, max_conversations=1000, on_evict=lambda c, why: evicted.append((c, why))
    )
    for i in range(5000):
        store.push(f"c{i}", WindowTurn("1", "A", "hello"))
        assert len(store) <= 1000
    assert len(store) == 1000
    assert evicted == [(f"c{i}", EVICT_LRU) for i in range(4000)]
    assert all(f"c{i}" in store for i in range(4000, 5000))
    # A conversation used again moves to the back: the next victim is the oldest other one.
    store.push("c4000", WindowTurn("2", "A", "again"))
    store.push("new", WindowTurn("1", "A", "x"))
    assert evicted[-1] == ("c4001", EVICT_LRU) and "c4000" in store


def _feed(store: WindowStore, conversations: int, *, first: int = 0, with_cache: bool = False) -> None:
    """Two turns per conversation (~60-character texts); ``with_cache`` adds token ids
    cached the way the worker caches them (``TurnCache(generation, EncodedTurn)``, 18 ids a turn)."""
    for i in range(first, first + conversations):
        cid = f"meld-live-{i:06d}"
        for j in range(2):
            cache = None
            if with_cache:
                ids = tuple(1000 + ((i * 7 + j * 13 + n) % 28000) for n in range(18))
                cache = TurnCache(1, EncodedTurn(ids[:2], ids[2:], ids))
            store.push(cid, WindowTurn(str(j), "Speaker", f"utterance {j} of conversation {i}, " + "x" * 20, cache))


@pytest.mark.slow
def test_memory_of_a_10k_bounded_store_fed_100k_conversations(record_property) -> None:
    """100k conversations through a store bounded at 10k: it holds what 10k conversations
    hold (tracemalloc, bytes allocated and still alive)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ten_k = WindowStore(context_turns=2, ttl_s=3600, max_conversations=10_000)
        _feed(ten_k, 10_000)
        held_10k = tracemalloc.get_traced_memory()[0] - base
        del ten_k
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        store = WindowStore(context_turns=2, ttl_s=3600, max_conversations=10_000)
        t0 = time.perf_counter()
        _feed(store, 100_000)
        seconds = time.perf_counter() - t0
        current, peak = tracemalloc.get_traced_memory()
        held_100k, peak_100k = current - base, peak - base
        # The worker also caches token ids in each WindowTurn: measure that on 1k conversations.
        base = tracemalloc.get_traced_memory()[0]
        cached = WindowStore(context_turns=2, ttl_s=3600, max_conversations=1000)
        _feed(cached, 1000, with_cache=True)
        per_conv_cached = (tracemalloc.get_traced_memory()[0] - base) / 1000
    finally:
        tracemalloc.stop()
    assert len(store) == 10_000
    per_conv = held_100k / 10_000
    record_property("window_store_bytes_100k_into_10k", held_100k)
    print(
        f"\nWindowStore(max_conversations=10_000, context_turns=2) fed 100k conversations x 2 turns: "
        f"{held_100k / 2**20:.1f} MiB held ({per_conv:.0f} B/conversation), peak {peak_100k / 2**20:.1f} MiB; "
        f"fed 10k: {held_10k / 2**20:.1f} MiB; with the worker's cached token ids: {per_conv_cached:.0f} "
        "B/conversation "
        f"(~{per_conv_cached * 10_000 / 2**20:.0f} MiB at 10k); {seconds:.1f} s under tracemalloc"
    )
    # Fed 10x more conversations, it holds what 10k hold (within 5 %) and never peaks far above.
    assert held_100k < 1.05 * held_10k
    assert peak_100k < 1.2 * held_100k
    assert per_conv < 2048 and per_conv_cached < 6144
