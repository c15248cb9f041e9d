"""The escalation rules: their settings (a validated file with defaults) and the three detectors.

Settings: :func:`load_rules` reads a YAML file (``rules.yaml`` next to this module holds the
defaults, documented), checks it against ``rules.schema.json`` (types, ranges, unknown keys) and
then the cross-field limits below; any problem is a :class:`~erc_stream.errors.ConfigError`
naming the key and the value.

Detectors are pure functions of a conversation's recent turns (oldest first, the newest last)
and return a :class:`Match` naming the turns that satisfy the rule, or ``None``:

- :func:`sustained`: at least ``min_negative_turns`` of the last ``window_turns`` turns are
  negative (emotion in ``emotions.negative``, confidence >= ``min_confidence``), the newest
  among them;
- :func:`spike`: the intensity (an exponentially weighted share of negative turns) crossed
  ``threshold`` from below on this (negative) turn;
- :func:`shift`: ``calm_turns`` consecutive calm turns, then, with the last calm turn at most
  ``within_turns`` turns back, ``negative_turns`` consecutive negative turns ending now.

Every rule fires only on a negative turn, so a conversation that has just cooled down does not
re-open on a calm turn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from erc_stream.errors import ConfigError
from erc_stream.escalations.messages import Evidence

__all__ = [
    "RULE_NAMES",
    "SEVERITIES",
    "Cooldown",
    "Match",
    "RulesConfig",
    "ShiftRule",
    "SpikeRule",
    "SustainedRule",
    "default_rules_path",
    "load_rules",
    "shift",
    "spike",
    "sustained",
]

SEVERITIES = ("low", "medium", "high")  # ascending
RULE_NAMES = ("sustained", "spike", "shift")  # tie-break order when two fire on one turn


def _check(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"{name} = {value!r} is invalid: {why}")


@dataclass(frozen=True)
class SustainedRule:
    enabled: bool = True
    severity: str = "medium"
    min_negative_turns: int = 3
    window_turns: int = 5
    min_confidence: float = 0.3

    def __post_init__(self) -> None:
        _check(
            self.min_negative_turns <= self.window_turns,
            "rules.sustained.min_negative_turns",
            self.min_negative_turns,
            f"more than window_turns ({self.window_turns}): the rule could never fire",
        )


@dataclass(frozen=True)
class SpikeRule:
    enabled: bool = True
    severity: str = "high"
    threshold: float = 0.8


@dataclass(frozen=True)
class ShiftRule:
    enabled: bool = True
    severity: str = "low"
    calm_turns: int = 2
    negative_turns: int = 2
    within_turns: int = 3
    min_confidence: float = 0.3

    def __post_init__(self) -> None:
        _check(
            self.negative_turns <= self.within_turns,
            "rules.shift.negative_turns",
            self.negative_turns,
            f"more than within_turns ({self.within_turns}): the rule could never fire",
        )


@dataclass(frozen=True)
class Cooldown:
    calm_turns: int = 3
    max_intensity: float = 0.3


@dataclass(frozen=True)
class RulesConfig:
    """Every setting of the escalation rules; the defaults equal ``rules.yaml``."""

    # The labels of every shipped dataset: a model emits only its own (MELD and DailyDialog share
    # anger/disgust/fear/sadness; EmoryNLP says mad/scared/sad; IEMOCAP angry/frustrated/sad).
    negative_emotions: tuple[str, ...] = (
        "anger",
        "disgust",
        "fear",
        "sadness",
        "mad",
        "scared",
        "sad",
        "angry",
        "frustrated",
    )
    calm_emotions: tuple[str, ...] = (
        "neutral",
        "joy",
        "joyful",
        "peaceful",
        "powerful",
        "happiness",
        "happy",
        "excited",
    )
    history_turns: int = 8
    dedupe_turns: int = 64
    intensity_alpha: float = 0.5
    intensity_min_confidence: float = 0.3
    sustained: SustainedRule = field(default_factory=SustainedRule)
    spike: SpikeRule = field(default_factory=SpikeRule)
    shift: ShiftRule = field(default_factory=ShiftRule)
    cooldown: Cooldown = field(default_factory=Cooldown)
    idle_resolve_s: float = 1800.0
    idle_forget_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in RULE_NAMES:
            severity = getattr(self, name).severity
            _check(severity in SEVERITIES, f"rules.{name}.severity", severity, f"use one of {', '.join(SEVERITIES)}")
        _check(0 < self.intensity_alpha <= 1, "intensity.alpha", self.intensity_alpha, "must be in (0, 1]")
        both = set(self.negative_emotions) & set(self.calm_emotions)
        _check(not both, "emotions.calm", list(self.calm_emotions), f"{sorted(both)} also listed as negative")
        _check(bool(self.negative_emotions), "emotions.negative", [], "at least one negative emotion is needed")
        needed = max(
            self.sustained.window_turns,
            self.shift.calm_turns + self.shift.within_turns,
            self.cooldown.calm_turns,
        )
        _check(
            self.history_turns >= needed,
            "history_turns",
            self.history_turns,
            f"the rules look back {needed} turns (sustained.window_turns, shift.calm_turns + "
            "shift.within_turns, cooldown.calm_turns); raise history_turns to at least that",
        )
        _check(
            self.idle_forget_s > self.idle_resolve_s,
            "idle_forget_s",
            self.idle_forget_s,
            f"must be greater than idle_resolve_s ({self.idle_resolve_s}): a state is forgotten "
            "only after its idle escalation was resolved",
        )

    @property
    def enabled_rules(self) -> tuple[str, ...]:
        """Names of the enabled rules, in tie-break order."""
        return tuple(name for name in RULE_NAMES if getattr(self, name).enabled)

    def severity_of(self, rule: str) -> str:
        return str(getattr(self, rule).severity)

    def is_negative(self, turn: Evidence, min_confidence: float = 0.0) -> bool:
        return turn.emotion in self.negative_emotions and turn.confidence >= min_confidence

    def intensity_value(self, turn: Evidence) -> float:
        """What one turn adds to the intensity: 1 for a negative turn at ``intensity.min_confidence``, else 0.

        A 0/1 value rather than the confidence itself: model confidences are not calibrated (the
        MELD model shipped when this was chosen had a median of 0.47 on negative turns), so a
        confidence-weighted intensity would make the threshold mean something different for every model.
        """
        return 1.0 if self.is_negative(turn, self.intensity_min_confidence) else 0.0


# -- loading ------------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The packaged ``rules.yaml`` (the documented defaults)."""
    return Path(str(resources.files("erc_stream.escalations").joinpath("rules.yaml")))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files("erc_stream.escalations").joinpath("rules.schema.json").read_text(encoding="utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def _sub(cls: type, raw: Mapping[str, Any] | None) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (raw or {}).items() if k in names})


def rules_from_mapping(raw: Mapping[str, Any], origin: str = "rules") -> RulesConfig:
    """A :class:`RulesConfig` from a parsed rules document (missing keys keep their defaults)."""
    errors = sorted(_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{origin}: {where}: {err.message}")
    try:
        return _build(raw)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _build(raw: Mapping[str, Any]) -> RulesConfig:
    emotions = raw.get("emotions") or {}
    rules = raw.get("rules") or {}
    kwargs: dict[str, Any] = {
        "sustained": _sub(SustainedRule, rules.get("sustained")),
        "spike": _sub(SpikeRule, rules.get("spike")),
        "shift": _sub(ShiftRule, rules.get("shift")),
        "cooldown": _sub(Cooldown, raw.get("cooldown")),
    }
    if "negative" in emotions:
        kwargs["negative_emotions"] = tuple(emotions["negative"])
    if "calm" in emotions:
        kwargs["calm_emotions"] = tuple(emotions["calm"])
    intensity = raw.get("intensity") or {}
    if "alpha" in intensity:
        kwargs["intensity_alpha"] = float(intensity["alpha"])
    if "min_confidence" in intensity:
        kwargs["intensity_min_confidence"] = float(intensity["min_confidence"])
    for name in ("history_turns", "dedupe_turns", "idle_resolve_s", "idle_forget_s"):
        if name in raw:
            kwargs[name] = raw[name]
    return RulesConfig(**kwargs)


def load_rules(path: Path | None = None) -> RulesConfig:
    """Read and validate a rules file; ``None`` means the packaged defaults.

    Raises:
        ConfigError: the file is missing, not YAML, or has a bad key or value (named).
    """
    path = default_rules_path() if path is None else Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the escalation rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the escalation rules file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the escalation rules file {path} must hold a mapping, got {type(raw).__name__}")
    return rules_from_mapping(raw, origin=str(path))


# -- detectors ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Match:
    """A rule that fired, with the turns (oldest first) that satisfy it."""

    rule: str
    severity: str
    turn_ids: tuple[str, ...]


def sustained(history: Sequence[Evidence], cfg: RulesConfig) -> Match | None:
    """At least m of the last n turns negative, the newest turn among them."""
    rule = cfg.sustained
    if not history or not cfg.is_negative(history[-1], rule.min_confidence):
        return None
    negative = [t.turn_id for t in history[-rule.window_turns :] if cfg.is_negative(t, rule.min_confidence)]
    if len(negative) < rule.min_negative_turns:
        return None
    return Match("sustained", rule.severity, tuple(negative))


def spike(history: Sequence[Evidence], intensity_before: float, intensity: float, cfg: RulesConfig) -> Match | None:
    """The intensity crossed the threshold from below on the newest turn.

    The turns named are the trailing run of negative-emotion turns that raised it.
    """
    rule = cfg.spike
    if not history or not (intensity_before < rule.threshold <= intensity):
        return None
    run: list[str] = []
    for turn in reversed(history):
        if turn.emotion not in cfg.negative_emotions:
            break
        run.append(turn.turn_id)
    return Match("spike", rule.severity, tuple(reversed(run)))


def shift(history: Sequence[Evidence], cfg: RulesConfig) -> Match | None:
    """Calm for ``calm_turns`` turns, then ``negative_turns`` negative turns, within ``within_turns``."""
    rule = cfg.shift
    t = len(history) - 1
    k = rule.negative_turns
    if t + 1 < k or not all(cfg.is_negative(turn, rule.min_confidence) for turn in history[t - k + 1 :]):
        return None
    # s: the last calm turn of the calm phase, at most within_turns before t and before the run.
    for s in range(t - k, max(t - rule.within_turns, 0) - 1, -1):
        start = s - rule.calm_turns + 1
        if start < 0:
            break
        if all(turn.emotion in cfg.calm_emotions for turn in history[start : s + 1]):
            ids = [turn.turn_id for turn in history[start : s + 1]] + [turn.turn_id for turn in history[t - k + 1 :]]
            return Match("shift", rule.severity, tuple(ids))
    return None
