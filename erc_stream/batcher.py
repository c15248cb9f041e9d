"""Micro-batching: group waiting prompts by length into batches bounded by size, padded
tokens and wait time.

Every batch contains the oldest waiting prompt (so no prompt waits behind a stream of
better-fitting ones) plus the prompts closest to it in length, which keeps padding low.
Items carry an order key (the conversation): an item is never taken ahead of an earlier
item with the same key, so per-conversation order survives the regrouping.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "form_batch"]

T = TypeVar("T")


def form_batch(
    lengths: Sequence[int], max_size: int, max_tokens: int, keys: Sequence[object] | None = None
) -> list[int]:
    """Indices (into ``lengths``) of one batch that contains index 0 (the oldest).

    Candidates are taken in order of closeness in length to the oldest prompt while the
    batch stays within ``max_size`` prompts and ``max_tokens`` padded tokens (longest
    length x count). Index 0 is always included, even if it alone exceeds max_tokens.

    With ``keys`` (``None`` entries are unordered), an index is a candidate only once
    every earlier index with the same key is in the batch, so no item overtakes an
    earlier one of its key. Only the oldest remaining index of each key competes at a
    time; taking it lets the key's next index compete. (Dropping out-of-order picks
    after the fact instead left batches at a third to a half of ``max_size`` when many
    conversations interleave: measured in docs/benchmarks/.)
    """
    if not lengths:
        return []
    n = len(lengths)
    anchor = lengths[0]
    successor: list[int | None] = [None] * n  # next index with the same key
    heads: list[int] = []  # indices with no earlier index of their key
    last: dict[object, int] = {}
    for i in range(n):
        key = keys[i] if keys is not None else None
        if key is not None and key in last:
            successor[last[key]] = i
        elif i > 0:
            heads.append(i)
        if key is not None:
            last[key] = i
    candidates = [(abs(lengths[i] - anchor), i) for i in heads]  # ties go to the older one
    heapq.heapify(candidates)
    if (nxt := successor[0]) is not None:
        heapq.heappush(candidates, (abs(lengths[nxt] - anchor), nxt))
    chosen = [0]
    longest = anchor
    while candidates and len(chosen) < max_size:
        _, i = heapq.heappop(candidates)
        new_longest = max(longest, lengths[i])
        if new_longest * (len(chosen) + 1) > max_tokens:
            continue  # later items of its key stay behind it
        chosen.append(i)
        longest = new_longest
        if (nxt := successor[i]) is not None:
            heapq.heappush(candidates, (abs(lengths[nxt] - anchor), nxt))
    return sorted(chosen)


class MicroBatcher(Generic[T]):
    """A FIFO of (item, length) with the batch-forming policy. Not thread-safe: loop only."""

    def __init__(
        self,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        pool_factor: int = 4,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._pool = max_batch_size * pool_factor
        self._items: deque[tuple[T, int, float, object]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, length: int, key: object = None) -> None:
        """Queue ``item`` of ``length`` tokens; ``key`` groups items whose order must hold."""
        self._items.append((item, length, self.clock(), key))

    def full(self) -> bool:
        """Enough is waiting for a full batch."""
        if len(self._items) >= self.max_batch_size:
            return True
        longest = max((n for _, n, _, _ in self._items), default=0)
        return longest * (len(self._items) + 1) > self.max_batch_tokens and len(self._items) > 0

    def wait_left_s(self) -> float:
        """Seconds until the oldest item has waited max_wait (<= 0: due now)."""
        if not self._items:
            return self.max_wait_s
        return self._items[0][2] + self.max_wait_s - self.clock()

    def ready(self) -> bool:
        return bool(self._items) and (self.full() or self.wait_left_s() <= 0)

    def take(self) -> list[T]:
        """Remove and return one batch (empty if nothing waits)."""
        if not self._items:
            return []
        pool = [self._items[i] for i in range(min(self._pool, len(self._items)))]
        picked_set = set(
            form_batch(
                [n for _, n, _, _ in pool],
                self.max_batch_size,
                self.max_batch_tokens,
                keys=[key for _, _, _, key in pool],
            )
        )
        batch = [pool[i][0] for i in sorted(picked_set)]
        rest = [pool[i] for i in range(len(pool)) if i not in picked_set]
        for _ in range(len(pool)):
            self._items.popleft()
        self._items.extendleft(reversed(rest))
        return batch

    def drain(self) -> list[T]:
        items = [it for it, _, _, _ in self._items]
        self._items.clear()
        return items
