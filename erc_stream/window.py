"""Per-conversation context windows: the last k turns of each live conversation.

Pure bookkeeping, no I/O; the clock is injectable so tests control time. Bounds:

- each window keeps the last ``context_turns`` turns (oldest dropped first);
- a conversation idle for more than ``ttl_s`` (no ``push``/``restore``) is expired: its
  window is dropped the next time it is looked at or by :meth:`WindowStore.sweep`;
- at most ``max_conversations`` are kept; beyond that the least recently pushed one
  is evicted. ``on_evict(conversation_id, cause)`` reports each eviction with cause
  ``"lru"`` or ``"ttl"``.

Each conversation also remembers the ids of its last ``dedup_turns`` turns, so a
redelivered turn (at-least-once input) can be recognised with :meth:`seen`.

:meth:`WindowStore.resize` changes ``context_turns`` for every window, live ones included
(a hot reload to a model with a longer context: the windows then fill up to the new bound
as turns arrive).

Recency order and idle time agree (both change only in ``push``/``restore``, with a
monotonic clock), so the oldest entry of the ``OrderedDict`` is both the LRU victim
and the first to expire: eviction and sweeping are O(1) per conversation removed.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from erc_stream.prompt import EncodedTurn

__all__ = ["TurnCache", "WindowTurn", "WindowStore", "EVICT_LRU", "EVICT_TTL"]

EVICT_LRU = "lru"
EVICT_TTL = "ttl"
_MIN_DEDUP_TURNS = 32


@dataclass(frozen=True, slots=True)
class TurnCache:
    """What one loaded model computed for a turn, stamped with that model's generation.

    The worker numbers each model it installs (``generation``); an entry of an older
    generation is stale and is computed again by the model now served.
    """

    generation: int
    encoded: EncodedTurn  # the turn's token ids, from that model's tokenizer
    vector: torch.Tensor | None = None  # turn-once models: the turn's vector z (H,), once encoded


@dataclass(slots=True)
class WindowTurn:
    """One turn kept as context, with what the served model computed for it (``cache``)."""

    turn_id: str
    speaker: str
    text: str
    cache: TurnCache | None = None


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class _Conversation:
    __slots__ = ("turns", "turn_ids", "last_used_s")

    def __init__(self, context_turns: int, now_s: float) -> None:
        self.turns: deque[WindowTurn] = deque(maxlen=context_turns)
        self.turn_ids: dict[str, None] = {}  # insertion-ordered set of recent turn ids
        self.last_used_s = now_s


class WindowStore:
    """Windows of the last ``context_turns`` turns per conversation, TTL and LRU bound.

    Args:
        context_turns: turns kept per conversation (k >= 0).
        ttl_s: idle seconds after which a conversation is forgotten (> 0).
        max_conversations: conversations kept at most (>= 1).
        clock: monotonic seconds; injectable for tests.
        on_evict: called with ``(conversation_id, "lru" | "ttl")`` for each eviction.
        dedup_turns: recent turn ids remembered per conversation for :meth:`seen`;
            default ``max(4 * context_turns, 32)``.
    """

    def __init__(
        self,
        context_turns: int,
        ttl_s: float,
        max_conversations: int,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str, str], None] | None = None,
        dedup_turns: int | None = None,
    ) -> None:
        _check_int("context_turns", context_turns, 0)
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        _check_int("max_conversations", max_conversations, 1)
        if dedup_turns is None:
            dedup_turns = max(4 * context_turns, _MIN_DEDUP_TURNS)
        _check_int("dedup_turns", dedup_turns, 1)
        self.context_turns = context_turns
        self.ttl_s = float(ttl_s)
        self.max_conversations = max_conversations
        self.dedup_turns = dedup_turns
        self._clock = clock
        self._on_evict = on_evict
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()

    def __len__(self) -> int:
        """Conversations held, including expired ones not yet swept."""
        return len(self._conversations)

    def __contains__(self, conversation_id: object) -> bool:
        """Whether a window is held for the conversation (expired or not)."""
        return conversation_id in self._conversations

    def context(self, conversation_id: str) -> list[WindowTurn]:
        """The last ``context_turns`` turns of the conversation, oldest first.

        An unknown or expired conversation gives ``[]`` (an expired one is evicted
        with cause ``"ttl"``). Does not count as a use for recency or idle time.
        """
        conv = self._live(conversation_id)
        return [] if conv is None else list(conv.turns)

    def seen(self, conversation_id: str, turn_id: str) -> bool:
        """Whether ``turn_id`` is among the conversation's last ``dedup_turns`` turn ids."""
        conv = self._live(conversation_id)
        return conv is not None and turn_id in conv.turn_ids

    def push(self, conversation_id: str, turn: WindowTurn) -> None:
        """Append ``turn`` to the conversation's window and mark it most recently used.

        Starts a new window for an unknown or expired conversation, and evicts the
        least recently used conversations beyond ``max_conversations``.
        """
        now_s = self._clock()
        conv = self._live(conversation_id, now_s)
        if conv is None:
            conv = _Conversation(self.context_turns, now_s)
            self._conversations[conversation_id] = conv
        self._append(conv, turn)
        self._touch(conversation_id, conv, now_s)

    def restore(self, conversation_id: str, turns: Iterable[WindowTurn]) -> None:
        """Replace the conversation's window with ``turns`` (oldest first; the last k kept).

        Used after a crash or rebalance to rebuild a window from the input log. Their
        ids are remembered for :meth:`seen`; the conversation becomes most recently used.
        """
        now_s = self._clock()
        conv = _Conversation(self.context_turns, now_s)
        for turn in turns:
            self._append(conv, turn)
        self._conversations[conversation_id] = conv
        self._touch(conversation_id, conv, now_s)

    def resize(self, context_turns: int) -> None:
        """Keep the last ``context_turns`` turns per conversation from now on, live windows included.

        A larger bound lets existing windows grow as their next turns arrive; a smaller one
        drops their oldest turns now.
        """
        _check_int("context_turns", context_turns, 0)
        if context_turns == self.context_turns:
            return
        self.context_turns = context_turns
        for conv in self._conversations.values():
            conv.turns = deque(conv.turns, maxlen=context_turns)

    def discard(self, conversation_id: str) -> bool:
        """Forget a conversation without calling ``on_evict`` (e.g. its partition was
        revoked); returns whether it was held."""
        return self._conversations.pop(conversation_id, None) is not None

    def sweep(self) -> int:
        """Evict every expired conversation (cause ``"ttl"``); returns how many."""
        now_s = self._clock()
        evicted = 0
        # Oldest first; the first live one ends the scan (order == idle-time order).
        while self._conversations:
            conversation_id, conv = next(iter(self._conversations.items()))
            if not self._expired(conv, now_s):
                break
            self._evict(conversation_id, EVICT_TTL)
            evicted += 1
        return evicted

    # -- internals -------------------------------------------------------------

    def _expired(self, conv: _Conversation, now_s: float) -> bool:
        return now_s - conv.last_used_s > self.ttl_s

    def _live(self, conversation_id: str, now_s: float | None = None) -> _Conversation | None:
        conv = self._conversations.get(conversation_id)
        if conv is None:
            return None
        if self._expired(conv, self._clock() if now_s is None else now_s):
            self._evict(conversation_id, EVICT_TTL)
            return None
        return conv

    def _append(self, conv: _Conversation, turn: WindowTurn) -> None:
        conv.turns.append(turn)
        ids = conv.turn_ids
        ids.pop(turn.turn_id, None)  # re-inserted as newest
        ids[turn.turn_id] = None
        if len(ids) > self.dedup_turns:
            del ids[next(iter(ids))]

    def _touch(self, conversation_id: str, conv: _Conversation, now_s: float) -> None:
        conv.last_used_s = now_s
        self._conversations.move_to_end(conversation_id)
        while len(self._conversations) > self.max_conversations:
            self._evict(next(iter(self._conversations)), EVICT_LRU)

    def _evict(self, conversation_id: str, cause: str) -> None:
        del self._conversations[conversation_id]
        if self._on_evict is not None:
            self._on_evict(conversation_id, cause)
