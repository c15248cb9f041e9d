"""One conversation's escalation state and the pure step that advances it by one emotion event.

The state (one value per conversation in the app's faust table) holds:

- the last ``history_turns`` turns' emotions and scores (:class:`Evidence`);
- the exponentially weighted ``intensity`` of the negative emotions;
- the current run of negative turns per speaker (speakers with no run are left out);
- the last ``dedupe_turns`` turn ids, to drop repeated events;
- the open escalation, if any;
- an outbox: the escalations the last few events caused, with the input record (partition,
  offset) that caused them.

Why the outbox: the app updates the table (a changelog record) and sends the escalation (an
output record) through one producer, and faust commits the input offset only after both are
acknowledged. A SIGKILL in between can leave the changelog record written and the escalation
not; after the restart the same input record is delivered again, is a repeat for the restored
state, and without the outbox its escalation would be lost. With it, a redelivery of the same
record re-sends the same escalation (same ``escalation_id``); consumers keep the first per
``(escalation_id, status)``. A repeat that is a *different* record with the same event id (the
upstream worker's own at-least-once) is only dropped: its escalations went out with the first.

:class:`Escalator` is pure: no I/O, no clock (time is the events' ``produced_at``), so a replay
of the same events gives the same escalations with the same ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import orjson

from erc_stream.escalations.messages import (
    COOLED_DOWN,
    IDLE,
    OPENED,
    RESOLVED,
    EmotionEvent,
    Escalation,
    Evidence,
    escalation_id,
    evidence_from_dict,
)
from erc_stream.escalations.rules import SEVERITIES, Match, RulesConfig, shift, spike, sustained
from erc_stream.events import SourceRef

__all__ = ["OUTBOX_ENTRIES", "ConversationState", "Escalator", "OpenEscalation", "OutboxEntry", "Step"]

OUTBOX_ENTRIES = 4  # events whose escalations are kept for re-sending; far more than one commit interval holds
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class OpenEscalation:
    """What the resolve event needs to repeat about the escalation it closes."""

    escalation_id: str
    rule: str
    severity: str
    opened_turn_id: str
    trigger_turn_ids: tuple[str, ...]
    opened_at: float
    model_version: str


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """Escalations caused by one input record (``trigger_turn_id`` ``None``: by an idle sweep)."""

    trigger_turn_id: str | None
    trigger_partition: int | None
    trigger_offset: int | None
    escalations: tuple[Escalation, ...]

    def caused_by(self, turn_id: str, source: SourceRef) -> bool:
        return (self.trigger_turn_id, self.trigger_partition, self.trigger_offset) == (
            turn_id,
            source.partition,
            source.offset,
        )


@dataclass(slots=True)
class ConversationState:
    """A conversation's escalation state; see the module docstring for each part."""

    conversation_id: str
    partition: int
    history: list[Evidence] = field(default_factory=list)
    intensity: float = 0.0
    negative_runs: dict[str, int] = field(default_factory=dict)
    calm_streak: int = 0  # consecutive turns with a non-negative emotion, newest last
    recent_turn_ids: list[str] = field(default_factory=list)
    open: OpenEscalation | None = None
    outbox: list[OutboxEntry] = field(default_factory=list)
    last_event_at: float = 0.0
    turns: int = 0  # distinct turns applied

    def to_bytes(self) -> bytes:
        """JSON for the table's changelog: ``v`` and every field by name (orjson writes the nested
        dataclasses, tuples included, as JSON objects and arrays)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return orjson.dumps({"v": _STATE_VERSION, **fields})

    @classmethod
    def from_bytes(cls, data: bytes) -> ConversationState:
        d = orjson.loads(data)
        if d.get("v") != _STATE_VERSION:
            raise ValueError(f"conversation state version {d.get('v')!r} is not {_STATE_VERSION}")
        op = d["open"]
        return cls(
            conversation_id=d["conversation_id"],
            partition=int(d["partition"]),
            history=[evidence_from_dict(e) for e in d["history"]],
            intensity=float(d["intensity"]),
            negative_runs={str(k): int(v) for k, v in d["negative_runs"].items()},
            calm_streak=int(d["calm_streak"]),
            recent_turn_ids=[str(t) for t in d["recent_turn_ids"]],
            open=None
            if op is None
            else OpenEscalation(
                escalation_id=op["escalation_id"],
                rule=op["rule"],
                severity=op["severity"],
                opened_turn_id=op["opened_turn_id"],
                trigger_turn_ids=tuple(op["trigger_turn_ids"]),
                opened_at=float(op["opened_at"]),
                model_version=op["model_version"],
            ),
            outbox=[
                OutboxEntry(
                    o["trigger_turn_id"],
                    o["trigger_partition"],
                    o["trigger_offset"],
                    tuple(Escalation.from_dict(e) for e in o["escalations"]),
                )
                for o in d["outbox"]
            ],
            last_event_at=float(d["last_event_at"]),
            turns=int(d["turns"]),
        )


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one event or sweep.

    ``state`` is ``None`` when the conversation is to be forgotten; ``changed`` says whether the
    state must be written back; ``escalations`` are to be sent (re-sent ones included).
    """

    state: ConversationState | None
    escalations: tuple[Escalation, ...] = ()
    duplicate: bool = False
    changed: bool = False


