"""Which model `erc-stream demo` serves: the store's CURRENT.<dataset>, else CURRENT, checked against
the dataset's labels (real stores with real, untrained artifacts; nothing is trained here)."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from erc_stream.artifact import set_current
from erc_stream.config import WorkerConfig
from erc_stream.devtools.demo import DemoConfig, ensure_model
from erc_stream.errors import ArtifactError
from erc_stream.metrics import WorkerMetrics
from erc_stream.reload import ModelReloader
from tests.fixtures_model import MELD_LABELS, publish_test_model
from trainer.datasets import DATASETS

EMORY_LABELS = DATASETS["emorynlp"].labels


@pytest.fixture(scope="module")
def two_line_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CURRENT -> a MELD model, CURRENT.emorynlp -> an EmoryNLP model, as the shipped store is laid out."""
    store = tmp_path_factory.mktemp("store")
    publish_test_model(store, version="meld-v1", labels=MELD_LABELS)
    publish_test_model(
        store, version="emory-v1", labels=EMORY_LABELS, dataset="emorynlp", make_current=True, channel="emorynlp"
    )
    return store


def _choose(store: Path, dataset: str) -> tuple[tuple[str, str], str]:
    buf = io.StringIO()
    chosen = ensure_model(DemoConfig(store=store, dataset=dataset), Console(file=buf, width=200))
    return chosen, buf.getvalue()


def test_meld_is_served_from_current(two_line_store: Path) -> None:
    (version, channel), out = _choose(two_line_store, "meld")
    assert (version, channel) == ("meld-v1", "")
    assert "serving meld-v1 (CURRENT)" in out


def test_emorynlp_is_served_from_its_channel(two_line_store: Path) -> None:
    (version, channel), out = _choose(two_line_store, "emorynlp")
    assert (version, channel) == ("emory-v1", "emorynlp")
    assert "serving emory-v1 (CURRENT.emorynlp)" in out


def test_a_dataset_without_a_matching_model_is_refused_with_the_fix(two_line_store: Path) -> None:
    # CURRENT serves MELD labels; DailyDialog's (happiness, ...) are not among them, and there is no channel.
    with pytest.raises(ArtifactError) as exc:
        _choose(two_line_store, "dailydialog")
    msg = str(exc.value)
    assert "meld-v1 (CURRENT in" in msg and "happiness" in msg
    assert "erc-train fit --dataset dailydialog" in msg and "--channel dailydialog" in msg


def test_a_channel_pointing_at_a_model_of_other_labels_is_refused(tmp_path: Path) -> None:
    publish_test_model(tmp_path, version="meld-v1", labels=MELD_LABELS, make_current=False)
    set_current(tmp_path, "meld-v1", "emorynlp")
    with pytest.raises(ArtifactError, match=r"meld-v1 \(CURRENT.emorynlp in .*joyful"):
        _choose(tmp_path, "emorynlp")


def test_a_store_with_versions_but_no_pointer_is_refused(tmp_path: Path) -> None:
    publish_test_model(tmp_path, version="meld-v1", labels=MELD_LABELS, make_current=False)
    with pytest.raises(ArtifactError, match="neither CURRENT.meld nor CURRENT"):
        _choose(tmp_path, "meld")


def test_a_worker_follows_its_channel_and_not_current(two_line_store: Path, tmp_path: Path) -> None:
    """The worker's reloader loads CURRENT.<channel>, hot-reloads when that pointer moves, and
    ignores CURRENT (a real store copied, real loads)."""
    store = tmp_path / "store"
    shutil.copytree(two_line_store, store)
    publish_test_model(store, version="emory-v2", labels=EMORY_LABELS, dataset="emorynlp", seed=4, make_current=False)
    cfg = WorkerConfig(model_store=store, model_channel="emorynlp", reload_poll_s=0.05, device="cpu")

    async def scenario() -> list[str]:
        loaded = asyncio.Event()
        reloader = ModelReloader(cfg, WorkerMetrics(), loaded.set)
        seen = [(await reloader.start()).version]
        watch = asyncio.create_task(reloader.watch())
        try:
            set_current(store, "meld-v1")  # the default channel moves: not this worker's business
            await asyncio.sleep(0.5)
            assert not loaded.is_set()
            set_current(store, "emory-v2", "emorynlp")
            await asyncio.wait_for(loaded.wait(), 60)
            served = reloader.swap()
            assert served is not None
            seen.append(served.version)
        finally:
            watch.cancel()
        return seen

    assert asyncio.run(scenario()) == ["emory-v1", "emory-v2"]


def test_a_worker_on_an_unset_channel_says_how_to_publish_one(tmp_path: Path) -> None:
    publish_test_model(tmp_path, version="meld-v1", labels=MELD_LABELS)
    cfg = WorkerConfig(model_store=tmp_path, model_channel="emorynlp")
    reloader = ModelReloader(cfg, WorkerMetrics(), lambda: None)
    with pytest.raises(ArtifactError, match=r"no CURRENT.emorynlp version; .*--channel emorynlp"):
        asyncio.run(reloader.start())
