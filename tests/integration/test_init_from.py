"""`erc-train fit --init-from`: the real CLI on real MELD conversations starts from the mean of two
published versions of the default encoder; with `--epochs 0` only stage 2 runs, so the published
encoder and head are exactly that mean, the anchors are adapted to it and the manifest names where
the weights came from. A folder that is no version, or a version of another head width, stops the
run before anything is published."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from erc_stream.artifact import load_version_files
from tests.fixtures_model import TEST_PROJ_DIM, publish_test_model
from tests.train_cli import erc_train, skip_without_meld

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

skip_without_meld()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    store = tmp_path_factory.mktemp("sources")
    return [
        publish_test_model(store, "a", seed=1, encoder_shift=0.02, make_current=False),
        publish_test_model(store, "b", seed=2, encoder_shift=-0.04, make_current=False),
    ]


def fit_from(sources: list[Path], tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    init = [arg for path in sources for arg in ("--init-from", str(path))]
    return erc_train("fit", "--dataset", "meld", "--epochs", "0", "--stage2-epochs", "2", "--max-train-conversations",
                     "6", "--max-dev-conversations", "3", "--context-turns", "2", *init, "--store",
                     str(tmp_path / "store"), "--run-dir", str(tmp_path / "run"), "--version", "mean",
                     "--no-make-current", "--device", "cpu", "--dtype", "fp32", *extra)  # fmt: skip


def test_epochs_0_publishes_the_mean_of_the_versions_with_anchors_adapted_to_it(sources, tmp_path):
    proc = fit_from(sources, tmp_path, "--proj-dim", str(TEST_PROJ_DIM))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest, encoder, _, head = load_version_files(tmp_path / "store" / "mean")
    _, enc_a, _, head_a = load_version_files(sources[0])
    _, enc_b, _, head_b = load_version_files(sources[1])
    for (name, got), want_a, want_b in zip(
        encoder.state_dict().items(), enc_a.state_dict().values(), enc_b.state_dict().values(), strict=True
    ):
        if got.is_floating_point():
            torch.testing.assert_close(got, (want_a + want_b) / 2, rtol=0, atol=1e-6, msg=name)
    for name in ("head.dense.weight", "head.out.bias"):
        torch.testing.assert_close(head[name], (head_a[name] + head_b[name]) / 2, rtol=0, atol=1e-7)
    training = manifest["training"]
    assert training["best_epoch"] == 0 and training["history"] == []  # no stage-1 step ran
    assert training["stage2"]["enabled"] and training["stage2"]["epochs"] == 2
    assert [r["version"] for r in training["init_from"]] == ["a", "b"]
    assert training["config"]["init_from"] == [str(p) for p in sources]
    # the anchors are the mean model's own (text anchors through it, then adapted), not a source's
    assert not torch.allclose(head["anchors"], head_a["anchors"]) and not torch.allclose(
        head["anchors"], head_b["anchors"]
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["init_from"] == [
        str(p) for p in sources
    ]


def test_a_version_of_another_head_width_stops_the_run_with_the_flag_to_change(sources, tmp_path):
    proc = fit_from(sources, tmp_path, "--proj-dim", str(TEST_PROJ_DIM * 2))
    assert proc.returncode != 0
    assert "pass the --proj-dim it was trained with" in proc.stdout + proc.stderr
    assert not (tmp_path / "store" / "mean").exists()


def test_a_folder_without_a_manifest_is_refused_before_any_work(sources, tmp_path):
    proc = fit_from([sources[0], tmp_path], tmp_path, "--proj-dim", str(TEST_PROJ_DIM))
    assert proc.returncode != 0
    assert "is not a model version folder" in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()
