"""Model store faults while a worker serves: bad new versions, a full disk, a read-only store.

In every case the worker keeps serving the version it has, loses no turn, and takes the
next good version when one is published.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from erc_stream.artifact import CURRENT_FILE, list_versions, read_current, set_current, sha256_file
from erc_stream.errors import ArtifactError
from tests.faults.helpers import FAULT_MODEL_VERSION, FAULT_SETTINGS, group_id, publish_fault_model, report, tally
from tests.integration.worker_harness import (
    OutputReader,
    TurnRecord,
    WorkerProcess,
    make_topics,
    meld_dev,
    metric_value,
    produce,
    turn_records,
)

OTHER_LABELS = ("neutral", "joy", "sadness", "anger")


def _clone(store: Path, src: str, dst: str) -> Path:
    """A copy of version ``src`` as ``dst`` (hard links: no space used until a file is replaced)."""
    target = store / dst
    shutil.copytree(store / src, target, copy_function=os.link)
    return target


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file (never through a hard link shared with the good version)."""
    path.unlink()
    path.write_bytes(data)


def _resign(version_dir: Path, rel: str) -> None:
    """Update the manifest's checksum of ``rel``, as a buggy publisher would."""
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    digest = sha256_file(version_dir / rel)
    manifest["files"][rel] = digest
    if rel in manifest["encoder"].get("weights_sha256", {}):
        manifest["encoder"]["weights_sha256"][rel] = digest
    _replace(manifest_path, json.dumps(manifest).encode())


def _flip_byte(version_dir: Path) -> None:
    path = version_dir / "head.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    _replace(path, bytes(data))


