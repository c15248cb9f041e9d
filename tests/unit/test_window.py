"""WindowStore with a fake clock: exact window contents, expiry, LRU order, dedup, restore."""

from __future__ import annotations

import pytest

from erc_stream.prompt import EncodedTurn
from erc_stream.window import TurnCache, WindowStore, WindowTurn


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def _t(i: int, speaker: str = "A") -> WindowTurn:
    return WindowTurn(turn_id=str(i), speaker=speaker, text=f"u{i}")


def _ids(turns: list[WindowTurn]) -> list[str]:
    return [t.turn_id for t in turns]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def evictions() -> list[tuple[str, str]]:
    return []


def _store(clock: FakeClock, evictions: list[tuple[str, str]], **kw: object) -> WindowStore:
    args: dict[str, object] = {"context_turns": 3, "ttl_s": 60.0, "max_conversations": 3}
    args.update(kw)
    return WindowStore(clock=clock, on_evict=lambda c, cause: evictions.append((c, cause)), **args)  # type: ignore[arg-type]


def test_keeps_last_k_turns_oldest_first(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    assert store.context("c") == []
    for i in range(1, 6):
        store.push("c", _t(i))
        expected = [str(j) for j in range(max(1, i - 2), i + 1)]
        assert _ids(store.context("c")) == expected
    assert store.context("c") == [
        WindowTurn("3", "A", "u3"),
        WindowTurn("4", "A", "u4"),
        WindowTurn("5", "A", "u5"),
    ]
    assert len(store) == 1 and evictions == []


def test_context_is_a_copy(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    store.context("c").append(_t(99))
    assert _ids(store.context("c")) == ["1"]


def test_zero_context_turns_keeps_nothing_but_remembers_ids(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, context_turns=0)
    store.push("c", _t(1))
    assert store.context("c") == []
    assert store.seen("c", "1")
    assert store.dedup_turns == 32


def test_conversations_are_separate(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("a", _t(1))
    store.push("b", _t(2, "B"))
    store.push("a", _t(3))
    assert _ids(store.context("a")) == ["1", "3"]
    assert store.context("b") == [WindowTurn("2", "B", "u2")]


def test_ttl_expiry_on_read(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    clock.advance(60.0)  # idle exactly ttl_s: still live
    assert _ids(store.context("c")) == ["1"]
    clock.advance(0.5)
    assert store.context("c") == []
    assert evictions == [("c", "ttl")]
    assert len(store) == 0
    assert store.context("c") == []  # evicted once only
    assert evictions == [("c", "ttl")]


def test_context_does_not_refresh_ttl_but_push_does(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    clock.advance(40)
    store.context("c")
    clock.advance(40)  # 80 s since the push
    assert store.context("c") == []
    store.push("c", _t(2))  # a fresh window
    clock.advance(40)
    store.push("c", _t(3))
    clock.advance(40)  # 40 s since the last push
    assert _ids(store.context("c")) == ["2", "3"]
    assert evictions == [("c", "ttl")]


def test_push_after_expiry_starts_a_new_window(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    store.push("c", _t(2))
    clock.advance(61)
    store.push("c", _t(3))
    assert _ids(store.context("c")) == ["3"]
    assert not store.seen("c", "1")
    assert evictions == [("c", "ttl")]


def test_sweep_evicts_expired_oldest_first(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, max_conversations=10)
    store.push("a", _t(1))
    clock.advance(10)
    store.push("b", _t(1))
    clock.advance(10)
    store.push("c", _t(1))
    clock.advance(10)
    store.push("a", _t(2))  # a is now the most recent
    assert store.sweep() == 0
    clock.advance(45)  # idle: b 65 s, c 55 s, a 45 s
    assert store.sweep() == 1
    assert evictions == [("b", "ttl")]
    clock.advance(10)  # c 65 s, a 55 s
    assert store.sweep() == 1
    clock.advance(10)  # a 65 s
    assert store.sweep() == 1
    assert evictions == [("b", "ttl"), ("c", "ttl"), ("a", "ttl")]
    assert len(store) == 0 and store.sweep() == 0


def test_lru_eviction_order(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)  # at most 3 conversations
    for cid in ("a", "b", "c"):
        store.push(cid, _t(1))
    store.push("a", _t(2))  # order now b, c, a
    store.context("b")  # a read does not count as a use
    store.push("d", _t(1))
    assert evictions == [("b", "lru")]
    store.push("e", _t(1))
    assert evictions == [("b", "lru"), ("c", "lru")]
    assert len(store) == 3
    assert [cid for cid in "abcde" if cid in store] == ["a", "d", "e"]
    assert _ids(store.context("a")) == ["1", "2"]
    assert store.context("b") == []


def test_lru_and_ttl_causes_together(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, max_conversations=2)
    store.push("a", _t(1))
    clock.advance(30)
    store.push("b", _t(1))
    store.push("c", _t(1))
    clock.advance(31)  # b and c idle 31 s
    assert store.context("b") != []
    clock.advance(30)  # b and c idle 61 s
    assert store.sweep() == 2
    assert evictions == [("a", "lru"), ("b", "ttl"), ("c", "ttl")]


def test_seen_detects_recent_duplicates_only(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, dedup_turns=4)
    assert not store.seen("c", "1")
    for i in range(1, 7):
        store.push("c", _t(i))
    assert [i for i in range(1, 7) if store.seen("c", str(i))] == [3, 4, 5, 6]
    assert not store.seen("other", "6")
    # A redelivered id counts as new again (moves to the newest position).
    store.push("c", _t(3))
    store.push("c", _t(7))
    assert [i for i in range(1, 8) if store.seen("c", str(i))] == [3, 5, 6, 7]
    assert _ids(store.context("c")) == ["6", "3", "7"]


def test_seen_on_expired_conversation(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    clock.advance(61)
    assert not store.seen("c", "1")
    assert evictions == [("c", "ttl")]


def test_restore_replaces_window_and_ids(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(100))
    store.restore("c", [_t(i) for i in range(1, 6)])
    assert _ids(store.context("c")) == ["3", "4", "5"]
    assert [i for i in (1, 2, 5, 100) if store.seen("c", str(i))] == [1, 2, 5]
    store.push("c", _t(6))
    assert _ids(store.context("c")) == ["4", "5", "6"]
    assert evictions == []


def test_restore_marks_recent_and_bounds(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, max_conversations=2)
    store.push("a", _t(1))
    store.push("b", _t(1))
    clock.advance(50)
    store.restore("a", [_t(2, "X")])
    store.restore("z", [])
    assert evictions == [("b", "lru")]
    assert store.context("z") == [] and "z" in store
    clock.advance(20)  # a and z restored 20 s ago
    assert store.context("a") == [WindowTurn("2", "X", "u2")]


def test_discard_does_not_report_eviction(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    store.push("c", _t(1))
    assert store.discard("c") is True
    assert store.discard("c") is False
    assert len(store) == 0 and evictions == []


def test_cache_kept(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions)
    encoded = EncodedTurn((101,), (7592,), (101, 7592))
    store.push("c", WindowTurn("1", "A", "hi", cache=TurnCache(3, encoded)))
    assert store.context("c")[0].cache == TurnCache(generation=3, encoded=encoded)


def test_resize_grows_live_windows(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    """A hot reload to a model with more context: windows that exist keep filling up to the new bound."""
    store = _store(clock, evictions, context_turns=2)
    for i in range(1, 4):
        store.push("c", _t(i))
    assert _ids(store.context("c")) == ["2", "3"]
    store.resize(4)
    assert store.context_turns == 4
    assert _ids(store.context("c")) == ["2", "3"]  # what was dropped stays dropped
    for i in range(4, 7):
        store.push("c", _t(i))
    assert _ids(store.context("c")) == ["3", "4", "5", "6"]
    store.push("new", _t(1))
    assert _ids(store.context("new")) == ["1"]


def test_resize_shrinks_live_windows(clock: FakeClock, evictions: list[tuple[str, str]]) -> None:
    store = _store(clock, evictions, context_turns=3)
    for i in range(1, 5):
        store.push("c", _t(i))
    store.resize(1)
    assert _ids(store.context("c")) == ["4"]
    assert store.seen("c", "2")  # turn ids for dedup are kept independently of the window
    store.push("c", _t(5))
    assert _ids(store.context("c")) == ["5"]
    with pytest.raises(ValueError, match="context_turns must be an int >= 0, got -1"):
        store.resize(-1)


def test_without_callback(clock: FakeClock) -> None:
    store = WindowStore(context_turns=1, ttl_s=1.0, max_conversations=1, clock=clock)
    store.push("a", _t(1))
    store.push("b", _t(2))
    assert len(store) == 1 and "b" in store


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"context_turns": -1}, "context_turns must be an int >= 0, got -1"),
        ({"context_turns": 2.0}, "context_turns must be an int >= 0, got 2.0"),
        ({"ttl_s": 0}, "ttl_s must be > 0, got 0"),
        ({"max_conversations": 0}, "max_conversations must be an int >= 1, got 0"),
        ({"dedup_turns": 0}, "dedup_turns must be an int >= 1, got 0"),
    ],
)
def test_invalid_settings(kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"context_turns": 2, "ttl_s": 1.0, "max_conversations": 1}
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        WindowStore(**args)  # type: ignore[arg-type]
