"""The model artifact and store: what a published version holds, that loading verifies it,
that tampering is caught, that names cannot escape the store, and that publishing is atomic.

One version is published per module (real encoder, ~90 MB); tests that change files work on
a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from safetensors.torch import load_file

from erc_stream.artifact import (
    CURRENT_FILE,
    FORMAT_VERSION,
    list_versions,
    load_version_files,
    publish_version,
    read_current,
    set_current,
    verify_version,
    version_path,
)
from erc_stream.errors import ArtifactError
from erc_stream.model import Predictor, default_encoder_path
from tests.fixtures_model import MELD_LABELS, load_default_encoder, publish_test_model, random_head

VERSION = "test-v1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    publish_test_model(store, version=VERSION)
    return store


@pytest.fixture()
def version_copy(store, tmp_path) -> Path:
    """A private copy of the published version, free to tamper with."""
    dst = tmp_path / VERSION
    shutil.copytree(store / VERSION, dst)
    return dst


@pytest.fixture()
def store_copy(store, tmp_path) -> Path:
    """A private copy of the whole store (CURRENT included)."""
    dst = tmp_path / "store"
    shutil.copytree(store, dst)
    return dst


def edit_manifest(version_dir: Path, change) -> None:
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# ---------------------------------------------------------------------------- contents


def test_current_points_at_the_published_version(store):
    assert (store / CURRENT_FILE).read_text() == f"{VERSION}\n"
    assert read_current(store) == VERSION
    assert list_versions(store) == [VERSION]
    assert sorted(p.name for p in store.iterdir()) == [CURRENT_FILE, VERSION]  # no temporary folders left


def test_manifest_is_complete(store):
    vdir = store / VERSION
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 1
    assert manifest["version"] == VERSION
    assert datetime.fromisoformat(manifest["created_at"]).utcoffset() is not None  # timezone-aware
    assert manifest["dataset"] == "meld"
    assert manifest["labels"] == list(MELD_LABELS)
    assert manifest["prompt"]["template"] == "For utterance {utterance}, {speaker} feels {mask}"
    assert manifest["prompt"]["context_turns"] == 2
    assert manifest["prompt"]["max_length"] == 128
    assert manifest["temperature"] == 0.1
    assert manifest["encoder"]["source"] == str(default_encoder_path())
    assert manifest["encoder"]["weights_sha256"] == {
        "encoder/model.safetensors": sha256(vdir / "encoder/model.safetensors")
    }
    assert manifest["anchors"]["mode"] == "random" and manifest["anchors"]["seed"] == 0
    assert set(manifest["anchors"]["descriptions"]) == set(MELD_LABELS)


def test_manifest_lists_every_file_with_its_sha256(store):
    vdir = store / VERSION
    files = json.loads((vdir / "manifest.json").read_text())["files"]
    assert set(files) == files_under(vdir) - {"manifest.json"}
    assert {"head.safetensors", "encoder/model.safetensors", "encoder/config.json"} <= set(files)
    for rel, digest in files.items():
        assert digest == sha256(vdir / rel), rel
    assert not any(rel.endswith((".bin", ".pt", ".pkl")) for rel in files)


def test_head_file_holds_head_and_anchors(store):
    tensors = load_file(str(store / VERSION / "head.safetensors"))
    _, encoder = load_default_encoder()
    head_state, anchors = random_head(encoder.config.hidden_size, len(MELD_LABELS), seed=0)
    assert set(tensors) == {"anchors"} | {f"head.{k}" for k in head_state}
    assert tensors["anchors"].shape == (7, 64)
    assert tensors["anchors"].equal(anchors)
    for k, v in head_state.items():
        assert tensors[f"head.{k}"].equal(v), k


def test_loading_verifies_and_returns_the_parts(store):
    manifest, encoder, tokenizer, head = load_version_files(store / VERSION)
    assert manifest["version"] == VERSION
    assert encoder.config.hidden_size == 384
    assert tokenizer.mask_token == "[MASK]"
    assert head["anchors"].shape == (7, 64)
    assert verify_version(store / VERSION) == manifest


# ---------------------------------------------------------------------------- tampering


def test_flipped_byte_in_head_is_caught(version_copy):
    path = version_copy / "head.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"modified after publishing: checksum mismatch on head\.safetensors"):
        verify_version(version_copy)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        Predictor.load(version_copy, device="cpu", dtype="fp32")


def test_deleted_file_is_caught(version_copy):
    (version_copy / "encoder" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"incomplete: encoder/tokenizer\.json is missing"):
        verify_version(version_copy)


def test_extra_file_is_caught(version_copy):
    (version_copy / "notes.txt").write_text("hello")
    with pytest.raises(ArtifactError, match=r"holds files its manifest does not list: notes\.txt"):
        verify_version(version_copy)


def test_extra_bin_file_is_caught(version_copy):
    (version_copy / "encoder" / "pytorch_model.bin").write_bytes(b"\x80\x04 not a real pickle")
    with pytest.raises(ArtifactError, match=r"does not list: encoder/pytorch_model\.bin"):
        verify_version(version_copy)


def test_bin_file_is_refused_even_when_the_manifest_lists_it(version_copy):
    path = version_copy / "encoder" / "pytorch_model.bin"
    path.write_bytes(b"\x80\x04 not a real pickle")
    edit_manifest(version_copy, lambda m: m["files"].update({"encoder/pytorch_model.bin": sha256(path)}))
    with pytest.raises(ArtifactError, match=r"pickle-capable files \(encoder/pytorch_model\.bin\)"):
        verify_version(version_copy)


# The manifest itself carries no checksum; what matters is that an edited file list can
# never make missing, unlisted or outside files validate.


def test_manifest_dropping_a_file_entry_is_caught(version_copy):
    edit_manifest(version_copy, lambda m: m["files"].pop("head.safetensors"))
    with pytest.raises(ArtifactError, match=r"does not list: head\.safetensors"):
        verify_version(version_copy)


def test_manifest_listing_a_missing_file_is_caught(version_copy):
    edit_manifest(version_copy, lambda m: m["files"].update({"encoder/extra.safetensors": "0" * 64}))
    with pytest.raises(ArtifactError, match=r"incomplete: encoder/extra\.safetensors is missing"):
        verify_version(version_copy)


def test_manifest_with_an_edited_checksum_is_caught(version_copy):
    edit_manifest(version_copy, lambda m: m["files"].update({"encoder/config.json": "f" * 64}))
    with pytest.raises(ArtifactError, match=r"checksum mismatch on encoder/config\.json"):
        verify_version(version_copy)


def test_manifest_listing_a_file_outside_the_version_is_caught(version_copy, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    edit_manifest(version_copy, lambda m: m["files"].update({"../outside.txt": sha256(outside)}))
    with pytest.raises(ArtifactError, match=r"lists '\.\./outside\.txt', which is outside the version folder"):
        verify_version(version_copy)


def test_manifest_with_another_label_count_fails_to_load(version_copy):
    edit_manifest(version_copy, lambda m: m.update(labels=["a", "b", "c"]))
    verify_version(version_copy)  # the labels are well-formed ...
    with pytest.raises(ArtifactError, match=r"anchors must be \(3, D\), got \(7, 64\)"):
        load_version_files(version_copy)  # ... but do not match the anchors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("labels"), r"lacks labels; republish"),
        (lambda m: m.pop("files"), r"lacks files; republish"),
        (lambda m: m.update(format_version=2), r"has format_version 2; this erc-stream reads 1"),
        (lambda m: m.update(labels=[]), r"labels must be a non-empty list of strings"),
        (lambda m: m.update(labels=["neutral", 3]), r"labels must be a non-empty list of strings"),
        (lambda m: m.update(files=sorted(m["files"])), r"'files' must map relative paths to sha256 hex strings"),
        (lambda m: m["files"].update({"head.safetensors": None}), r"'files' must map relative paths to sha256"),
    ],
)
def test_bad_manifest_fields(version_copy, change, message):
    edit_manifest(version_copy, change)
    with pytest.raises(ArtifactError, match=message):
        verify_version(version_copy)


def test_manifest_that_is_not_json(version_copy):
    (version_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"is not valid JSON"):
        verify_version(version_copy)
    (version_copy / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"has no manifest\.json: not a published model version"):
        verify_version(version_copy)


def test_missing_version_folder(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        verify_version(tmp_path / "nope")


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/abs", ".", "..", "", ".hidden", "a\\b", "x" * 129])
def test_version_names_that_could_escape_the_store_are_refused(store, name):
    with pytest.raises(ArtifactError, match="invalid model version name"):
        version_path(store, name)
    with pytest.raises(ArtifactError, match="invalid model version name"):
        set_current(store, name)
    assert read_current(store) == VERSION


def test_publish_refuses_a_bad_version_name_before_writing(store_copy):
    tokenizer, encoder = load_default_encoder()
    head_state, anchors = random_head(encoder.config.hidden_size, 7, seed=1)
    with pytest.raises(ArtifactError, match="invalid model version name"):
        publish_version(
            store_copy,
            version="../escape",
            encoder=encoder,
            tokenizer=tokenizer,
            head_state=head_state,
            anchors=anchors,
            manifest={},
        )
    assert sorted(p.name for p in store_copy.iterdir()) == [CURRENT_FILE, VERSION]
    assert not (store_copy.parent / "escape").exists()


def test_current_naming_a_bad_version_is_refused(store_copy):
    (store_copy / CURRENT_FILE).write_text("../../etc\n")
    with pytest.raises(ArtifactError, match="invalid model version name '../../etc'"):
        read_current(store_copy)


def test_read_current_of_an_empty_store(tmp_path):
    assert read_current(tmp_path) is None
    (tmp_path / CURRENT_FILE).write_text("\n")
    assert read_current(tmp_path) is None
    assert list_versions(tmp_path / "absent") == []


# ---------------------------------------------------------------------------- publishing


def test_publishing_an_existing_version_is_refused(store):
    tokenizer, encoder = load_default_encoder()
    head_state, anchors = random_head(encoder.config.hidden_size, 7, seed=1)
    before = sha256(store / VERSION / "head.safetensors")
    with pytest.raises(ArtifactError, match="model version test-v1 already exists .* versions are immutable"):
        publish_version(
            store,
            version=VERSION,
            encoder=encoder,
            tokenizer=tokenizer,
            head_state=head_state,
            anchors=anchors,
            manifest={},
        )
    assert sha256(store / VERSION / "head.safetensors") == before


def test_current_replacement_is_atomic_and_keeps_the_old_version(store_copy):
    publish_test_model(store_copy, version="test-v2", seed=1)
    assert read_current(store_copy) == "test-v2"
    # Nothing but the two versions and CURRENT: no .CURRENT.* or .tmp-* leftovers.
    assert sorted(p.name for p in store_copy.iterdir()) == [CURRENT_FILE, VERSION, "test-v2"]
    assert list_versions(store_copy) == [VERSION, "test-v2"]
    verify_version(store_copy / VERSION)
    verify_version(store_copy / "test-v2")
    set_current(store_copy, VERSION)  # roll back
    assert (store_copy / CURRENT_FILE).read_text() == f"{VERSION}\n"
    assert sorted(p.name for p in store_copy.iterdir()) == [CURRENT_FILE, VERSION, "test-v2"]


def test_publish_without_make_current_leaves_current(store_copy):
    publish_test_model(store_copy, version="test-v3", seed=2, make_current=False)
    assert read_current(store_copy) == VERSION
    verify_version(store_copy / "test-v3")


class _TokenizerThatFailsToSave:
    """A real tokenizer whose save_pretrained writes part of its files and then fails."""

    def __init__(self, tokenizer, exc: BaseException) -> None:
        self._tokenizer = tokenizer
        self._exc = exc

    def save_pretrained(self, directory, **kwargs):
        Path(directory, "tokenizer_config.json").write_text("{")  # half-written
        raise self._exc


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_publish_leaves_nothing_and_current_unchanged(store_copy, exc):
    tokenizer, encoder = load_default_encoder()
    head_state, anchors = random_head(encoder.config.hidden_size, 7, seed=3)
    # An OS error (full disk) becomes an ArtifactError that names the version; Ctrl-C stays itself.
    expected = ArtifactError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected) as info:
        publish_version(
            store_copy,
            version="test-broken",
            encoder=encoder,
            tokenizer=_TokenizerThatFailsToSave(tokenizer, exc),
            head_state=head_state,
            anchors=anchors,
            manifest={},
        )
    if isinstance(exc, OSError):
        assert "test-broken" in str(info.value) and info.value.__cause__ is exc
    assert sorted(p.name for p in store_copy.iterdir()) == [CURRENT_FILE, VERSION]
    assert read_current(store_copy) == VERSION
    assert list_versions(store_copy) == [VERSION]


def test_publish_with_an_incomplete_manifest_is_refused_and_cleaned_up(store_copy):
    tokenizer, encoder = load_default_encoder()
    head_state, anchors = random_head(encoder.config.hidden_size, 7, seed=4)
    with pytest.raises(ArtifactError, match="lacks dataset, labels, prompt, temperature, anchors"):
        publish_version(
            store_copy,
            version="test-empty",
            encoder=encoder,
            tokenizer=tokenizer,
            head_state=head_state,
            anchors=anchors,
            manifest={},
        )
    assert sorted(p.name for p in store_copy.iterdir()) == [CURRENT_FILE, VERSION]
    assert read_current(store_copy) == VERSION


# ---------------------------------------------------------------------------- channels


def test_channels_point_independently_of_current(store_copy):
    publish_test_model(store_copy, version="emory-v1", seed=3, dataset="emorynlp", channel="emorynlp")
    assert read_current(store_copy) == VERSION  # the default channel did not move
    assert read_current(store_copy, "emorynlp") == "emory-v1"
    assert (store_copy / "CURRENT.emorynlp").read_text() == "emory-v1\n"
    assert read_current(store_copy, "dailydialog") is None
    assert list_versions(store_copy) == ["emory-v1", VERSION]  # pointer files are not versions
    set_current(store_copy, VERSION, "emorynlp")
    assert read_current(store_copy, "emorynlp") == VERSION and read_current(store_copy) == VERSION


@pytest.mark.parametrize("channel", ["../x", ".hidden", "a/b", "x" * 65])
def test_bad_channel_names_are_refused(store_copy, channel):
    with pytest.raises(ArtifactError, match="invalid model channel"):
        read_current(store_copy, channel)
    with pytest.raises(ArtifactError, match="invalid model channel"):
        set_current(store_copy, VERSION, channel)
