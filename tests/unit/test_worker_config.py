"""WorkerConfig: validation messages name the field and value; secrets stay out of repr and errors;
aiokafka connection settings for PLAINTEXT, SASL (PLAIN/SCRAM) and TLS."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from pathlib import Path

import pytest

from erc_stream.config import WorkerConfig
from erc_stream.errors import ConfigError

SECRET = "s3cr3t-Pa55word"


def test_defaults_are_valid_and_derived_properties() -> None:
    cfg = WorkerConfig()
    assert not cfg.uses_sasl and not cfg.uses_tls
    assert cfg.max_wait_s == 0.02
    assert cfg.replace(max_wait_ms=250).max_wait_s == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_batch_size = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bootstrap_servers": "  "}, "WorkerConfig.bootstrap_servers has an invalid value: '  '"),
        ({"security_protocol": "TLS"}, "WorkerConfig.security_protocol has an invalid value: 'TLS'"),
        ({"sasl_mechanism": "GSSAPI"}, "WorkerConfig.sasl_mechanism has an invalid value: 'GSSAPI'"),
        ({"device": "tpu"}, "WorkerConfig.device has an invalid value: 'tpu'"),
        ({"dtype": "int8"}, "WorkerConfig.dtype has an invalid value: 'int8'"),
        ({"max_batch_size": 0}, "WorkerConfig.max_batch_size has an invalid value: 0"),
        ({"max_batch_tokens": 15}, "WorkerConfig.max_batch_tokens has an invalid value: 15"),
        ({"max_forward_prompts": -1}, "WorkerConfig.max_forward_prompts has an invalid value: -1"),
        ({"max_wait_ms": -1}, "WorkerConfig.max_wait_ms has an invalid value: -1"),
        ({"max_batch_size": 64, "max_in_flight": 63}, "WorkerConfig.max_in_flight has an invalid value: 63"),
        ({"context_turns": -1}, "WorkerConfig.context_turns has an invalid value: -1"),
        ({"window_ttl_s": 0.0}, "WorkerConfig.window_ttl_s has an invalid value: 0.0"),
        ({"max_conversations": 0}, "WorkerConfig.max_conversations has an invalid value: 0"),
        ({"max_text_chars": 0}, "WorkerConfig.max_text_chars has an invalid value: 0"),
        ({"restore_lookback_records": -5}, "WorkerConfig.restore_lookback_records has an invalid value: -5"),
        ({"reload_poll_s": 0}, "WorkerConfig.reload_poll_s has an invalid value: 0"),
        ({"commit_interval_ms": 9}, "WorkerConfig.commit_interval_ms has an invalid value: 9"),
        ({"session_timeout_ms": 999}, "WorkerConfig.session_timeout_ms has an invalid value: 999"),
        ({"heartbeat_interval_ms": 10000}, "WorkerConfig.heartbeat_interval_ms has an invalid value: 10000"),
        ({"heartbeat_interval_ms": 0}, "WorkerConfig.heartbeat_interval_ms has an invalid value: 0"),
        ({"metrics_port": 70000}, "WorkerConfig.metrics_port has an invalid value: 70000"),
        ({"shutdown_timeout_s": 0}, "WorkerConfig.shutdown_timeout_s has an invalid value: 0"),
        ({"log_level": "LOUD"}, "WorkerConfig.log_level has an invalid value: 'LOUD'"),
        ({"input_topic": ""}, "WorkerConfig.input_topic must not be empty"),
        ({"group_id": ""}, "WorkerConfig.group_id must not be empty"),
        ({"dlq_topic": "chat.emotions"}, "input_topic, output_topic and dlq_topic must be three different topics"),
    ],
)
def test_invalid_values_name_the_field_and_value(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkerConfig(**changes)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_boundary_values_are_accepted() -> None:
    WorkerConfig(
        max_batch_size=1,
        max_in_flight=1,
        max_batch_tokens=16,
        max_wait_ms=0,
        context_turns=0,
        restore_lookback_records=0,
        commit_interval_ms=10,
        session_timeout_ms=1000,
        heartbeat_interval_ms=999,
        metrics_port=0,
        log_level="debug",
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": SECRET},
            "security_protocol=SASL_PLAINTEXT needs sasl_mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_password": SECRET},
            "SASL needs sasl_username and a password (ERC_SASL_PASSWORD or --sasl-password-file)",
        ),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"},
            "SASL needs sasl_username and a password (ERC_SASL_PASSWORD or --sasl-password-file)",
        ),
    ],
)
def test_sasl_needs_mechanism_user_and_password(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkerConfig(**changes)
    assert str(info.value) == message


def test_password_never_in_repr_or_error_messages() -> None:
    cfg = WorkerConfig(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="svc", sasl_password=SECRET
    )
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert "svc" in repr(cfg)
    bad = [
        {"max_batch_size": 0},
        {"sasl_mechanism": "GSSAPI"},
        {"sasl_username": ""},
        {"security_protocol": "bogus"},
        {"ssl_cafile": Path("/nonexistent/ca.pem"), "security_protocol": "SASL_SSL"},
    ]
    for changes in bad:
        with pytest.raises(ConfigError) as info:
            cfg.replace(**changes)
        assert SECRET not in str(info.value), changes
        assert SECRET not in repr(info.value), changes


def test_kafka_kwargs_plaintext() -> None:
    cfg = WorkerConfig(bootstrap_servers="k1:9092,k2:9092", client_id="w-1")
    assert cfg.kafka_kwargs() == {
        "bootstrap_servers": "k1:9092,k2:9092",
        "security_protocol": "PLAINTEXT",
        "client_id": "w-1",
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_kwargs_sasl_plaintext(mechanism: str) -> None:
    cfg = WorkerConfig(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, sasl_username="svc", sasl_password=SECRET
    )
    assert cfg.uses_sasl and not cfg.uses_tls
    assert cfg.kafka_kwargs() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "client_id": "erc-stream-worker",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "svc",
        "sasl_plain_password": SECRET,
    }


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by the openssl command."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=erc-test-ca",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_kafka_kwargs_ssl_uses_the_ca_file(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    cfg = WorkerConfig(security_protocol="SSL", ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    assert cfg.uses_tls and not cfg.uses_sasl
    kw = cfg.kafka_kwargs()
    assert set(kw) == {"bootstrap_servers", "security_protocol", "client_id", "ssl_context"}
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in ctx.get_ca_certs()]
    assert subjects == [{"commonName": "erc-test-ca"}]


def test_kafka_kwargs_sasl_ssl_scram(tls_files: tuple[Path, Path]) -> None:
    cert, _ = tls_files
    cfg = WorkerConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SECRET,
        ssl_cafile=cert,
    )
    kw = cfg.kafka_kwargs()
    assert kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == SECRET
    assert isinstance(kw["ssl_context"], ssl.SSLContext)


def test_tls_file_checks(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as info:
        WorkerConfig(security_protocol="SSL", ssl_cafile=missing)
    assert str(info.value) == f"WorkerConfig.ssl_cafile: file {str(missing)!r} does not exist"
    with pytest.raises(ConfigError) as info:
        WorkerConfig(security_protocol="SSL", ssl_certfile=cert)
    assert str(info.value) == "ssl_certfile and ssl_keyfile go together (client certificate and its key)"
    with pytest.raises(ConfigError):
        WorkerConfig(security_protocol="SSL", ssl_keyfile=key)
