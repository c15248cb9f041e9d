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

from erc_stream.config import SASL_MECHANISMS, SECURITY_PROTOCOLS
from erc_stream.errors import ConfigError

__all__ = ["ENV_NAMES", "EscalationsConfig"]

# Kafka connection settings shared with the worker (same Secret, same ConfigMap keys).
_SHARED = (
    "bootstrap_servers",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "log_level",
)


@dataclass(frozen=True)
class EscalationsConfig:
    """Settings of `erc-stream escalations` (faust-streaming app over the emotions topic)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    input_topic: str = "chat.emotions"
    output_topic: str = "chat.escalations"
    dlq_topic: str = "chat.emotions.dlq"
    # faust app id: the consumer group and the prefix of the changelog topic
    # (<app_id>-conversations-changelog).
    app_id: str = "erc-escalations"
    rules_file: Path | None = None  # None: the packaged defaults (erc_stream/escalations/rules.yaml)
    replication_factor: int = 1  # of the topics the app creates (changelog, output, DLQ)
    auto_offset_reset: str = "earliest"  # where a new group starts on the emotions topic
    commit_interval_ms: int = 1000
    session_timeout_ms: int = 10000  # the local broker completes a join after ~half of this
    heartbeat_interval_ms: int = 1000
    # Upper bound of a producer batch. 1 sends one record per batch: needed on the local
    # Tansu broker, which reports a short end offset after a multi-record batch (faust would
    # stop restoring the table before its last records; docs/escalations.md).
    producer_max_batch_bytes: int = 16384
    sweep_interval_s: float = 60.0  # event-time seconds between idle sweeps of a partition
    lag_poll_s: float = 5.0  # how often the consumer-lag gauge is refreshed
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9401
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        checks = [
            ("bootstrap_servers", bool(self.bootstrap_servers.strip())),
            ("security_protocol", self.security_protocol in SECURITY_PROTOCOLS),
            ("sasl_mechanism", self.sasl_mechanism is None or self.sasl_mechanism in SASL_MECHANISMS),
            ("replication_factor", self.replication_factor >= 1),
            ("auto_offset_reset", self.auto_offset_reset in ("earliest", "latest")),
            ("commit_interval_ms", self.commit_interval_ms >= 10),
            ("session_timeout_ms", self.session_timeout_ms >= 1000),
            ("heartbeat_interval_ms", 0 < self.heartbeat_interval_ms < self.session_timeout_ms),
            ("producer_max_batch_bytes", self.producer_max_batch_bytes >= 1),
            ("sweep_interval_s", self.sweep_interval_s > 0),
            ("lag_poll_s", self.lag_poll_s > 0),
            ("metrics_port", 0 <= self.metrics_port <= 65535),
            ("log_level", self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"EscalationsConfig.{name} has an invalid value: {getattr(self, name)!r}")
        for name in ("input_topic", "output_topic", "dlq_topic", "app_id"):
            if not getattr(self, name):
                raise ConfigError(f"EscalationsConfig.{name} must not be empty")
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ConfigError("input_topic, output_topic and dlq_topic must be three different topics")
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism is None:
                raise ConfigError(
                    f"security_protocol={self.security_protocol} needs sasl_mechanism "
                    "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError("SASL needs sasl_username and a password (ERC_SASL_PASSWORD or --sasl-password-file)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ConfigError(f"EscalationsConfig.{name}: file {str(p)!r} does not exist")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")
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
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
        return ctx

    def kafka_kwargs(self) -> dict[str, Any]:
        """Connection settings for plain aiokafka clients (topic checks before faust starts)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": f"{self.app_id}-setup",
        }
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL_"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw


def _env_name(name: str) -> str:
    return f"ERC_{name.upper()}" if name in _SHARED else f"ERC_ESCALATIONS_{name.upper()}"


# Field -> environment variable; the CLI options use exactly these (a test checks it).
ENV_NAMES: dict[str, str] = {f.name: _env_name(f.name) for f in dataclasses.fields(EscalationsConfig)}
