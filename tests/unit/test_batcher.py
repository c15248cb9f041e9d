"""Batch forming: oldest first, size and padded-token bounds, length grouping, per-key order, wait time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from erc_stream.batcher import MicroBatcher, form_batch


class FakeClock:
    def __init__(self, now_s: float = 10.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


# ---------------------------------------------------------------- form_batch


def test_form_batch_empty() -> None:
    assert form_batch([], max_size=4, max_tokens=100) == []


def test_oldest_is_taken_even_when_it_alone_exceeds_max_tokens() -> None:
    assert form_batch([500], max_size=4, max_tokens=100) == [0]
    assert form_batch([500, 1, 2], max_size=4, max_tokens=100) == [0]


def test_size_bound_and_closest_lengths_first() -> None:
    # distances to the oldest (10): i1=40, i2=1, i3=1, i4=20; ties go to the older one
    assert form_batch([10, 50, 11, 9, 30], max_size=3, max_tokens=1000) == [0, 2, 3]
    assert form_batch([10, 50, 11, 9, 30], max_size=4, max_tokens=1000) == [0, 2, 3, 4]
    assert form_batch([10, 50, 11, 9, 30], max_size=1, max_tokens=1000) == [0]


def test_length_grouping_around_the_oldest() -> None:
    # distances to 100: i1=90, i2=5, i3=88, i4=5, i5=2 -> i5, i2, i4, ...
    assert form_batch([100, 10, 95, 12, 105, 98], max_size=3, max_tokens=10_000) == [0, 2, 5]


def test_padded_token_bound_is_longest_times_count() -> None:
    assert form_batch([10, 10, 10, 40], max_size=10, max_tokens=30) == [0, 1, 2]  # 3 x 10 = 30
    assert form_batch([10, 12, 30, 31], max_size=10, max_tokens=62) == [0, 1]  # 3 x 30 = 90 > 62
    assert form_batch([10, 12, 30, 31], max_size=10, max_tokens=93) == [0, 1, 2]  # 4 x 31 = 124 > 93


def test_a_candidate_that_does_not_fit_does_not_stop_the_search() -> None:
    # 30 is closer to 20 but 2 x 30 = 60 > 40; the farther 5 still fits (2 x 20 = 40).
    assert form_batch([20, 30, 5], max_size=10, max_tokens=40) == [0, 2]


# ---------------------------------------------------------------- MicroBatcher


def test_wait_left_and_ready_follow_the_oldest_item() -> None:
    clock = FakeClock(10.0)
    b: MicroBatcher[str] = MicroBatcher(4, 1000, 0.5, clock=clock)
    assert b.wait_left_s() == 0.5
    assert not b.ready()
    b.add("a", 10)
    assert b.wait_left_s() == 0.5
    assert not b.ready()
    clock.now_s = 10.25
    b.add("b", 10)
    assert b.wait_left_s() == 0.25  # measured from "a", the oldest
    assert not b.ready()
    clock.now_s = 10.5
    assert b.wait_left_s() == 0.0
    assert b.ready()
    assert b.take() == ["a", "b"]
    assert len(b) == 0
    assert b.wait_left_s() == 0.5
    assert b.take() == []


def test_full_by_size_is_ready_without_waiting() -> None:
    clock = FakeClock()
    b: MicroBatcher[int] = MicroBatcher(3, 1000, 5.0, clock=clock)
    for i in range(2):
        b.add(i, 8)
    assert not b.full() and not b.ready()
    b.add(2, 8)
    assert b.full() and b.ready()
    assert b.take() == [0, 1, 2]


def test_full_by_tokens() -> None:
    b: MicroBatcher[str] = MicroBatcher(32, 100, 5.0, clock=FakeClock())
    b.add("x", 40)
    assert not b.full()  # 40 x 2 = 80 <= 100: one more could still join
    b.add("y", 10)
    assert b.full()  # 40 x 3 = 120 > 100
    assert b.ready()
    assert b.take() == ["x", "y"]


def test_oversized_oldest_goes_alone() -> None:
    b: MicroBatcher[str] = MicroBatcher(4, 50, 0.0, clock=FakeClock())
    b.add("big", 80)
    b.add("s", 5)
    assert b.take() == ["big"]
    assert b.take() == ["s"]


def test_never_takes_an_item_ahead_of_an_earlier_one_with_the_same_key() -> None:
    b: MicroBatcher[str] = MicroBatcher(2, 1000, 0.0, clock=FakeClock())
    b.add("A1", 10, key="A")
    b.add("B1", 50, key="B")
    b.add("A2", 50, key="A")
    b.add("A3", 11, key="A")
    # By length alone the batch would be [A1, A3], but A3 would overtake A2; A2 ties with
    # B1 in distance (40) and B1 is older, so B1 fills the second place.
    assert b.take() == ["A1", "B1"]
    assert b.take() == ["A2", "A3"]
    assert len(b) == 0


def test_form_batch_with_keys_fills_the_batch_in_key_order() -> None:
    # lengths 10, 11, 50, 12 with keys A, A, B, A: A2 and A3 follow A1, B1 is far in length.
    assert form_batch([10, 11, 50, 12], max_size=3, max_tokens=1000, keys=["A", "A", "B", "A"]) == [0, 1, 3]
    # A3 (12) is closest after A1 but may only follow A2 (90); with max_size 2, B1 (13) goes.
    assert form_batch([10, 90, 13, 12], max_size=2, max_tokens=1000, keys=["A", "A", "B", "A"]) == [0, 2]
    assert form_batch([10, 90, 13, 12], max_size=4, max_tokens=1000, keys=["A", "A", "B", "A"]) == [0, 1, 2, 3]
    # A later item of a key whose earlier item does not fit by tokens stays out too.
    assert form_batch([10, 90, 12], max_size=4, max_tokens=100, keys=["A", "B", "B"]) == [0]
    # None keys are unordered: same result as without keys.
    assert form_batch([10, 50, 11, 9, 30], max_size=3, max_tokens=1000, keys=[None] * 5) == [0, 2, 3]


def test_interleaved_conversations_still_give_full_batches() -> None:
    # 8 conversations of 8 turns, interleaved round-robin, as a busy worker receives them:
    # every batch is full although no turn may overtake an earlier turn of its conversation.
    b: MicroBatcher[tuple[int, int]] = MicroBatcher(8, 10_000, 0.0, clock=FakeClock())
    for turn in range(8):
        for conv in range(8):
            b.add((conv, turn), 20 + (conv * 7 + turn * 13) % 40, key=conv)
    sizes = []
    while len(b):
        sizes.append(len(b.take()))
    assert sizes == [8] * 8


def test_same_lengths_without_keys_or_with_other_keys_are_grouped() -> None:
    for keys in ((None, None, None, None), ("A", "B", "A", "C")):
        b: MicroBatcher[str] = MicroBatcher(2, 1000, 0.0, clock=FakeClock())
        for name, length, key in zip(("A1", "B1", "A2", "X3"), (10, 50, 50, 11), keys, strict=True):
            b.add(name, length, key=key)
        assert b.take() == ["A1", "X3"]
        assert b.take() == ["B1", "A2"]


def test_only_the_pool_of_oldest_items_is_searched() -> None:
    for pool_factor, expected in ((1, ["a", "b"]), (4, ["a", "c"])):
        b: MicroBatcher[str] = MicroBatcher(2, 1000, 0.0, clock=FakeClock(), pool_factor=pool_factor)
        for name, length in (("a", 10), ("b", 100), ("c", 10)):
            b.add(name, length)
        assert b.take() == expected


def test_drain_returns_everything_in_order() -> None:
    b: MicroBatcher[int] = MicroBatcher(2, 1000, 0.0, clock=FakeClock())
    for i in range(5):
        b.add(i, 10 + i)
    assert b.take() == [0, 1]
    assert b.drain() == [2, 3, 4]
    assert len(b) == 0


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(1, 200), st.sampled_from("ABCDE")), max_size=60),
    max_size=st.integers(1, 8),
    max_tokens=st.integers(16, 600),
)
def test_policy_invariants(items: list[tuple[int, str]], max_size: int, max_tokens: int) -> None:
    """Whatever arrives: each batch holds the oldest waiting item, stays within its bounds
    (one oversized item may go alone), keeps per-key order, and every item leaves exactly once."""
    b: MicroBatcher[int] = MicroBatcher(max_size, max_tokens, 0.0, clock=FakeClock())
    for i, (length, key) in enumerate(items):
        b.add(i, length, key=key)
    waiting = list(range(len(items)))
    out: list[int] = []
    while len(b):
        batch = b.take()
        assert batch, "take() returned nothing while items wait"
        assert batch[0] == waiting[0]
        assert len(batch) <= max_size
        longest = max(items[i][0] for i in batch)
        assert len(batch) == 1 or longest * len(batch) <= max_tokens
        assert batch == sorted(batch)
        for i in batch:
            waiting.remove(i)
        out.extend(batch)
    assert sorted(out) == list(range(len(items)))
    for key in "ABCDE":
        mine = [i for i in out if items[i][1] == key]
        assert mine == sorted(mine)
