"""TrainConfig is the one source of training settings: the CLI mirrors it field for field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer

from erc_stream.errors import ConfigError
from trainer.cli import app
from trainer.config import QUICK_OVERRIDES, TrainConfig

CLI_ONLY = {"quick", "resume", "nproc_per_node"}  # nproc_per_node launches torchrun


def fit_options() -> dict[str, object]:
    group = typer.main.get_command(app)
    fit = group.commands["fit"]  # type: ignore[attr-defined]
    return {p.name: p.default for p in fit.params}


def test_every_setting_has_a_flag_with_the_same_default():
    options = fit_options()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(options) - CLI_ONLY == set(fields), "flags and TrainConfig fields differ"
    for name, f in fields.items():
        default = options[name]
        expected = f.default
        if isinstance(expected, Path):
            default = Path(default)  # click keeps path defaults as given
        if isinstance(expected, tuple):
            default = tuple(default)  # a repeatable flag's default is a list
        assert default == expected, f"--{name.replace('_', '-')} defaults to {default!r}, TrainConfig to {expected!r}"


def test_quick_is_applied_in_one_place_and_keeps_the_users_limits():
    q = TrainConfig().quick()
    assert {k: getattr(q, k) for k in QUICK_OVERRIDES} == QUICK_OVERRIDES
    mine = TrainConfig(max_train_conversations=5).quick()
    assert mine.max_train_conversations == 5 and mine.max_dev_conversations == QUICK_OVERRIDES["max_dev_conversations"]


def test_json_round_trip_restores_paths_and_refuses_unknown_settings(tmp_path):
    cfg = TrainConfig(store=tmp_path / "s", run_dir=tmp_path / "r", epochs=7, class_weighting="sqrt_inverse")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="does not know: colour"):
        TrainConfig.from_json({**cfg.to_json(), "colour": "blue"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("class_weighting", "square"), ("checkpoint_every_steps", -1), ("epochs", -1), ("lambda1", 1.5)],
)
def test_a_bad_value_names_the_field_and_the_value(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field} has an invalid value: {value!r}"):
        TrainConfig(**{field: value})


def test_distill_from_must_be_a_version_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a model version folder .*e.g. models/<the version models/CURRENT"):
        TrainConfig(distill_from=tmp_path)
    (tmp_path / "manifest.json").write_text("{}", encoding="utf-8")
    cfg = TrainConfig(distill_from=tmp_path, distill_weight=0.5)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="TrainConfig.distill_weight has an invalid value: -1.0"):
        TrainConfig(distill_from=tmp_path, distill_weight=-1.0)


def test_init_from_takes_version_folders_and_survives_the_run_config(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"init_from='{b}' is not a model version folder"):
        TrainConfig(init_from=(a, b))
    (b / "manifest.json").write_text("{}", encoding="utf-8")
    cfg = TrainConfig(init_from=(a, b), epochs=0)
    data = json.loads(json.dumps(cfg.to_json()))  # as the run folder keeps it
    assert data["init_from"] == [str(a), str(b)]
    assert TrainConfig.from_json(data) == cfg
    with pytest.raises(ConfigError, match="init_from starts a window model"):
        TrainConfig(init_from=(a,), architecture="turn")
