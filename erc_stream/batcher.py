"""Micro-batching: group waiting prompts by length into batches bounded by size, padded
tokens and wait time.

Every batch contains the oldest waiting prompt (so no prompt waits behind a stream of
better-fitting ones) plus the prompts closest to it in length, which keeps padding low.
Items carry an order key (the conversation): an item is never taken ahead of an earlier
item with the same key, so per-conversation order survives the regrouping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher", "form_batch"]

T = TypeVar("T")


def form_batch(lengths: Sequence[int], max_size: int, max_tokens: int) -> list[int]:
    """Indices (into ``lengths``) of one batch that contains index 0 (the oldest).

    Candidates are taken in order of closeness in length to the oldest prompt while the
    batch stays within ``max_size`` prompts and ``max_tokens`` padded tokens (longest
    length x count). Index 0 is always included, even if it alone exceeds max_tokens.
    """
    if not lengths:
        return []
    anchor = lengths[0]
    order = sorted(range(1, len(lengths)), key=lambda i: (abs(lengths[i] - anchor), i))
    chosen = [0]
    longest = anchor
    for i in order:
        if len(chosen) >= max_size:
            break
        new_longest = max(longest, lengths[i])
        if new_longest * (len(chosen) + 1) > max_tokens:
            continue
        chosen.append(i)
        longest = new_longest
    return sorted(chosen)


class MicroBatcher(Generic[T]):
    """A FIFO of (item, length) with the batch-forming policy. Not thread-safe: loop only."""

    def __init__(self, max_batch_size: int, max_batch_tokens: int, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic, pool_factor: int = 4) -> None:
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
        picked_set = set(form_batch([n for _, n, _, _ in pool], self.max_batch_size, self.max_batch_tokens))
        held_back: set = set()  # keys with an earlier item left waiting
        for i, (_, _, _, key) in enumerate(pool):
            if key is None:
                continue
            if i in picked_set and key in held_back:
                picked_set.discard(i)
            elif i not in picked_set:
                held_back.add(key)
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
