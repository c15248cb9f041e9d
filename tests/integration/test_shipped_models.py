"""The shipped model store (``models/``), as a newcomer gets it from a clean checkout.

Every version verifies against its checksums; each pointer (``CURRENT``, ``CURRENT.<channel>``)
names a version of the dataset it serves; and ``erc-train evaluate --store models --version V
--split dev``, the command docs/results.md gives, reproduces the dev figures the manifest
reports, which are the ones docs/results.md quotes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from erc_stream.artifact import CURRENT_FILE, list_versions, read_current, verify_version
from tests.train_cli import DATA_DIR, cli_env
from trainer.datasets import DATASETS

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "models"
RESULTS = ROOT / "docs" / "results.md"


def _pointers() -> list[tuple[str, str]]:
    """(channel, version) of every pointer file in the shipped store; "" is CURRENT."""
    out = []
    for p in sorted(STORE.glob(f"{CURRENT_FILE}*")):
        channel = p.name[len(CURRENT_FILE) + 1 :]
        version = read_current(STORE, channel)
        if version is not None:
            out.append((channel, version))
    return out


POINTERS = _pointers()


def _retiring() -> list[str]:
    """Versions listed in models/RETIRING: replaced under another name, to be removed by a later stop."""
    path = STORE / "RETIRING"
    if not path.is_file():
        return []
    names = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [n for n in names if n]


def _manifest(version: str) -> dict:
    return json.loads((STORE / version / "manifest.json").read_text(encoding="utf-8"))


def test_the_store_serves_meld_by_default_and_every_pointer_names_a_shipped_version() -> None:
    assert POINTERS and POINTERS[0][0] == "", "models/ has no CURRENT"
    versions = list_versions(STORE)
    for channel, version in POINTERS:
        assert version in versions, f"{CURRENT_FILE}.{channel} names {version}, which is not in models/"
        dataset = _manifest(version)["dataset"]
        assert dataset == (channel or "meld"), f"{version} ({channel or 'CURRENT'}) was trained on {dataset}"
    # Every shipped version is served by some pointer, or is listed in models/RETIRING (a version
    # replaced under a new name, which a later stop removes): nothing else dead weighs on the history.
    retiring = set(_retiring())
    served = {v for _, v in POINTERS}
    assert not served & retiring, f"a pointer names a version listed in models/RETIRING: {served & retiring}"
    missing = retiring - set(versions)
    assert not missing, f"models/RETIRING names versions not in models/: {missing}"
    assert sorted(served | retiring) == versions, f"versions no pointer names: {set(versions) - served}"


@pytest.mark.parametrize("version", list_versions(STORE))
def test_every_shipped_version_verifies(version: str) -> None:
    manifest = verify_version(STORE / version)
    assert list(manifest["labels"]) == list(DATASETS[manifest["dataset"]].labels)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # fp32 on a 2-core CPU: about 1 minute for MiniLM, several for a 110M encoder
@pytest.mark.parametrize("channel,version", POINTERS, ids=[c or "CURRENT" for c, _ in POINTERS])
def test_evaluate_reproduces_the_dev_figures_of_the_docs(channel: str, version: str, tmp_path: Path) -> None:
    manifest = _manifest(version)
    dataset = manifest["dataset"]
    if not (DATA_DIR / dataset).is_dir():
        pytest.skip(f"{dataset} is not under {DATA_DIR}; set ERC_DATA_DIR")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "evaluate", "--store", str(STORE), "--version", version, "--split", "dev",
         "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1100, env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "metrics.json").read_text())["splits"]["dev"]
    want = manifest["metrics"]["dev"]
    for key in ("weighted_f1", "macro_f1", "accuracy"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["per_class_f1"] == pytest.approx(want["per_class_f1"], abs=1e-6)
    # The docs quote these figures (4 decimals) for the shipped version.
    docs = RESULTS.read_text(encoding="utf-8")
    assert f"{want['weighted_f1']:.4f}" in docs, f"docs/results.md does not quote {version}'s dev weighted F1"
