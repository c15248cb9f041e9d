"""`erc-stream worker` options are WorkerConfig's fields: same names, defaults, help and ``ERC_*``
environment names, parsed by the real click command into the config the worker gets."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import typer.main

from erc_stream.cli import app
from erc_stream.config import WorkerConfig, env_name

NOT_OPTIONS = {"sasl_password"}  # a secret: ERC_SASL_PASSWORD or --sasl-password-file, never a flag


def _worker_command():
    return typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]


def _options() -> dict:
    return {p.name: p for p in _worker_command().params if p.param_type_name == "option"}


def _parse(args: list[str], env: dict[str, str] | None = None) -> WorkerConfig:
    """What the command would build: parse like the CLI does, then make the config."""
    ctx = _worker_command().make_context("worker", args, auto_envvar_prefix=None, default_map=None)
    params = dict(ctx.params)
    assert params.pop("sasl_password_file") is None
    return WorkerConfig(**params)


def test_one_option_per_config_field_with_its_default_and_environment_name() -> None:
    options = _options()
    fields = {f.name: f for f in dataclasses.fields(WorkerConfig)}
    assert set(options) == (set(fields) - NOT_OPTIONS) | {"sasl_password_file"}
    for name, f in fields.items():
        if name in NOT_OPTIONS:
            continue
        opt = options[name]
        assert opt.envvar == env_name(name) == "ERC_" + name.upper(), name
        assert opt.opts[0] == "--" + name.replace("_", "-"), name
        default = opt.default
        if isinstance(f.default, Path):
            default = Path(default)
        assert default == f.default, name
        if f.metadata.get("help"):
            assert opt.help == f.metadata["help"], name
    assert options["sasl_password_file"].envvar == "ERC_SASL_PASSWORD_FILE"


def test_no_arguments_give_the_default_config() -> None:
    assert _parse([]) == WorkerConfig()


def test_environment_and_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("ERC_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ERC_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ERC_INPUT_TOPIC", "in.t")
    monkeypatch.setenv("ERC_CONTEXT_TURNS", "2")
    monkeypatch.setenv("ERC_WINDOW_TTL_S", "12.5")
    monkeypatch.setenv("ERC_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("ERC_ENABLE_IDEMPOTENCE", "true")
    monkeypatch.setenv("ERC_CLIENT_ID", "w-7")
    cfg = _parse(["--max-batch-size", "9", "--dlq-topic", "dead.t", "--log-level", "DEBUG"])
    assert cfg == WorkerConfig(
        max_batch_size=9,  # a flag wins over the environment
        input_topic="in.t",
        dlq_topic="dead.t",
        context_turns=2,
        window_ttl_s=12.5,
        model_store=Path("/srv/models"),
        enable_idempotence=True,
        client_id="w-7",
        log_level="DEBUG",
    )
    assert cfg.topics.all() == ("in.t", "chat.emotions", "dead.t")
