"""EscalationsConfig: every setting of one `erc-stream escalations` process, validated once.

The rules themselves live in a separate file (:mod:`erc_stream.escalations.rules`); this object
only says where it is. Kafka connection settings mean what they mean for the worker and use the
same ``ERC_*`` variables; the app's own settings use ``ERC_ESCALATIONS_*`` (see :data:`ENV_NAMES`).
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erc_stream.config import (
    LOG_LEVELS,
    KafkaConnection,
    env_name,
    kafka_client_kwargs,
    require_nonempty,
    validate_kafka_connection,
    validate_settings,
)
from erc_stream.errors import ConfigError

__all__ = ["ENV_NAMES", "EscalationsConfig", "escalations_env_name"]

# Kafka connection settings shared with the worker (same Secret, same ConfigMap keys).
_SHARED = frozenset({f.name for f in dataclasses.fields(KafkaConnection)} | {"log_level"})


def _setting(default: Any, help: str = "") -> Any:
    """A field with its help text (the CLI option's help)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EscalationsConfig(KafkaConnection):
    """Settings of `erc-stream escalations` (faust-streaming app over the emotions topic); the Kafka
    connection fields come first, from :class:`~erc_stream.config.KafkaConnection`."""

    input_topic: str = _setting("chat.emotions", "the emotion events (key = conversation_id)")
    output_topic: str = _setting("chat.escalations", "escalations opened / resolved")
    dlq_topic: str = _setting("chat.emotions.dlq", "emotion events the app cannot read, with the reason")
    app_id: str = _setting(
        "erc-escalations", "faust app id: consumer group and changelog prefix (<app_id>-conversations-changelog)"
    )
    rules_file: Path | None = _setting(None, "escalation rules (YAML); default: the packaged rules.yaml")
    replication_factor: int = _setting(1, "replication factor of the topics the app creates")
    auto_offset_reset: str = _setting("earliest", "where a new consumer group starts: earliest or latest")
    commit_interval_ms: int = 1000
    session_timeout_ms: int = 10000  # the local broker completes a join after ~half of this
    heartbeat_interval_ms: int = 1000
    # 1 sends one record per batch: needed on the local Tansu broker, which reports a short end
    # offset after a multi-record batch (faust would stop restoring the table before its last
    # records; docs/escalations.md).
    producer_max_batch_bytes: int = _setting(
        16384, "producer batch bound; 1 on the local broker (one record per batch, see docs/escalations.md)"
    )
    sweep_interval_s: float = _setting(60.0, "event-time seconds between idle sweeps of a partition")
    lag_poll_s: float = _setting(5.0, "how often the consumer-lag gauge is refreshed")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = _setting(9401, "/metrics, /healthz and /readyz (0: any free port)")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        validate_kafka_connection(self)
        validate_settings(
            self,
            [
                ("replication_factor", self.replication_factor >= 1),
                ("auto_offset_reset", self.auto_offset_reset in ("earliest", "latest")),
                ("commit_interval_ms", self.commit_interval_ms >= 10),
                ("session_timeout_ms", self.session_timeout_ms >= 1000),
                ("heartbeat_interval_ms", 0 < self.heartbeat_interval_ms < self.session_timeout_ms),
                ("producer_max_batch_bytes", self.producer_max_batch_bytes >= 1),
                ("sweep_interval_s", self.sweep_interval_s > 0),
                ("lag_poll_s", self.lag_poll_s > 0),
                ("metrics_port", 0 <= self.metrics_port <= 65535),
                ("log_level", self.log_level.upper() in LOG_LEVELS),
            ],
        )
        require_nonempty(self, "input_topic", "output_topic", "dlq_topic", "app_id")
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ConfigError("input_topic, output_topic and dlq_topic must be three different topics")
        if self.rules_file is not None and not Path(self.rules_file).is_file():
            raise ConfigError(f"EscalationsConfig.rules_file: file {str(self.rules_file)!r} does not exist")

    def replace(self, **changes: Any) -> EscalationsConfig:
        return dataclasses.replace(self, **changes)

    @property
    def changelog_topic(self) -> str:
        """The faust table's changelog topic."""
        return f"{self.app_id}-conversations-changelog"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL / SASL_SSL, else ``None``."""
        ctx: ssl.SSLContext | None = kafka_client_kwargs(self).get("ssl_context")
        return ctx

    def kafka_kwargs(self) -> dict[str, Any]:
        """Connection settings for plain aiokafka clients (topic checks before faust starts)."""
        return kafka_client_kwargs(self, client_id=f"{self.app_id}-setup")


def escalations_env_name(setting: str) -> str:
    """The environment variable of a setting: the worker's for Kafka connection settings
    (``ERC_BOOTSTRAP_SERVERS``), ``ERC_ESCALATIONS_<NAME>`` for the app's own."""
    return env_name(setting) if setting in _SHARED else env_name(f"escalations_{setting}")


# Field -> environment variable; the CLI options use exactly these (a test checks it).
ENV_NAMES: dict[str, str] = {f.name: escalations_env_name(f.name) for f in dataclasses.fields(EscalationsConfig)}
