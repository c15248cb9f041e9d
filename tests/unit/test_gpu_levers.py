"""docs/runs/gpu_levers.py: which runs the sweep makes, and when it resumes or skips one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "runs" / "gpu_levers.py"
_spec = importlib.util.spec_from_file_location("gpu_levers", SCRIPT)
assert _spec is not None and _spec.loader is not None
gpu_levers = importlib.util.module_from_spec(_spec)
sys.modules["gpu_levers"] = gpu_levers  # dataclasses look their module up there
_spec.loader.exec_module(gpu_levers)


def test_plan_is_seed_major_and_refuses_unknown_levers():
    jobs = gpu_levers.plan(["full", "anon"], [42, 43])
    assert [j.version for j in jobs] == ["lev-full-s42", "lev-anon-s42", "lev-full-s43", "lev-anon-s43"]
    with pytest.raises(SystemExit, match="unknown lever"):
        gpu_levers.plan(["full", "nope"], [42])


def test_a_new_run_gets_the_base_then_its_lever_flags_and_a_started_one_resumes(tmp_path):
    job = gpu_levers.Job("eacl-schedule", 43)
    cmd = gpu_levers.command(job, tmp_path, "erc-train", "cuda", ["--max-train-conversations", "2"])
    assert cmd[:2] == ["erc-train", "fit"]
    # typer keeps an option's last value: the lever's --epochs 10 overrides the base's 3
    epochs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--epochs"]
    assert epochs == ["3", "10"]
    assert cmd[cmd.index("--seed") + 1] == "43" and cmd[cmd.index("--version") + 1] == "lev-eacl-schedule-s43"
    assert cmd[-2:] == ["--max-train-conversations", "2"]
    (tmp_path / job.version).mkdir()
    (tmp_path / job.version / "config.json").write_text("{}")
    assert gpu_levers.command(job, tmp_path, "erc-train", "cuda", []) == [
        "erc-train", "fit", "--resume", str(tmp_path / job.version)
    ]  # fmt: skip
    assert not gpu_levers.published(job, tmp_path)
    (tmp_path / "store" / job.version).mkdir(parents=True)
    (tmp_path / "store" / job.version / "manifest.json").write_text(json.dumps({}))
    assert gpu_levers.published(job, tmp_path)
