"""Escalation rules without a broker: the rules file, each detector, the state step, exact values."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from erc_stream.errors import ConfigError
from erc_stream.escalations.messages import (
    EmotionEvent,
    Escalation,
    Evidence,
    escalation_event,
    escalation_id,
    parse_emotion_event,
)
from erc_stream.escalations.rules import (
    RulesConfig,
    ShiftRule,
    SustainedRule,
    default_rules_path,
    load_rules,
    rules_from_mapping,
    shift,
    spike,
    sustained,
)
from erc_stream.escalations.state import OUTBOX_ENTRIES, ConversationState, Escalator
from erc_stream.events import BadInput, Reason, SourceRef

ROOT = Path(__file__).resolve().parents[2]
ESCALATION_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "schemas" / "escalation_event.schema.json").read_text())
)
EMOTION_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((ROOT / "schemas" / "emotion_event.schema.json").read_text())
)
LABELS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")


def ev(
    turn: int, emotion: str, confidence: float = 0.9, speaker: str = "A", conv: str = "c1", at: float = 0.0
) -> Evidence:
    return Evidence(str(turn), speaker, emotion, confidence, {label: 0.1 for label in LABELS})


def event(
    turn: int,
    emotion: str,
    confidence: float = 0.9,
    speaker: str = "A",
    conv: str = "c1",
    at: float | None = None,
) -> EmotionEvent:
    scores = {label: (0.8 if label == emotion else 0.1) for label in LABELS}
    produced = 1_700_000_000.0 + turn if at is None else at
    return EmotionEvent(f"{conv}:{turn}", conv, str(turn), speaker, emotion, confidence, scores, "v1", produced, None)


def src(offset: int) -> SourceRef:
    return SourceRef("chat.emotions", 0, offset)


def run(
    escalator: Escalator, emotions: list[str], confidence: float = 0.9
) -> tuple[ConversationState, list[Escalation]]:
    state = escalator.new_state("c1", 0)
    out: list[Escalation] = []
    for i, emotion in enumerate(emotions):
        step = escalator.apply(state, event(i, emotion, confidence), src(i))
        assert step.state is state
        out.extend(step.escalations)
    return state, out


# -- the rules file -----------------------------------------------------------------------


def test_shipped_rules_file_equals_the_defaults() -> None:
    assert load_rules() == RulesConfig()
    assert load_rules(default_rules_path()) == RulesConfig()


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  spike:\n    threshold: 0.8\n    severity: medium\nhistory_turns: 10\n")
    cfg = load_rules(path)
    assert cfg.spike.threshold == 0.8 and cfg.spike.severity == "medium" and cfg.spike.enabled
    assert cfg.history_turns == 10
    assert cfg.sustained == SustainedRule() and cfg.shift == ShiftRule()
    (tmp_path / "empty.yaml").write_text("")
    assert load_rules(tmp_path / "empty.yaml") == RulesConfig()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rules": {"spike": {"treshold": 0.5}}}, "rules.spike: Additional properties are not allowed ('treshold'"),
        ({"rules": {"sustained": {"severity": "urgent"}}}, "rules.sustained.severity: 'urgent' is not one of"),
        ({"history_turns": "8"}, "history_turns: '8' is not of type 'integer'"),
        ({"intensity": {"alpha": 0}}, "intensity.alpha: 0 is less than or equal to the minimum of 0"),
        ({"rules": {"sustained": {"min_negative_turns": 6}}}, "rules.sustained.min_negative_turns = 6 is invalid"),
        ({"history_turns": 4}, "history_turns = 4 is invalid: the rules look back 5 turns"),
        ({"emotions": {"calm": ["neutral", "anger"]}}, "emotions.calm = ['neutral', 'anger'] is invalid"),
        ({"idle_resolve_s": 100, "idle_forget_s": 50}, "idle_forget_s = 50 is invalid"),
        ({"version": 2}, "version: 1 was expected"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules_from_mapping(doc, origin="my.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("my.yaml: ")


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the escalation rules file"):
        load_rules(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_rules(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(tmp_path / "bad.yaml")


def test_rules_yaml_documents_every_key() -> None:
    """Every schema key appears in the shipped file, so the defaults are all written down."""
    schema = json.loads((ROOT / "erc_stream" / "escalations" / "rules.schema.json").read_text())
    shipped = yaml.safe_load(default_rules_path().read_text())

    def keys(node: dict, doc: dict, prefix: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert name in doc, f"{prefix}{name} is missing from rules.yaml"
            if "properties" in sub:
                keys(sub, doc[name], f"{prefix}{name}.")

    keys(schema, shipped, "")


# -- detectors ----------------------------------------------------------------------------


def test_sustained_needs_m_of_n_above_confidence_ending_on_a_negative_turn() -> None:
    cfg = RulesConfig()  # 3 of the last 5, confidence >= 0.3
    h = [ev(0, "anger"), ev(1, "neutral"), ev(2, "sadness"), ev(3, "joy"), ev(4, "fear")]
    m = sustained(h, cfg)
    assert m is not None and (m.rule, m.severity, m.turn_ids) == ("sustained", "medium", ("0", "2", "4"))
    # The sixth turn pushes turn 0 out of the window: 2 of 5.
    assert sustained([*h, ev(5, "neutral")], cfg) is None
    # A low-confidence negative turn does not count.
    assert sustained([ev(0, "anger"), ev(1, "anger"), ev(2, "anger", 0.29)], cfg) is None
    # The newest turn must be negative.
    assert sustained([ev(0, "anger"), ev(1, "anger"), ev(2, "anger"), ev(3, "joy")], cfg) is None
    assert sustained([], cfg) is None


def test_spike_fires_when_intensity_crosses_from_below() -> None:
    cfg = RulesConfig()  # threshold 0.8
    h = [ev(0, "neutral"), ev(1, "anger"), ev(2, "disgust")]
    m = spike(h, 0.75, 0.8, cfg)
    assert m is not None and (m.rule, m.severity, m.turn_ids) == ("spike", "high", ("1", "2"))
    assert spike(h, 0.8, 0.9, cfg) is None  # already above: no new crossing
    assert spike(h, 0.5, 0.79, cfg) is None


def test_shift_calm_phase_then_negative_run_within_j_turns() -> None:
    cfg = RulesConfig()  # calm 2, negative 2, within 3, confidence 0.3
    m = shift([ev(0, "neutral"), ev(1, "joy"), ev(2, "anger"), ev(3, "anger")], cfg)
    assert m is not None and (m.rule, m.severity, m.turn_ids) == ("shift", "low", ("0", "1", "2", "3"))
    # One turn in between is allowed (last calm turn 3 turns back).
    m = shift([ev(0, "neutral"), ev(1, "neutral"), ev(2, "surprise"), ev(3, "anger"), ev(4, "fear")], cfg)
    assert m is not None and m.turn_ids == ("0", "1", "3", "4")
    # Two in between is not.
    assert (
        shift(
            [ev(0, "neutral"), ev(1, "neutral"), ev(2, "surprise"), ev(3, "surprise"), ev(4, "anger"), ev(5, "fear")],
            cfg,
        )
        is None
    )
    # The calm phase must be calm_turns long.
    assert shift([ev(0, "anger"), ev(1, "neutral"), ev(2, "anger"), ev(3, "anger")], cfg) is None
    # The negative run must be negative_turns long and confident.
    assert shift([ev(0, "neutral"), ev(1, "neutral"), ev(2, "anger")], cfg) is None
    assert shift([ev(0, "neutral"), ev(1, "neutral"), ev(2, "anger"), ev(3, "anger", 0.29)], cfg) is None


# -- the state step -----------------------------------------------------------------------


def test_intensity_and_per_speaker_runs_exact() -> None:
    esc = Escalator(RulesConfig())
    state = esc.new_state("c1", 0)
    # A negative turn at confidence >= 0.3 adds 1, anything else 0; alpha 0.5.
    esc.apply(state, event(0, "anger", 0.8, "A"), src(0))
    assert state.intensity == 0.5
    esc.apply(state, event(1, "sadness", 0.6, "B"), src(1))
    assert state.intensity == 0.75
    esc.apply(state, event(2, "neutral", 0.9, "A"), src(2))
    assert state.intensity == 0.375
    assert state.negative_runs == {"B": 1}
    esc.apply(state, event(3, "fear", 0.2, "B"), src(3))  # below the intensity's confidence
    assert state.intensity == 0.1875
    assert state.negative_runs == {"B": 2}  # runs count negative emotions at any confidence
    assert [t.turn_id for t in state.history] == ["0", "1", "2", "3"]
    assert state.calm_streak == 0 and state.turns == 4


def test_must_escalate_then_cool_down_with_one_stable_id() -> None:
    esc = Escalator(RulesConfig())
    # Calm, calm, then negative turns: a shift (low) on the second negative turn (intensity .5, .75);
    # the third (.875) would be a spike, but the escalation is open. Three calm turns cool it down.
    state, out = run(esc, ["neutral", "neutral", "anger", "anger", "anger", "neutral", "neutral", "joy", "neutral"])
    assert [(e.status, e.rule, e.severity, e.opened_turn_id) for e in out] == [
        ("opened", "shift", "low", "3"),
        ("resolved", "shift", "low", "3"),
    ]
    opened, resolved = out
    assert opened.escalation_id == resolved.escalation_id == escalation_id("c1", "shift", "3")
    assert opened.trigger_turn_ids == ("0", "1", "2", "3")
    assert [e.turn_id for e in opened.evidence] == ["0", "1", "2", "3"]
    # intensity after turns 4..7: .875, .4375, .21875, .109375 -> cooled down at turn 7 (3 calm turns, <= .3).
    assert resolved.resolved_turn_id == "7" and resolved.resolution == "cooled_down"
    assert [e.turn_id for e in resolved.evidence] == ["5", "6", "7"]
    assert resolved.intensity == 0.109375
    assert resolved.opened_at == opened.opened_at == 1_700_000_003.0 and resolved.resolved_at == 1_700_000_007.0
    assert state.open is None
    for e in out:
        ESCALATION_SCHEMA.validate(orjson.loads(escalation_event(e, emitted_at=1.0)))


def test_two_rules_on_one_turn_the_higher_severity_opens() -> None:
    # Three negative turns from the start: sustained (3 of 5, medium) and spike (.875 >= .8, high) on turn 2.
    _, out = run(Escalator(RulesConfig()), ["anger", "sadness", "anger"])
    assert [(e.status, e.rule, e.severity, e.opened_turn_id, e.trigger_turn_ids) for e in out] == [
        ("opened", "spike", "high", "2", ("0", "1", "2"))
    ]
    assert out[0].negative_runs == {"A": 3}


def test_sustained_opens_when_spike_disabled_and_only_once_while_open() -> None:
    cfg = rules_from_mapping({"rules": {"spike": {"enabled": False}, "shift": {"enabled": False}}})
    _, out = run(Escalator(cfg), ["anger", "neutral", "sadness", "fear", "anger", "anger", "disgust"])
    assert [(e.status, e.rule, e.opened_turn_id, e.trigger_turn_ids) for e in out] == [
        ("opened", "sustained", "3", ("0", "2", "3"))
    ]


def test_must_not_escalate() -> None:
    esc = Escalator(RulesConfig())
    # Calm conversation; isolated negative turns; a negative run at low confidence (intensity .3 max).
    for emotions, confidence in [
        (["neutral", "joy", "neutral", "surprise", "neutral"], 0.9),
        (["neutral", "anger", "neutral", "joy", "sadness", "neutral", "neutral", "fear"], 0.9),
        (["anger", "anger", "anger", "anger", "anger"], 0.25),
    ]:
        state, out = run(esc, emotions, confidence)
        assert out == [], emotions
        assert state.open is None


def test_repeated_event_counts_once_and_resends_its_escalation() -> None:
    esc = Escalator(RulesConfig())
    state = esc.new_state("c1", 0)
    for i, emo in enumerate(["neutral", "neutral", "anger"]):
        esc.apply(state, event(i, emo), src(i))
    before = state.to_bytes()
    assert esc.apply(state, event(2, "anger"), src(2)).duplicate  # a repeat changes nothing
    assert state.to_bytes() == before
    first = esc.apply(state, event(3, "anger"), src(3))
    assert [e.status for e in first.escalations] == ["opened"]
    # The same record delivered again (a restart before the commit): its escalation is re-sent.
    again = esc.apply(state, event(3, "anger"), src(3))
    assert again.duplicate and not again.changed
    assert again.escalations == first.escalations  # same escalation, same id
    # The same event as a new record (upstream at-least-once): dropped, nothing re-sent.
    upstream = esc.apply(state, event(3, "anger"), src(99))
    assert upstream.duplicate and upstream.escalations == ()
    assert state.intensity == 0.75 and state.turns == 4


def test_state_round_trips_and_outbox_is_bounded() -> None:
    cfg = rules_from_mapping(
        {
            "rules": {"sustained": {"enabled": False}, "shift": {"enabled": False}, "spike": {"threshold": 0.7}},
            "cooldown": {"calm_turns": 1, "max_intensity": 0.5},
        }
    )
    esc = Escalator(cfg)
    # Open/resolve repeatedly: spikes at turns 1 (.75), 4 (.84), 6 and 9 (.71); each neutral resolves.
    emotions = ["anger", "anger", "neutral"] * 4
    state, out = run(esc, emotions)
    assert [e.status for e in out] == ["opened", "resolved"] * 4
    assert len({e.escalation_id for e in out}) == 4
    assert len(state.outbox) == OUTBOX_ENTRIES
    assert ConversationState.from_bytes(state.to_bytes()) == state


def test_idle_resolves_then_forgets_and_resends_the_idle_resolution() -> None:
    esc = Escalator(RulesConfig())  # resolve after 1800 s, forget after 3600 s
    state, out = run(esc, ["anger", "anger", "anger"])
    assert [e.status for e in out] == ["opened"]
    last = state.last_event_at
    assert esc.sweep(state, last + 1799).escalations == ()
    step = esc.sweep(state, last + 1800)
    (resolved,) = step.escalations
    assert (resolved.status, resolved.resolution, resolved.resolved_at, resolved.source) == (
        "resolved",
        "idle",
        last + 1800,
        None,
    )
    assert resolved.escalation_id == out[0].escalation_id
    ESCALATION_SCHEMA.validate(orjson.loads(escalation_event(resolved, emitted_at=2.0)))
    assert esc.sweep(state, last + 3599).state is state
    forget = esc.sweep(state, last + 3600)
    assert forget.state is None and forget.escalations == (resolved,)


# -- messages -----------------------------------------------------------------------------


def _emotion_value(**changes: object) -> dict:
    value = {
        "event_id": "c1:7",
        "conversation_id": "c1",
        "turn_id": "7",
        "speaker": "Ross",
        "emotion": "anger",
        "confidence": 0.7,
        "scores": {label: 0.1 for label in LABELS},
        "model_version": "v1",
        "context_turns": 3,
        "source": {"topic": "chat.turns", "partition": 0, "offset": 7},
        "ts": None,
        "record_ts_ms": 1,
        "produced_at": 1_700_000_000.5,
        "latency_ms": 3.0,
    }
    value.update(changes)
    return {k: v for k, v in value.items() if v is not _DROP}


_DROP = object()


def test_parse_emotion_event_accepts_the_worker_event() -> None:
    value = _emotion_value()
    EMOTION_SCHEMA.validate(value)
    parsed = parse_emotion_event(orjson.dumps(value), b"c1")
    assert parsed == EmotionEvent("c1:7", "c1", "7", "Ross", "anger", 0.7, value["scores"], "v1", 1_700_000_000.5, None)


@pytest.mark.parametrize(
    ("raw", "key", "reason", "fragment"),
    [
        (b"", None, Reason.NOT_JSON, "no value"),
        (b"\xff\xfe", None, Reason.NOT_UTF8, "not valid UTF-8"),
        (b"{nope", None, Reason.NOT_JSON, "not valid JSON"),
        (b"[1]", None, Reason.SCHEMA, "must be a JSON object"),
        (orjson.dumps(_emotion_value(emotion=_DROP)), None, Reason.SCHEMA, "missing required field emotion"),
        (orjson.dumps(_emotion_value(event_id="c1:8")), None, Reason.SCHEMA, "is not conversation_id + ':' + turn_id"),
        (orjson.dumps(_emotion_value(confidence=1.5)), None, Reason.SCHEMA, "confidence must be in [0, 1]"),
        (orjson.dumps(_emotion_value(confidence=True)), None, Reason.SCHEMA, "confidence must be a finite number"),
        (orjson.dumps(_emotion_value(emotion="rage")), None, Reason.SCHEMA, "not among the scored labels"),
        (orjson.dumps(_emotion_value(scores={"anger": 2.0})), None, Reason.SCHEMA, "is not a cosine"),
        (orjson.dumps(_emotion_value(produced_at="now")), None, Reason.SCHEMA, "produced_at must be a finite number"),
        (orjson.dumps(_emotion_value()), b"c2", Reason.KEY_MISMATCH, "differs from conversation_id"),
    ],
)
def test_parse_emotion_event_rejects_with_a_reason(
    raw: bytes, key: bytes | None, reason: Reason, fragment: str
) -> None:
    with pytest.raises(BadInput) as info:
        parse_emotion_event(raw, key)
    assert info.value.reason is reason
    assert fragment in info.value.detail
    # What the parser rejects for its content, the schema rejects too, except the two
    # cross-field checks JSON Schema cannot express (event_id composition, emotion among scores).
    cross_field = "conversation_id + ':'" in fragment or "scored labels" in fragment
    if reason is Reason.SCHEMA and raw.startswith(b"{") and not cross_field:
        with pytest.raises(jsonschema.ValidationError):
            EMOTION_SCHEMA.validate(orjson.loads(raw))


def test_escalation_id_is_stable_and_distinct() -> None:
    a = escalation_id("c1", "spike", "3")
    assert a == escalation_id("c1", "spike", "3")
    assert (
        len(
            {a, escalation_id("c1", "spike", "4"), escalation_id("c1", "shift", "3"), escalation_id("c2", "spike", "3")}
        )
        == 4
    )
    assert a == "3417a45a-b7a9-5ff4-af03-7bffe3d82673"  # pinned: a change would re-id every escalation


# -- process settings and the CLI -------------------------------------------------------


def test_cli_options_map_one_to_one_onto_the_config_and_its_env_names() -> None:
    import dataclasses

    import typer.main

    from erc_stream.cli import app
    from erc_stream.escalations.config import ENV_NAMES, EscalationsConfig

    command = typer.main.get_command(app).commands["escalations"]  # type: ignore[attr-defined]
    params = {p.name: p for p in command.params}
    fields = {f.name: f for f in dataclasses.fields(EscalationsConfig)}
    # The password comes from ERC_SASL_PASSWORD or a file, never a flag.
    assert set(params) - {"sasl_password_file"} == set(fields) - {"sasl_password"}
    defaults = EscalationsConfig()
    for name, param in params.items():
        if name == "sasl_password_file":
            assert param.envvar == "ERC_SASL_PASSWORD_FILE"
            continue
        assert param.envvar == ENV_NAMES[name], name
        assert param.default == getattr(defaults, name), name
    assert ENV_NAMES["bootstrap_servers"] == "ERC_BOOTSTRAP_SERVERS"  # shared with the worker
    assert ENV_NAMES["input_topic"] == "ERC_ESCALATIONS_INPUT_TOPIC"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"output_topic": "chat.emotions"}, "three different topics"),
        ({"auto_offset_reset": "middle"}, "EscalationsConfig.auto_offset_reset has an invalid value: 'middle'"),
        ({"producer_max_batch_bytes": 0}, "EscalationsConfig.producer_max_batch_bytes"),
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"rules_file": Path("/nonexistent/rules.yaml")}, "rules_file: file '/nonexistent/rules.yaml' does not exist"),
    ],
)
def test_bad_settings_name_the_field(changes: dict, message: str) -> None:
    from erc_stream.escalations.config import EscalationsConfig

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EscalationsConfig(**changes)


def test_the_app_imports_neither_trainer_nor_devtools() -> None:
    import subprocess
    import sys

    code = (
        "import sys, erc_stream.escalations.app, erc_stream.cli; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'trainer' or m.startswith('erc_stream.devtools')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
