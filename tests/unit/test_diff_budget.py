"""docs/runs/diff_budget.py, which adds up a stop's diffs before the stop: a binary file counts when
it is added and again when it is removed, uncommitted changes count with --worktree, and passing a
limit exits 1."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "runs" / "diff_budget.py"
_spec = importlib.util.spec_from_file_location("diff_budget", SCRIPT)
assert _spec is not None and _spec.loader is not None
diff_budget = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diff_budget)

BLOB = 200_000  # random bytes: deflate cannot shrink them, base85 makes them 5/4 as long


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "README").write_text("base\n")
    _git(tmp_path, "add", "README")
    _git(tmp_path, "commit", "-q", "-m", "base")
    _git(tmp_path, "tag", "base")
    (tmp_path / "model.bin").write_bytes(os.urandom(BLOB))
    _git(tmp_path, "add", "model.bin")
    _git(tmp_path, "commit", "-q", "-m", "add a model")
    _git(tmp_path, "rm", "-q", "model.bin")
    _git(tmp_path, "commit", "-q", "-m", "remove it again")
    return tmp_path


def test_a_binary_file_counts_when_added_and_again_when_removed(repo: Path) -> None:
    rows = diff_budget.commit_diffs(repo, "base")
    assert [subject for _, subject, _ in rows] == ["add a model", "remove it again"]
    for _, _, size in rows:
        assert BLOB * 1.2 < size < BLOB * 1.35, size  # base85 of incompressible bytes, one direction each


def test_the_worktree_counts_staged_and_unstaged_changes(repo: Path) -> None:
    assert diff_budget.worktree_diff(repo) == 0
    (repo / "new.bin").write_bytes(os.urandom(50_000))
    _git(repo, "add", "new.bin")  # staged
    (repo / "README").write_bytes(os.urandom(30_000))  # changed, not staged
    size = diff_budget.worktree_diff(repo)
    assert 80_000 * 1.2 < size < 80_000 * 1.35 + 1_000  # either part left out falls below the bound


def test_passing_a_limit_exits_1_and_says_over(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert diff_budget.main(["base", "--repo", str(repo), "--diff-limit-mib", "1"]) == 0
    out = capsys.readouterr().out
    assert "diffs: 0.4" in out and "OVER" not in out and "pack: " in out
    assert diff_budget.main(["base", "--repo", str(repo), "--diff-limit-mib", "0.4", "--no-pack"]) == 1
    out = capsys.readouterr().out
    assert "OVER" in out and "pack: " not in out


def test_an_unknown_base_stops_with_git_s_message(repo: Path) -> None:
    with pytest.raises(SystemExit, match="rev-parse"):
        diff_budget.main(["no-such-commit", "--repo", str(repo)])