def _truncate_encoder(version_dir: Path) -> None:
    path = version_dir / "encoder" / "model.safetensors"
    _replace(path, path.read_bytes()[: path.stat().st_size // 2])


def _truncate_encoder_resigned(version_dir: Path) -> None:
    _truncate_encoder(version_dir)
    _resign(version_dir, "encoder/model.safetensors")


def _pickle_file(version_dir: Path) -> None:
    (version_dir / "encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    _resign(version_dir, "encoder/pytorch_model.bin")


def _symlink_outside(version_dir: Path) -> None:
    head = version_dir / "head.safetensors"
    outside = version_dir.parent.parent / f"outside-{version_dir.name}.safetensors"
    shutil.copyfile(head, outside)
    head.unlink()
    head.symlink_to(outside)


# name -> how the version differs from the good one; the reload result it must get.
BAD_VERSIONS: list[tuple[str, Callable[[Path], None], str]] = [
    ("v2-corrupt", _flip_byte, "failed"),
    ("v3-truncated", _truncate_encoder, "failed"),
    ("v4-truncated-resigned", _truncate_encoder_resigned, "failed"),
    ("v5-pickle", _pickle_file, "failed"),
    ("v6-symlink-outside", _symlink_outside, "failed"),
]


async def _wait_metric(w: WorkerProcess, sample: str, at_least: float, timeout_s: float = 60, **labels: str) -> float:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = metric_value(await w.metrics(), sample, **labels)
        if value >= at_least:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{sample}{labels} stayed at {value} < {at_least}:\n{w.log_tail()}")
        await asyncio.sleep(0.2)


async def _serve_chunk(reader: OutputReader, bootstrap: str, topic: str, chunk: list[TurnRecord]) -> set[str]:
    """Produce ``chunk``, wait for its events; returns the model versions they name."""
    await produce(bootstrap, topic, chunk)
    await reader.wait_for_ids([r.event_id for r in chunk], timeout_s=120)
    ids = {r.event_id for r in chunk}
    return {e.value["model_version"] for e in reader.events if e.value["event_id"] in ids}


def _chunks(records: list[TurnRecord], n: int) -> list[list[TurnRecord]]:
    size = -(-len(records) // n)
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.mark.timeout(400)
def test_bad_new_versions_keep_the_old_one_serving(broker, topic_factory, fault_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(fault_store, store, copy_function=os.link)
    topics = make_topics(topic_factory, partitions=2)
    records = turn_records(meld_dev(12, start=80))
    # One chunk at the start, one after each bad version, the other labels and the bad
    # CURRENTs, the rest (at least one) under the good version.
    chunks = _chunks(records, len(BAD_VERSIONS) + 4)
    served: list[tuple[str, set[str]]] = []

    async def scenario() -> OutputReader:
        w = WorkerProcess(broker.bootstrap, topics, store, group_id(), tmp_path / "worker.log", **FAULT_SETTINGS)
        try:
            await w.wait_ready(timeout_s=120)
            async with OutputReader(broker.bootstrap, topics) as reader:
                it = iter(chunks)
                served.append(("start", await _serve_chunk(reader, broker.bootstrap, topics.input, next(it))))
                failed = 0.0
                for name, spoil, _ in BAD_VERSIONS:
                    spoil(_clone(store, FAULT_MODEL_VERSION, name))
                    set_current(store, name)
                    failed = await _wait_metric(w, "erc_model_reloads_total", failed + 1, result="failed")
                    served.append((name, await _serve_chunk(reader, broker.bootstrap, topics.input, next(it))))
                publish_fault_model(store, "v7-other-labels", labels=OTHER_LABELS, seed=7)
                await _wait_metric(w, "erc_model_reloads_total", 1, result="incompatible")
                served.append(("v7-other-labels", await _serve_chunk(reader, broker.bootstrap, topics.input, next(it))))
                # CURRENT naming something outside the store, or a version that is not there.
                warnings = w.log_tail(10**9).count("cannot read the model store's CURRENT")
                for bad in ("../x", str(store / FAULT_MODEL_VERSION)):
                    (store / CURRENT_FILE).write_text(bad + "\n")
                    warnings += 1
                    for _ in range(100):
                        if w.log_tail(10**9).count("cannot read the model store's CURRENT") >= warnings:
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError(f"no warning for CURRENT={bad!r}:\n{w.log_tail()}")
                (store / CURRENT_FILE).write_text("v8-missing\n")
                failed = await _wait_metric(w, "erc_model_reloads_total", failed + 1, result="failed")
                served.append(("bad CURRENT", await _serve_chunk(reader, broker.bootstrap, topics.input, next(it))))
                # A good version with the same labels is taken.
                publish_fault_model(store, "v9-good", seed=9)
                await _wait_metric(w, "erc_model_info", 1, version="v9-good")
                for chunk in it:
                    served.append(("v9-good", await _serve_chunk(reader, broker.bootstrap, topics.input, chunk)))
                await reader.settle(1.0)
                assert w.proc.poll() is None, w.log_tail()
                w.signal(signal.SIGTERM)
                assert await w.wait_exit(60) == 0
                return reader
        finally:
            w.close()

    reader = asyncio.run(scenario())
    t = tally(
        "bad_model_versions",
        records,
        reader,
        bad_versions=len(BAD_VERSIONS) + 2,
        bad_currents=2,
        served=";".join(f"{step}->{','.join(sorted(v))}" for step, v in served),
    )
    report(t)
    assert t.missing == 0 and reader.dead == [] and t.duplicates == 0
    for step, versions in served:
        assert versions == ({"v9-good"} if step == "v9-good" else {FAULT_MODEL_VERSION}), (step, versions)


# ------------------------------------------------------------------ full disk, read-only store


def _mount_tmpfs(path: Path, size_bytes: int) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )


def _remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True, text=True)


@pytest.fixture
def tiny_store(fault_store: Path, tmp_path: Path) -> Iterator[Path]:
    """The good version on a tmpfs with ~4 MiB to spare (root only; skips otherwise)."""
    mnt = tmp_path / "tmpfs-store"
    mnt.mkdir()
    used = sum(p.stat().st_size for p in (fault_store / FAULT_MODEL_VERSION).rglob("*") if p.is_file())
    try:
        _mount_tmpfs(mnt, used + 4 * 2**20)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {detail}")
    try:
        shutil.copytree(fault_store / FAULT_MODEL_VERSION, mnt / FAULT_MODEL_VERSION)
        set_current(mnt, FAULT_MODEL_VERSION)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.mark.timeout(300)
def test_full_disk_and_read_only_store_leave_current_and_serving_alone(
    broker, topic_factory, tiny_store: Path, tmp_path: Path
) -> None:
    store = tiny_store
    topics = make_topics(topic_factory, partitions=2)
    records = turn_records(meld_dev(8, start=100))
    chunks = _chunks(records, 4)
    outcome: dict[str, object] = {}

    def publish_must_fail(name: str, version: str, code: int) -> None:
        # The OS error surfaces as OSError, or wrapped by the library that was writing
        # (safetensors raises its own SafetensorError "... No space left on device (os error 28)").
        # publish_version wraps it in ArtifactError; the OS error is its cause.
        with pytest.raises(ArtifactError) as info:
            publish_fault_model(store, version, seed=2)
        exc = info.value.__cause__
        assert exc is not None, repr(info.value)
        assert getattr(exc, "errno", None) == code or f"(os error {code})" in str(exc), repr(exc)
        outcome[name] = f"{type(exc).__name__}:{errno.errorcode[code]}"
        assert read_current(store) == FAULT_MODEL_VERSION
        assert (store / CURRENT_FILE).read_text() == FAULT_MODEL_VERSION + "\n"
        assert list_versions(store) == [FAULT_MODEL_VERSION]
        assert sorted(p.name for p in store.iterdir()) == [CURRENT_FILE, FAULT_MODEL_VERSION]  # no temp dir left

    async def scenario() -> OutputReader:
        w = WorkerProcess(broker.bootstrap, topics, store, group_id(), tmp_path / "worker.log", **FAULT_SETTINGS)
        try:
            await w.wait_ready(timeout_s=120)
            async with OutputReader(broker.bootstrap, topics) as reader:
                assert await _serve_chunk(reader, broker.bootstrap, topics.input, chunks[0]) == {FAULT_MODEL_VERSION}
                free_before = shutil.disk_usage(store).free
                publish_must_fail("full_disk", "v2-too-big", errno.ENOSPC)
                assert shutil.disk_usage(store).free == free_before  # the partial version was removed
                assert await _serve_chunk(reader, broker.bootstrap, topics.input, chunks[1]) == {FAULT_MODEL_VERSION}
                _remount(store, "ro")
                try:
                    publish_must_fail("read_only", "v3-read-only", errno.EROFS)
                    assert await _serve_chunk(reader, broker.bootstrap, topics.input, chunks[2]) == {
                        FAULT_MODEL_VERSION
                    }
                finally:
                    _remount(store, f"rw,size={200 * 2**20}")
                publish_fault_model(store, "v4-good", seed=4)  # room again: the next version is taken
                await _wait_metric(w, "erc_model_info", 1, version="v4-good")
                assert await _serve_chunk(reader, broker.bootstrap, topics.input, chunks[3]) == {"v4-good"}
                failed = metric_value(await w.metrics(), "erc_model_reloads_total", result="failed")
                outcome["reload_failures"] = int(failed)
                await reader.settle(1.0)
                w.signal(signal.SIGTERM)
                assert await w.wait_exit(60) == 0
                return reader
        finally:
            w.close()

    reader = asyncio.run(scenario())
    t = tally("full_disk_read_only_store", records, reader, **outcome)
    report(t)
    assert t.missing == 0 and reader.dead == [] and t.duplicates == 0
    assert outcome["reload_failures"] == 0  # CURRENT never named a half-written version
