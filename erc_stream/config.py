"""WorkerConfig: every setting of one worker process, validated once, and the helpers that
other configs share (validation, Kafka connection settings, environment names).

``WorkerConfig`` is the one place a worker setting is declared: `erc-stream worker` builds one
option per field from it (``--max-batch-size``, environment ``ERC_MAX_BATCH_SIZE``: see
:func:`env_name`), with the default and the help text given here. Secrets (the SASL password)
come from the environment or a file and never appear in ``repr``, logs, metrics or errors.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erc_stream.errors import ConfigError

__all__ = [
    "WorkerConfig",
    "valid_channel",
    "TopicNames",
    "DEFAULT_TOPICS",
    "KafkaConnection",
    "SECURITY_PROTOCOLS",
    "SASL_MECHANISMS",
    "LOG_LEVELS",
    "ENV_PREFIX",
    "env_name",
    "validate_settings",
    "require_nonempty",
    "validate_kafka_connection",
    "kafka_client_kwargs",
]

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "ERC_"


def env_name(setting: str) -> str:
    """The environment variable of a setting: ``max_batch_size`` -> ``ERC_MAX_BATCH_SIZE``."""
    return ENV_PREFIX + setting.upper()


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Names of the worker's three topics (ARCHITECTURE.md, "Topics and messages")."""

    input: str = "chat.turns"
    output: str = "chat.emotions"
    dlq: str = "chat.turns.dlq"

    def all(self) -> tuple[str, str, str]:
        """The three names: input, output, dead-letter."""
        return (self.input, self.output, self.dlq)


DEFAULT_TOPICS = TopicNames()


# -- validation shared by every config object (WorkerConfig, EscalationsConfig, TrainConfig) --


