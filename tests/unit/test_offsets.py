"""Offset bookkeeping: only the contiguous acknowledged prefix of each partition is committable."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from erc_stream.offsets import OffsetTracker, PartitionOffsets

TP0 = TopicPartition("chat.turns", 0)
TP1 = TopicPartition("chat.turns", 1)
OTHER = TopicPartition("other", 0)


def _read(part: PartitionOffsets, offsets) -> None:
    for off in offsets:
        part.read(off)


def test_nothing_committable_before_any_ack() -> None:
    part = PartitionOffsets()
    _read(part, range(5))
    assert part.to_commit() is None
    assert part.in_flight == 5


def test_in_order_acks_commit_one_past_the_last() -> None:
    part = PartitionOffsets()
    _read(part, range(3))
    part.done(0)
    assert part.to_commit() == 1
    part.done(1)
    part.done(2)
    assert part.to_commit() == 3
    assert part.in_flight == 0


def test_out_of_order_acks_wait_for_the_gap() -> None:
    part = PartitionOffsets()
    _read(part, range(5))
    part.done(1)
    part.done(2)
    part.done(4)
    assert part.to_commit() is None  # offset 0 is still in flight
    assert part.in_flight == 5
    part.done(0)
    assert part.to_commit() == 3  # 0, 1, 2 done; 3 holds back 4
    assert part.in_flight == 2
    part.done(3)
    assert part.to_commit() == 5
    assert part.in_flight == 0


def test_offsets_with_gaps_commit_past_the_last_done() -> None:
    # Compacted topics and transaction markers leave holes in the offsets read.
    part = PartitionOffsets()
    _read(part, [10, 12, 20])
    part.done(12)
    assert part.to_commit() is None
    part.done(10)
    assert part.to_commit() == 13
    part.done(20)
    assert part.to_commit() == 21


def test_mark_committed_hides_the_offset_until_more_is_done() -> None:
    part = PartitionOffsets()
    _read(part, range(4))
    part.done(0)
    part.done(1)
    assert part.to_commit() == 2
    part.committed = 2
    assert part.to_commit() is None
    part.done(3)  # 2 still in flight: nothing new
    assert part.to_commit() is None
    part.done(2)
    assert part.to_commit() == 4


def test_reading_backwards_is_refused() -> None:
    part = PartitionOffsets()
    part.read(5)
    with pytest.raises(ValueError, match="offset 5 read after 5"):
        part.read(5)
    with pytest.raises(ValueError, match="offset 3 read after 5"):
        part.read(3)


def test_tracker_keeps_partitions_apart() -> None:
    tracker = OffsetTracker()
    for off in range(3):
        tracker.read(TP0, off)
    for off in range(100, 102):
        tracker.read(TP1, off)
    tracker.read(OTHER, 0)
    tracker.done(TP0, 0)
    tracker.done(TP1, 101)
    tracker.done(OTHER, 0)
    assert tracker.committable() == {("chat.turns", 0): 1, ("other", 0): 1}
    assert tracker.committable([TP0, TP1]) == {("chat.turns", 0): 1}
    assert tracker.in_flight() == 2 + 2 + 0
    assert tracker.in_flight([TP1]) == 2
    assert tracker.in_flight([TopicPartition("never", 9)]) == 0
    tracker.done(TP1, 100)
    assert tracker.committable([TP1]) == {("chat.turns", 1): 102}


def test_tracker_mark_committed() -> None:
    tracker = OffsetTracker()
    tracker.read(TP0, 7)
    tracker.done(TP0, 7)
    assert tracker.committable() == {("chat.turns", 0): 8}
    tracker.mark_committed(("chat.turns", 0), 8)
    assert tracker.committable() == {}
    tracker.mark_committed(("unknown", 3), 1)  # a partition forgotten meanwhile: ignored
    assert tracker.committable() == {}
    tracker.read(TP0, 8)
    tracker.done(TP0, 8)
    assert tracker.committable() == {("chat.turns", 0): 9}


def test_tracker_forget_drops_a_revoked_partition() -> None:
    tracker = OffsetTracker()
    tracker.read(TP0, 5)
    tracker.read(TP1, 5)
    tracker.done(TP1, 5)
    tracker.forget([TP0, TopicPartition("never", 0)])
    assert tracker.in_flight() == 0
    assert tracker.committable() == {("chat.turns", 1): 6}
    # Re-assigned later, the partition may be read again from an earlier committed offset.
    tracker.read(TP0, 2)
    assert tracker.in_flight([TP0]) == 1
    tracker.done(TP0, 2)
    assert tracker.committable([TP0]) == {("chat.turns", 0): 3}


def test_is_new_rejects_offsets_already_read():
    part = PartitionOffsets()
    assert part.is_new(5)
    part.read(5)
    assert not part.is_new(5)
    assert not part.is_new(3)
    assert part.is_new(6)
