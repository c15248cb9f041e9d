"""Every Prometheus metric of the escalations app, created against an injectable registry.

Names are a contract (docs/escalations.md, the Grafana dashboard's escalations row and the
``ErcEscalationsLagging`` alert use them). No metric carries a per-conversation label.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from erc_stream.escalations.messages import COOLED_DOWN, IDLE
from erc_stream.escalations.rules import RULE_NAMES, SEVERITIES

__all__ = ["EVENT_RESULTS", "LAG_BUCKETS_S", "EscalationMetrics"]

LAG_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# What became of an input record: applied to a state, dropped as a repeat, dead-lettered.
EVENT_RESULTS = ("applied", "duplicate", "dead_letter")


class EscalationMetrics:
    """The app's metrics. Pass a fresh ``CollectorRegistry`` in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.opened = Counter(
            "erc_escalations_opened", "Escalations opened, by rule and severity.", ["rule", "severity"], registry=r
        )
        self.resolved = Counter(
            "erc_escalations_resolved",
            "Escalations resolved, by rule, severity and resolution (cooled_down, idle).",
            ["rule", "severity", "resolution"],
            registry=r,
        )
        self.resent = Counter(
            "erc_escalations_resent", "Escalation records sent again for a repeated input event.", registry=r
        )
        self.open = Gauge(
            "erc_escalations_open",
            "Conversations with an open escalation in this instance's partitions.",
            ["rule", "severity"],
            registry=r,
        )
        self.conversations = Gauge(
            "erc_escalations_conversations", "Conversation states held in this instance's partitions.", registry=r
        )
        self.events_processed = Counter(
            "erc_escalations_events_processed",
            "Emotion events read, by result (applied, duplicate, dead_letter).",
            ["result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "erc_escalations_dead_letters", "Emotion events sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.processing_lag_seconds = Histogram(
            "erc_escalations_processing_lag_seconds",
            "From the emotion event's produced_at to the moment the app processed it.",
            buckets=LAG_BUCKETS_S,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "erc_escalations_consumer_lag",
            "High watermark minus next offset to process, per emotions partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "erc_escalations_partitions_assigned", "Emotions partitions assigned to this instance.", registry=r
        )
        # Series created at 0 up front: a counter born by its first increment shows increase() == 0.
        for rule in RULE_NAMES:
            for severity in SEVERITIES:
                self.opened.labels(rule=rule, severity=severity)
                self.open.labels(rule=rule, severity=severity)
                for resolution in (COOLED_DOWN, IDLE):
                    self.resolved.labels(rule=rule, severity=severity, resolution=resolution)
        for result in EVENT_RESULTS:
            self.events_processed.labels(result=result)

    def set_open(self, counts: Iterable[tuple[tuple[str, str], int]]) -> None:
        """Set ``erc_escalations_open`` from ((rule, severity), count) pairs; others go to 0."""
        seen = dict(counts)
        for rule in RULE_NAMES:
            for severity in SEVERITIES:
                self.open.labels(rule=rule, severity=severity).set(seen.get((rule, severity), 0))
