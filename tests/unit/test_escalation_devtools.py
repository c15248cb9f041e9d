"""The escalation display line and the demo's tally (erc_stream/devtools/escalations.py)."""

from __future__ import annotations

import orjson

from erc_stream.devtools.escalations import EscalationTally, render_escalation
from erc_stream.escalations.messages import Escalation, Evidence, escalation_event, escalation_id
from erc_stream.events import SourceRef


def _event(status: str, rule: str = "spike", severity: str = "high", turn: str = "5") -> dict:
    esc = Escalation(
        escalation_id=escalation_id("meld-dev-3", rule, turn),
        status=status,
        conversation_id="meld-dev-3",
        rule=rule,
        severity=severity,
        opened_turn_id=turn,
        trigger_turn_ids=("4", turn),
        resolved_turn_id=None if status == "opened" else "9",
        resolution=None if status == "opened" else "cooled_down",
        evidence=(
            Evidence("4", "Ann", "anger", 0.91, {"anger": 0.9}),
            Evidence(turn, "Bob", "sadness", 0.62, {"sadness": 0.8}),
        ),
        intensity=0.875,
        negative_runs={"Ann": 1},
        model_version="v1",
        opened_at=1.0,
        resolved_at=None if status == "opened" else 2.0,
        source=SourceRef("chat.emotions", 0, 7),
    )
    return orjson.loads(escalation_event(esc, emitted_at=3.0))


def test_render_escalation_lines() -> None:
    short_id = _event("opened")["escalation_id"][:8]
    assert render_escalation(_event("opened")).plain == (
        f"▲ OPENED   meld-dev-3     spike     high    turn 5    anger 0.91 · sadness 0.62                {short_id}"
    )
    assert render_escalation(_event("resolved")).plain == (
        f"▼ resolved meld-dev-3     spike     high    turn 9    cooled_down                              {short_id}"
    )


def test_tally_keeps_the_first_record_per_id_and_status() -> None:
    tally = EscalationTally()
    assert tally.add(_event("opened"))
    assert not tally.add(_event("opened"))  # a re-sent copy
    assert tally.add(_event("opened", rule="shift", severity="low", turn="2"))
    assert tally.add(_event("resolved"))
    assert tally.as_dict() == {
        "opened": {"shift/low": 1, "spike/high": 1},
        "resolved": {"cooled_down": 1},
        "still_open": 1,
        "repeats_dropped": 1,
    }
