"""Transport security, credentials and the HTTP surface of the worker.

- TLS: the local broker speaks plain Kafka, so stunnel (Debian ``stunnel4``; ``make sysdeps``)
  terminates TLS in front of it with a certificate from a CA made here, and the broker
  advertises the stunnel address. A worker with ``security_protocol=SSL`` and that CA
  processes turns end to end; with another CA it exits non-zero at once, saying why.
- SASL: the local broker supports no SASL mechanism (memory storage has no users), so the
  settings' mapping onto aiokafka is checked directly, and a refused handshake must end the
  worker quickly with a clear error.
- Secrets: the SASL password (env or file) never shows in logs, /metrics or ``repr``.
- HTTP: only GET /metrics, /healthz, /readyz; bound to the configured address only.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.helpers import create_ssl_context
from prometheus_client import CollectorRegistry

from erc_stream.config import WorkerConfig
from erc_stream.devtools.broker import LocalBroker, acreate_topics, free_port
from erc_stream.errors import ConfigError
from erc_stream.health import HealthServer
from erc_stream.metrics import WorkerMetrics
from tests.fixtures_model import publish_test_model
from tests.integration.worker_harness import Topics, WorkerProcess, http_get, meld_dev, turn_records

pytestmark = pytest.mark.broker

PASSWORD = "pw-" + uuid.uuid4().hex  # unique, so a leak anywhere is unmistakable
STARTUP_FAILURE_LIMIT_S = 60.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store")
    publish_test_model(path, version="sec-v1", context_turns=2, max_length=128)
    return path


# ---------------------------------------------------------------------- PKI and stunnel


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)


def _make_ca(cwd: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates (apt-get install openssl)")
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "erc-test-ca")
    _make_ca(d, "other-ca")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "erc-test-ca.pem",
        "-CAkey",
        "erc-test-ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        cwd=d,
    )
    return Pki(d / "erc-test-ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")


@dataclass(frozen=True)
class TlsBroker:
    broker: LocalBroker
    bootstrap: str  # the TLS address (stunnel)
    pki: Pki

    def ssl_context(self) -> ssl.SSLContext:
        return create_ssl_context(cafile=str(self.pki.ca))


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stunnel exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"stunnel is not listening on {port}:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if stunnel is None:
        pytest.skip("stunnel is not installed: `make sysdeps` (or apt-get install stunnel4) for the TLS tests")
    d = tmp_path_factory.mktemp("stunnel")
    tls_port = free_port()
    broker = LocalBroker(log_path=d / "tansu.log", advertised_host="127.0.0.1", advertised_port=tls_port)
    broker.start()
    conf = d / "stunnel.conf"
    conf.write_text(
        "foreground = yes\npid =\ndebug = warning\n"
        f"[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = {broker.bootstrap}\n"
        f"cert = {pki.server_cert}\nkey = {pki.server_key}\n"
    )
    log = d / "stunnel.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([stunnel, str(conf)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_listening(tls_port, proc, log)
        yield TlsBroker(broker, f"127.0.0.1:{tls_port}", pki)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        broker.stop()


def _tls_topics(tb: TlsBroker) -> Topics:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"tls.turns.{suffix}", f"tls.emotions.{suffix}", f"tls.dlq.{suffix}", 2)
    asyncio.run(
        acreate_topics(
            tb.bootstrap,
            {topics.input: 2, topics.output: 2, topics.dlq: 1},
            security_protocol="SSL",
            ssl_context=tb.ssl_context(),
        )
    )
    return topics


# ---------------------------------------------------------------------- TLS


@pytest.mark.timeout(300)
def test_worker_over_tls_end_to_end_without_leaking_the_password(
    tls_broker: TlsBroker, store: Path, tmp_path: Path
) -> None:
    tb = tls_broker
    topics = _tls_topics(tb)
    records = turn_records(meld_dev(3, start=20))
    want = {r.event_id for r in records}

    async def scenario() -> tuple[set[str], str, list]:
        # The password is loaded (env) though TLS without SASL never uses it: it must not leak.
        w = WorkerProcess(
            tb.bootstrap,
            topics,
            store,
            f"tls-{uuid.uuid4().hex[:8]}",
            tmp_path / "worker.log",
            security_protocol="SSL",
            ssl_cafile=tb.pki.ca,
            sasl_password=PASSWORD,
            log_level="DEBUG",
        )
        try:
            await w.wait_ready(timeout_s=120)
            listening = [
                c.laddr
                for c in psutil.Process(w.proc.pid).net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN
            ]
            producer = AIOKafkaProducer(
                bootstrap_servers=tb.bootstrap, security_protocol="SSL", ssl_context=tb.ssl_context(), acks="all"
            )
            await producer.start()
            try:
                for r in records:
                    await producer.send_and_wait(topics.input, r.value, key=r.key)
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(
                bootstrap_servers=tb.bootstrap,
                security_protocol="SSL",
                ssl_context=tb.ssl_context(),
                group_id=None,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            got: set[str] = set()
            try:
                consumer.assign([TopicPartition(topics.output, p) for p in range(2)])
                deadline = time.monotonic() + 120
                while not want <= got and time.monotonic() < deadline:
                    for recs in (await consumer.getmany(timeout_ms=500)).values():
                        got.update(orjson.loads(rec.value)["event_id"] for rec in recs)
            finally:
                await consumer.stop()
            bodies = [(await http_get(w.url + path))[1] for path in ("/metrics", "/healthz", "/readyz")]
            w.signal(signal.SIGTERM)
            assert await w.wait_exit(60) == 0
            return got, w.log_path.read_text(errors="replace") + "".join(bodies), listening
        finally:
            w.close()

    got, text, listening = asyncio.run(scenario())
    assert want <= got
    assert PASSWORD not in text
    # The HTTP server listens only where it was told (ERC_METRICS_HOST=127.0.0.1).
    http = [a for a in listening if a.port != 0 and a.ip in ("127.0.0.1", "0.0.0.0", "::")]
    assert http and all(a.ip == "127.0.0.1" for a in http), listening


@pytest.mark.timeout(120)
def test_wrong_ca_is_refused_with_a_clear_error_and_nonzero_exit(
    tls_broker: TlsBroker, store: Path, tmp_path: Path
) -> None:
    tb = tls_broker
    topics = Topics("tls.turns.wrong", "tls.emotions.wrong", "tls.dlq.wrong", 1)

    async def scenario() -> tuple[int, float, str]:
        w = WorkerProcess(
            tb.bootstrap,
            topics,
            store,
            "tls-wrong-ca",
            tmp_path / "worker.log",
            security_protocol="SSL",
            ssl_cafile=tb.pki.other_ca,
        )
        t0 = time.monotonic()
        try:
            code = await w.wait_exit(STARTUP_FAILURE_LIMIT_S)
            return code, time.monotonic() - t0, w.log_path.read_text(errors="replace")
        finally:
            w.close()

    code, seconds, log = asyncio.run(scenario())
    assert code == 1, log[-2000:]
    assert seconds < STARTUP_FAILURE_LIMIT_S
    assert f"cannot connect to Kafka at {tb.bootstrap} (SSL)" in log
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
    assert log.count("cannot connect to Kafka") == 1  # one attempt, no retry loop


def test_plaintext_client_cannot_talk_to_the_tls_port(tls_broker: TlsBroker) -> None:
    async def attempt() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=tls_broker.bootstrap, request_timeout_ms=5000)
        try:
            await asyncio.wait_for(producer.start(), 20)
        finally:
            await producer.stop()

    with pytest.raises(Exception, match="bootstrap|Timeout|timed out"):
        asyncio.run(attempt())


# ---------------------------------------------------------------------- SASL settings


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_map_onto_aiokafka(protocol: str, mechanism: str, pki: Pki) -> None:
    cafile = pki.ca if protocol == "SASL_SSL" else None
    cfg = WorkerConfig(
        bootstrap_servers="kafka-1:9093,kafka-2:9093",
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username="erc",
        sasl_password=PASSWORD,
        ssl_cafile=cafile,
        client_id="erc-test",
    )
    kw = cfg.kafka_kwargs()
    ctx = kw.pop("ssl_context", None)
    assert kw == {
        "bootstrap_servers": "kafka-1:9093,kafka-2:9093",
        "security_protocol": protocol,
        "client_id": "erc-test",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "erc",
        "sasl_plain_password": PASSWORD,
    }
    if protocol == "SASL_SSL":
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "erc-test-ca"),),)]
    else:
        assert ctx is None
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)


def test_tls_without_cafile_uses_the_system_trust_store() -> None:
    kw = WorkerConfig(security_protocol="SSL").kafka_kwargs()
    assert kw["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert "sasl_plain_password" not in kw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}, "SASL needs sasl_username and a password"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
            "SASL needs sasl_username and a password",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "u",
                "sasl_password": PASSWORD,
            },
            "sasl_mechanism has an invalid value: 'GSSAPI'",
        ),
        ({"security_protocol": "TLS"}, "security_protocol has an invalid value: 'TLS'"),
        (
            {"security_protocol": "SSL", "ssl_cafile": Path("/nonexistent/ca.pem")},
            "ssl_cafile: file '/nonexistent/ca.pem' does not exist",
        ),
    ],
)
def test_bad_security_settings_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        WorkerConfig(**changes)
    assert PASSWORD not in str(info.value)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["env", "file"])
def test_refused_sasl_handshake_exits_nonzero_quickly_without_leaking(
    broker, store: Path, tmp_path: Path, source: str
) -> None:
    """The local broker supports no SASL mechanism: the worker must stop at startup, say so
    and exit 1, with the password nowhere in its output."""
    topics = Topics("sasl.turns", "sasl.emotions", "sasl.dlq", 1)
    secret: dict[str, object] = {"sasl_password": PASSWORD}
    if source == "file":
        (tmp_path / "password").write_text(PASSWORD + "\n")
        secret = {"sasl_password_file": tmp_path / "password"}

    async def scenario() -> tuple[int, float, str]:
        w = WorkerProcess(
            broker.bootstrap,
            topics,
            store,
            "sasl-refused",
            tmp_path / "worker.log",
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="erc-worker",
            log_level="DEBUG",
            **secret,
        )
        t0 = time.monotonic()
        try:
            code = await w.wait_exit(STARTUP_FAILURE_LIMIT_S)
            return code, time.monotonic() - t0, w.log_path.read_text(errors="replace")
        finally:
            w.close()

    code, seconds, log = asyncio.run(scenario())
    assert code == 1, log[-2000:]
    assert seconds < STARTUP_FAILURE_LIMIT_S
    assert f"cannot connect to Kafka at {broker.bootstrap} (SASL_PLAINTEXT)" in log
    assert "UnsupportedSaslMechanism" in log
    assert PASSWORD not in log


# ---------------------------------------------------------------------- HTTP surface


async def _status(session: aiohttp.ClientSession, method: str, url: str) -> int:
    async with session.request(method, url) as resp:
        return resp.status


def test_http_serves_only_metrics_healthz_readyz() -> None:
    async def scenario() -> dict[tuple[str, str], int]:
        metrics = WorkerMetrics(CollectorRegistry())
        server = HealthServer("127.0.0.1", 0, metrics.registry, ready=lambda: False)
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        probes = [
            ("GET", "/metrics"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("HEAD", "/metrics"),
            ("GET", "/"),
            ("GET", "/admin"),
            ("GET", "/metrics/x"),
            ("GET", "/debug/pprof"),
            ("GET", "/../etc/passwd"),
            ("GET", "/static/"),
            ("POST", "/metrics"),
            ("PUT", "/healthz"),
            ("DELETE", "/readyz"),
            ("PATCH", "/metrics"),
            ("OPTIONS", "/metrics"),
            ("POST", "/"),
        ]
        try:
            async with aiohttp.ClientSession() as session:
                return {(m, p): await _status(session, m, base + p) for m, p in probes}
        finally:
            await server.stop()

    got = asyncio.run(scenario())
    assert got == {
        ("GET", "/metrics"): 200,
        ("GET", "/healthz"): 200,
        ("GET", "/readyz"): 503,
        ("HEAD", "/metrics"): 200,
        ("GET", "/"): 404,
        ("GET", "/admin"): 404,
        ("GET", "/metrics/x"): 404,
        ("GET", "/debug/pprof"): 404,
        ("GET", "/../etc/passwd"): 404,
        ("GET", "/static/"): 404,
        ("POST", "/metrics"): 405,
        ("PUT", "/healthz"): 405,
        ("DELETE", "/readyz"): 405,
        ("PATCH", "/metrics"): 405,
        ("OPTIONS", "/metrics"): 405,
        ("POST", "/"): 404,
    }


def _other_local_addresses() -> list[str]:
    """127.0.0.2 (loopback, but not 127.0.0.1) and this host's non-loopback IPv4 addresses."""
    found = ["127.0.0.2"]
    for addrs in psutil.net_if_addrs().values():
        found += [a.address for a in addrs if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return found


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def test_http_binds_only_the_configured_address() -> None:
    async def scenario() -> tuple[int, str, dict[str, bool]]:
        server = HealthServer("127.0.0.1", 0, CollectorRegistry(), ready=lambda: True)
        await server.start()
        try:
            status, _ = await http_get(f"http://127.0.0.1:{server.port}/healthz")
            reach = {host: await asyncio.to_thread(_connects, host, server.port) for host in _other_local_addresses()}
            sockets = [
                c.laddr
                for c in psutil.Process().net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
            ]
            return status, repr(sockets), reach
        finally:
            await server.stop()

    status, sockets, reach = asyncio.run(scenario())
    assert status == 200
    assert "127.0.0.1" in sockets and "0.0.0.0" not in sockets and "'::'" not in sockets
    assert reach and not any(reach.values()), reach