class Escalator:
    """Applies the rules to one conversation at a time. Pure: state in, state and escalations out."""

    def __init__(self, rules: RulesConfig) -> None:
        self.rules = rules

    def new_state(self, conversation_id: str, partition: int) -> ConversationState:
        return ConversationState(conversation_id=conversation_id, partition=partition)

    def apply(self, state: ConversationState, event: EmotionEvent, source: SourceRef) -> Step:
        """Advance ``state`` (in place) by ``event`` read at ``source``; a repeated turn changes nothing.

        A redelivery of the very record (same partition and offset) re-sends the escalations
        its first delivery caused (from the outbox).
        """
        if event.turn_id in state.recent_turn_ids:
            resend = tuple(e for o in state.outbox if o.caused_by(event.turn_id, source) for e in o.escalations)
            return Step(state, resend, duplicate=True, changed=False)
        cfg = self.rules
        turn = Evidence(event.turn_id, event.speaker, event.emotion, event.confidence, dict(event.scores))
        state.partition = source.partition
        state.history = [*state.history, turn][-cfg.history_turns :]
        state.recent_turn_ids = [*state.recent_turn_ids, event.turn_id][-cfg.dedupe_turns :]
        state.last_event_at = max(state.last_event_at, event.produced_at)
        state.turns += 1
        intensity_before = state.intensity
        weighted = (1 - cfg.intensity_alpha) * state.intensity + cfg.intensity_alpha * cfg.intensity_value(turn)
        state.intensity = min(1.0, weighted)  # a convex combination of values in [0, 1]; min() absorbs rounding
        negative = event.emotion in cfg.negative_emotions
        if negative:
            state.negative_runs[event.speaker] = state.negative_runs.get(event.speaker, 0) + 1
            state.calm_streak = 0
        else:
            state.negative_runs.pop(event.speaker, None)
            state.calm_streak += 1

        out: list[Escalation] = []
        if state.open is not None:
            if state.calm_streak >= cfg.cooldown.calm_turns and state.intensity <= cfg.cooldown.max_intensity:
                out.append(self._resolve(state, COOLED_DOWN, event, source))
        else:
            match = self._first_match(state.history, intensity_before, state.intensity)
            if match is not None:
                out.append(self._open(state, match, event, source))
        if out:
            entry = OutboxEntry(event.turn_id, source.partition, source.offset, tuple(out))
            state.outbox = [*state.outbox, entry][-OUTBOX_ENTRIES:]
        return Step(state, tuple(out), duplicate=False, changed=True)

    def sweep(self, state: ConversationState, now: float) -> Step:
        """Idle handling at event time ``now``: resolve an idle open escalation, or forget the state.

        Forgetting re-sends the idle resolutions still in the outbox: the resolution and the
        state change travel in different records, and this is the last chance to deliver one
        that a crash may have lost.
        """
        idle_s = now - state.last_event_at
        if state.open is not None and idle_s >= self.rules.idle_resolve_s:
            resolved = self._resolve(state, IDLE, None, None, resolved_at=now)
            state.outbox = [*state.outbox, OutboxEntry(None, None, None, (resolved,))][-OUTBOX_ENTRIES:]
            return Step(state, (resolved,), changed=True)
        if state.open is None and idle_s >= self.rules.idle_forget_s:
            resend = tuple(e for o in state.outbox if o.trigger_turn_id is None for e in o.escalations)
            return Step(None, resend, changed=True)
        return Step(state)

    # -- internals ------------------------------------------------------------------------

    def _first_match(self, history: list[Evidence], intensity_before: float, intensity: float) -> Match | None:
        cfg = self.rules
        matches: list[Match] = []
        for name in cfg.enabled_rules:
            if name == "sustained":
                m = sustained(history, cfg)
            elif name == "spike":
                m = spike(history, intensity_before, intensity, cfg)
            else:
                m = shift(history, cfg)
            if m is not None:
                matches.append(m)
        if not matches:
            return None
        # Highest severity; min() keeps the first, so rule order breaks ties.
        return min(matches, key=lambda m: -SEVERITIES.index(m.severity))

    def _open(self, state: ConversationState, match: Match, event: EmotionEvent, source: SourceRef) -> Escalation:
        wanted = set(match.turn_ids)
        evidence = tuple(t for t in state.history if t.turn_id in wanted)
        state.open = OpenEscalation(
            escalation_id=escalation_id(state.conversation_id, match.rule, event.turn_id),
            rule=match.rule,
            severity=match.severity,
            opened_turn_id=event.turn_id,
            trigger_turn_ids=match.turn_ids,
            opened_at=event.produced_at,
            model_version=event.model_version,
        )
        return self._event(state, state.open, OPENED, None, None, None, evidence, source)

    def _resolve(
        self,
        state: ConversationState,
        resolution: str,
        event: EmotionEvent | None,
        source: SourceRef | None,
        resolved_at: float | None = None,
    ) -> Escalation:
        op = state.open
        assert op is not None
        state.open = None
        if event is not None:
            evidence = tuple(state.history[-self.rules.cooldown.calm_turns :])
            return self._event(state, op, RESOLVED, event.turn_id, resolution, event.produced_at, evidence, source)
        return self._event(state, op, RESOLVED, None, resolution, resolved_at, (), source)

    def _event(
        self,
        state: ConversationState,
        op: OpenEscalation,
        status: str,
        resolved_turn_id: str | None,
        resolution: str | None,
        resolved_at: float | None,
        evidence: tuple[Evidence, ...],
        source: SourceRef | None,
    ) -> Escalation:
        return Escalation(
            escalation_id=op.escalation_id,
            status=status,
            conversation_id=state.conversation_id,
            rule=op.rule,
            severity=op.severity,
            opened_turn_id=op.opened_turn_id,
            trigger_turn_ids=op.trigger_turn_ids,
            resolved_turn_id=resolved_turn_id,
            resolution=resolution,
            evidence=evidence,
            intensity=state.intensity,
            negative_runs=dict(state.negative_runs),
            model_version=op.model_version,
            opened_at=op.opened_at,
            resolved_at=resolved_at,
            source=source,
        )