def _shown(config: object, name: str) -> str:
    """``repr`` of a field's value, or ``***`` for a field declared with ``repr=False`` (a secret)."""
    fields = {f.name: f for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else {}
    f = fields.get(name)
    if f is not None and not f.repr:
        return "***"
    return repr(getattr(config, name))


_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_channel(name: str) -> bool:
    """A model channel name (the store's ``CURRENT.<name>``); the empty name is the default CURRENT."""
    return not name or _CHANNEL_RE.match(name) is not None


def validate_settings(config: object, checks: Iterable[tuple[str, bool]], *, hint: str = "") -> None:
    """Raise :class:`ConfigError` for the first failed ``(field, ok)`` check.

    The message names the class, the field and the value, e.g. ``WorkerConfig.max_batch_size has
    an invalid value: 0``, then `` (hint)`` when given; a field declared with ``repr=False`` (a
    secret) shows as ``***``. Shared by every config object: WorkerConfig, the devtools configs,
    EscalationsConfig, TrainConfig.
    """
    for name, ok in checks:
        if not ok:
            shown = _shown(config, name) + (f" ({hint})" if hint else "")
            raise ConfigError(f"{type(config).__name__}.{name} has an invalid value: {shown}")


def require_nonempty(config: object, *names: str) -> None:
    """Raise :class:`ConfigError` for the first of ``names`` whose value is empty."""
    for name in names:
        if not getattr(config, name):
            raise ConfigError(f"{type(config).__name__}.{name} must not be empty")


def validate_kafka_connection(config: KafkaConnection) -> None:
    """Check the Kafka connection settings of any config object (a :class:`KafkaConnection`)."""
    validate_settings(
        config,
        [
            ("bootstrap_servers", bool(config.bootstrap_servers.strip())),
            ("security_protocol", config.security_protocol in SECURITY_PROTOCOLS),
            ("sasl_mechanism", config.sasl_mechanism is None or config.sasl_mechanism in SASL_MECHANISMS),
        ],
    )
    if config.uses_sasl:
        if config.sasl_mechanism is None:
            raise ConfigError(
                f"security_protocol={config.security_protocol} needs sasl_mechanism ({', '.join(SASL_MECHANISMS)})"
            )
        if not config.sasl_username or config.sasl_password is None:
            raise ConfigError("SASL needs sasl_username and a password (ERC_SASL_PASSWORD or --sasl-password-file)")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(config, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{type(config).__name__}.{name}: file {str(path)!r} does not exist")
    if (config.ssl_certfile is None) != (config.ssl_keyfile is None):
        raise ConfigError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")


def kafka_client_kwargs(config: KafkaConnection, client_id: str | None = None) -> dict[str, Any]:
    """Connection settings for aiokafka clients (security included)."""
    kw: dict[str, Any] = {"bootstrap_servers": config.bootstrap_servers, "security_protocol": config.security_protocol}
    if client_id is not None:
        kw["client_id"] = client_id
    if config.uses_tls:
        ctx = ssl.create_default_context(cafile=str(config.ssl_cafile) if config.ssl_cafile else None)
        if config.ssl_certfile:
            ctx.load_cert_chain(str(config.ssl_certfile), str(config.ssl_keyfile))
        kw["ssl_context"] = ctx
    if config.uses_sasl:
        kw["sasl_mechanism"] = config.sasl_mechanism
        kw["sasl_plain_username"] = config.sasl_username
        kw["sasl_plain_password"] = config.sasl_password
    return kw


def _setting(default: Any, help: str = "", **kw: Any) -> Any:
    """A field with its help text (the CLI option's help)."""
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class KafkaConnection:
    """The Kafka connection settings of every Kafka process (worker, escalations app): same
    fields, defaults, help and ``ERC_*`` variables. Its fields come first in a subclass."""

    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, comma-separated")
    security_protocol: str = _setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str | None = _setting(None, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = None
    # Never a flag: ERC_SASL_PASSWORD or --sasl-password-file (see erc_stream.cli).
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class WorkerConfig(KafkaConnection):
    """Settings of one `erc-stream worker`. Model facts (labels, prompt, context) come from the artifact."""

    input_topic: str = _setting(DEFAULT_TOPICS.input, "chat turns (JSON, key = conversation_id)")
    output_topic: str = _setting(DEFAULT_TOPICS.output, "emotion events")
    dlq_topic: str = _setting(DEFAULT_TOPICS.dlq, "dead letters: input that cannot be processed, with the reason")
    group_id: str = "erc-stream"
    client_id: str = "erc-stream-worker"
    model_store: Path = _setting(Path("var/models"), "model store; CURRENT names the version served")
    model_channel: str = _setting("", "serve the store's CURRENT.<channel> instead of CURRENT (e.g. emorynlp)")
    device: str = _setting("auto", "auto, cpu or cuda")
    dtype: str = _setting("auto", "auto, fp32, bf16 or fp16")
    max_batch_size: int = 32
    max_batch_tokens: int = _setting(8192, "padded tokens per batch at most")
    max_forward_prompts: int | None = _setting(
        None,
        "prompts per forward pass at most: a batch runs as length-sorted parts, less padding "
        "(default: 8 on a CPU, the whole batch on a GPU; 0: the whole batch)",
    )
    max_wait_ms: int = _setting(20, "longest a turn waits for a fuller batch")
    max_in_flight: int = _setting(512, "turns read but not acknowledged at most (backpressure; bounds re-reads)")
    context_turns: int | None = _setting(None, "fewer context turns than the model was trained with")
    window_ttl_s: float = _setting(3600.0, "idle seconds after which a conversation's window is dropped")
    max_conversations: int = _setting(100_000, "conversation windows kept at most (least recently used go)")
    max_text_chars: int = 4000
    restore_lookback_records: int = _setting(5000, "input records re-read to rebuild windows after a rebalance")
    reload_poll_s: float = _setting(5.0, "how often the model store's CURRENT is checked")
    commit_interval_ms: int = 500
    session_timeout_ms: int = 10000  # the local broker completes a join after ~half of this
    heartbeat_interval_ms: int = 1000
    metrics_host: str = "0.0.0.0"
    metrics_port: int = _setting(9400, "/metrics, /healthz and /readyz (0: any free port)")
    enable_idempotence: bool = _setting(False, "idempotent producer (real Kafka only; the local broker rejects it)")
    shutdown_timeout_s: float = 30.0
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")

    def __post_init__(self) -> None:
        validate_kafka_connection(self)
        validate_settings(
            self,
            [
                ("model_channel", valid_channel(self.model_channel)),
                ("device", self.device in ("auto", "cpu", "cuda")),
                ("dtype", self.dtype in ("auto", "fp32", "bf16", "fp16")),
                ("max_batch_size", self.max_batch_size >= 1),
                ("max_batch_tokens", self.max_batch_tokens >= 16),
                ("max_forward_prompts", self.max_forward_prompts is None or self.max_forward_prompts >= 0),
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
                ("log_level", self.log_level.upper() in LOG_LEVELS),
            ],
        )
        require_nonempty(self, "input_topic", "output_topic", "dlq_topic", "group_id")
        if len(set(self.topics.all())) != 3:
            raise ConfigError("input_topic, output_topic and dlq_topic must be three different topics")

    def replace(self, **changes: Any) -> WorkerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def topics(self) -> TopicNames:
        """The three topic names together."""
        return TopicNames(self.input_topic, self.output_topic, self.dlq_topic)

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    def kafka_kwargs(self) -> dict[str, Any]:
        """Connection settings for aiokafka clients (security included)."""
        return kafka_client_kwargs(self, self.client_id)
