"""WorkerConfig: every setting of one worker process, validated once.

Settings come from flags and ``ERC_*`` environment variables (the CLI maps them one to one).
Secrets (SASL password) come from the environment or a file and never appear in ``repr``,
logs, metrics or the manifest.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from erc_stream.errors import ConfigError

__all__ = ["WorkerConfig", "SECURITY_PROTOCOLS", "SASL_MECHANISMS"]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one `erc-stream worker`. Model facts (labels, prompt, context) come from the artifact."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    input_topic: str = "chat.turns"
    output_topic: str = "chat.emotions"
    dlq_topic: str = "chat.turns.dlq"
    group_id: str = "erc-stream"
    client_id: str = "erc-stream-worker"
    model_store: Path = Path("var/models")
    device: str = "auto"
    dtype: str = "auto"
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_ms: int = 20
    max_in_flight: int = 512
    context_turns: int | None = None
    window_ttl_s: float = 3600.0
    max_conversations: int = 100_000
    max_text_chars: int = 4000
    restore_lookback_records: int = 5000
    reload_poll_s: float = 5.0
    commit_interval_ms: int = 500
    session_timeout_ms: int = 10000  # the local broker completes a join after ~half of this
    heartbeat_interval_ms: int = 1000
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9400
    enable_idempotence: bool = False
    shutdown_timeout_s: float = 30.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        checks = [
            ("bootstrap_servers", bool(self.bootstrap_servers.strip())),
            ("security_protocol", self.security_protocol in SECURITY_PROTOCOLS),
            ("sasl_mechanism", self.sasl_mechanism is None or self.sasl_mechanism in SASL_MECHANISMS),
            ("device", self.device in ("auto", "cpu", "cuda")),
            ("dtype", self.dtype in ("auto", "fp32", "bf16", "fp16")),
            ("max_batch_size", self.max_batch_size >= 1),
            ("max_batch_tokens", self.max_batch_tokens >= 16),
            ("max_wait_ms", self.max_wait_ms >= 0),
            ("max_in_flight", self.max_in_flight >= self.max_batch_size),
            ("context_turns", self.context_turns is None or self.context_turns >= 0),
            ("window_ttl_s", self.window_ttl_s > 0),
            ("max_conversations", self.max_conversations >= 1),
            ("max_text_chars", self.max_text_chars >= 1),
            ("restore_lookback_records", self.restore_lookback_records >= 0),
            ("reload_poll_s", self.reload_poll_s > 0),
            ("commit_interval_ms", self.commit_interval_ms >= 10),
            ("session_timeout_ms", self.session_timeout_ms >= 1000),
            ("heartbeat_interval_ms", 0 < self.heartbeat_interval_ms < self.session_timeout_ms),
            ("metrics_port", 0 <= self.metrics_port <= 65535),
            ("shutdown_timeout_s", self.shutdown_timeout_s > 0),
            ("log_level", self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")),
        ]
        for name, ok in checks:
            if not ok:
                shown = "***" if name == "sasl_password" else repr(getattr(self, name))
                raise ConfigError(f"WorkerConfig.{name} has an invalid value: {shown}")
        for name in ("input_topic", "output_topic", "dlq_topic", "group_id"):
            if not getattr(self, name):
                raise ConfigError(f"WorkerConfig.{name} must not be empty")
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ConfigError("input_topic, output_topic and dlq_topic must be three different topics")
        if self.uses_sasl:
            if self.sasl_mechanism is None:
                raise ConfigError(
                    f"security_protocol={self.security_protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError("SASL needs sasl_username and a password (ERC_SASL_PASSWORD or --sasl-password-file)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ConfigError(f"WorkerConfig.{name}: file {str(p)!r} does not exist")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")

    def replace(self, **changes) -> WorkerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    def kafka_kwargs(self) -> dict:
        """Connection settings for aiokafka clients (security included)."""
        kw: dict = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.uses_tls:
            ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
            if self.ssl_certfile:
                ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile))
            kw["ssl_context"] = ctx
        if self.uses_sasl:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw
