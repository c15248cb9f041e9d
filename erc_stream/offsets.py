"""Per-partition offset bookkeeping for at-least-once delivery.

A record's offset becomes *done* when the broker has acknowledged its emotion event or its
dead letter. The committable offset of a partition is one past the highest offset below
which every read offset is done: a slow record holds back commits of faster ones after it,
so a crash re-reads only records whose output was not acknowledged (plus, at worst, the
in-flight ones after them, which come out again with the same event ids).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

__all__ = ["PartitionOffsets", "OffsetTracker"]


@dataclass
class PartitionOffsets:
    """Read and acknowledged offsets of one partition."""

    next_commit: int | None = None  # offset to commit (one past the last contiguous done)
    committed: int | None = None  # what was last committed successfully
    _pending: list[int] = field(default_factory=list)  # heap of read-not-done offsets
    _done: set[int] = field(default_factory=set)  # done offsets above the lowest pending
    _last_read: int | None = None

    def read(self, offset: int) -> None:
        if self._last_read is not None and offset <= self._last_read:
            raise ValueError(f"offset {offset} read after {self._last_read}: partition order broken")
        self._last_read = offset
        heapq.heappush(self._pending, offset)

    def is_new(self, offset: int) -> bool:
        """False for an offset at or below one already read (a re-delivery after a rebalance race)."""
        return self._last_read is None or offset > self._last_read

    def done(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            off = heapq.heappop(self._pending)
            self._done.discard(off)
            self.next_commit = off + 1

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def to_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new is committable."""
        if self.next_commit is None or self.next_commit == self.committed:
            return None
        return self.next_commit


class OffsetTracker:
    """Offsets of every assigned partition, keyed by (topic, partition)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], PartitionOffsets] = {}

    def partition(self, tp) -> PartitionOffsets:
        key = (tp.topic, tp.partition)
        part = self._parts.get(key)
        if part is None:
            part = self._parts[key] = PartitionOffsets()
        return part

    def read(self, tp, offset: int) -> None:
        self.partition(tp).read(offset)

    def done(self, tp, offset: int) -> None:
        self.partition(tp).done(offset)

    def in_flight(self, tps=None) -> int:
        keys = self._parts.keys() if tps is None else [(tp.topic, tp.partition) for tp in tps]
        return sum(self._parts[k].in_flight for k in keys if k in self._parts)

    def committable(self, tps=None) -> dict[tuple[str, int], int]:
        keys = list(self._parts.keys()) if tps is None else [(tp.topic, tp.partition) for tp in tps]
        out = {}
        for k in keys:
            part = self._parts.get(k)
            if part is not None and (off := part.to_commit()) is not None:
                out[k] = off
        return out

    def mark_committed(self, key: tuple[str, int], offset: int) -> None:
        part = self._parts.get(key)
        if part is not None:
            part.committed = offset

    def forget(self, tps) -> None:
        for tp in tps:
            self._parts.pop((tp.topic, tp.partition), None)
