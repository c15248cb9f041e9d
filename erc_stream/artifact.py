"""The model artifact and the model store.

    <store>/CURRENT                     the version being served (replaced atomically)
    <store>/<version>/manifest.json     labels, prompt, temperature, encoder, anchors, metrics, sha256 of every file
    <store>/<version>/encoder/          fine-tuned encoder + tokenizer (safetensors, JSON, vocab text)
    <store>/<version>/head.safetensors  projection MLP ("head.*"), adapted anchors ("anchors", (C, D)) and,
                                        for turn models, the context transformer ("context.*")
    <store>/<version>/report/           metrics.json and plots

Only safetensors and JSON (plus the tokenizer's vocabulary text) are read: no pickle.
The manifest is checked against ``schemas/manifest.schema.json`` at every load; it names the
``architecture`` (``window``, the default when absent, or ``turn``) and, for ``turn``, the
shape of the context model.
A version is written to a temporary directory inside the store, verified, renamed into
place, and only then is CURRENT replaced, so a reader never sees half a version.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from erc_stream.config import valid_channel
from erc_stream.errors import ArtifactError

__all__ = [
    "ARCHITECTURES",
    "CURRENT_FILE",
    "current_file",
    "FORMAT_VERSION",
    "list_versions",
    "load_version_files",
    "manifest_architecture",
    "new_version_name",
    "publish_version",
    "read_current",
    "read_manifest",
    "set_current",
    "sha256_file",
    "STORAGE_DTYPES",
    "validate_manifest",
    "verify_version",
    "version_path",
]

FORMAT_VERSION = 1
CURRENT_FILE = "CURRENT"
MANIFEST_FILE = "manifest.json"
HEAD_FILE = "head.safetensors"
ARCHITECTURES = ("window", "turn")
_MANIFEST_SCHEMA = "schemas/manifest.schema.json"  # inside the erc_stream package; schemas/ links to it
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Files that would be unpickled by some loader: never accepted inside a version.
_FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")
_REQUIRED_KEYS = (
    "format_version",
    "version",
    "created_at",
    "dataset",
    "labels",
    "prompt",
    "temperature",
    "encoder",
    "anchors",
    "files",
)


# How encoder weights may be stored (publish_version's weights_dtype): a float dtype, or int8
# (erc_stream.int8: a scale per block of 32 values, fp16 for matrices with outliers; in
# INT8_WEIGHTS_FILE instead of the HF model.safetensors).
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
}
INT8_WEIGHTS_FILE = "model.int8.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version_name(dataset: str) -> str:
    """A sortable, unique version name, e.g. ``meld-20261122T041500Z-1a2b3c``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{dataset}-{stamp}-{uuid.uuid4().hex[:6]}"


def version_path(store: Path, version: str) -> Path:
    """The folder of ``version`` inside ``store``; refuses names that could escape the store."""
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in (".", ".."):
        raise ArtifactError(f"invalid model version name {version!r}: use letters, digits, '.', '_' and '-' only")
    store = Path(store).resolve()
    path = (store / version).resolve()
    if path.parent != store:
        raise ArtifactError(f"model version {version!r} resolves outside the store {store}")
    return path


def current_file(channel: str = "") -> str:
    """The pointer file of a channel: ``CURRENT`` for the default one, ``CURRENT.<channel>`` otherwise.

    A store can serve several lines of models side by side (one per dataset, say): a worker
    follows one channel, and publishing to a channel moves only its pointer.
    """
    if not channel:
        return CURRENT_FILE
    if not valid_channel(channel):
        raise ArtifactError(f"invalid model channel {channel!r}: use letters, digits, '.', '_' and '-' only")
    return f"{CURRENT_FILE}.{channel}"


def read_current(store: Path, channel: str = "") -> str | None:
    """The version named by the channel's pointer (``<store>/CURRENT`` by default), or None when unset."""
    try:
        text = (Path(store) / current_file(channel)).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    version_path(store, text)  # validates the name
    return text


def set_current(store: Path, version: str, channel: str = "") -> None:
    """Point the channel's pointer (CURRENT by default) at ``version`` atomically (write, fsync, rename)."""
    version_path(store, version)
    name = current_file(channel)
    store = Path(store)
    tmp = store / f".{name}.{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, store / name)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(f"cannot point {name} at {version} in {store}: {exc.strerror or exc}") from exc
    _fsync_dir(store)


def list_versions(store: Path) -> list[str]:
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(
        p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def publish_version(
    store: Path,
    *,
    version: str,
    encoder,
    tokenizer,
    head_state: dict[str, torch.Tensor],
    anchors: torch.Tensor,
    manifest: dict,
    report_dir: Path | None = None,
    make_current: bool = True,
    context_state: dict[str, torch.Tensor] | None = None,
    weights_dtype: str = "fp32",
    channel: str = "",
) -> Path:
    """Write a complete version into ``store`` atomically and (by default) make it CURRENT
    (``CURRENT.<channel>`` when a channel is given).

    ``manifest`` holds everything but ``format_version``, ``version``, ``created_at``,
    ``files`` and the encoder checksum, which are filled in here. ``context_state``: the
    context model of a ``turn`` model (stored as ``context.*``). ``weights_dtype``: ``fp16`` or
    ``bf16`` store the encoder's floating-point weights in 16 bits (half the size; loaders cast
    them to the serving dtype); ``int8`` stores its matrices in 8 bits with a scale per block of
    32 values, those with outliers in fp16 (see erc_stream.int8). The small head file stays fp32.
    """
    if weights_dtype not in STORAGE_DTYPES:
        raise ArtifactError(f"weights_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {weights_dtype!r}")
    store = Path(store)
    final = version_path(store, version)
    if final.exists():
        raise ArtifactError(f"model version {version} already exists in {store}; versions are immutable")
    store.mkdir(parents=True, exist_ok=True)
    tmp = store / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        enc_dir = tmp / "encoder"
        if weights_dtype == "int8":
            from erc_stream.int8 import FORMAT, quantize_state

            enc_dir.mkdir()
            encoder.config.save_pretrained(enc_dir)
            save_file(
                quantize_state(encoder.state_dict()), str(enc_dir / INT8_WEIGHTS_FILE), metadata={"format": FORMAT}
            )
        else:
            state = None
            if weights_dtype != "fp32":
                half = STORAGE_DTYPES[weights_dtype]
                state = {k: (v.to(half) if v.is_floating_point() else v) for k, v in encoder.state_dict().items()}
            encoder.save_pretrained(enc_dir, safe_serialization=True, state_dict=state)
        tokenizer.save_pretrained(enc_dir)
        tensors = {f"head.{k}": v.detach().float().cpu().contiguous() for k, v in head_state.items()}
        tensors["anchors"] = anchors.detach().float().cpu().contiguous()
        if context_state is not None:
            tensors.update({f"context.{k}": v.detach().float().cpu().contiguous() for k, v in context_state.items()})
        save_file(tensors, str(tmp / HEAD_FILE))
        if report_dir is not None and Path(report_dir).is_dir():
            shutil.copytree(report_dir, tmp / "report")
        files = _file_hashes(tmp)
        weights = [f for f in files if f.startswith("encoder/") and f.endswith(".safetensors")]
        full = dict(manifest)
        full.update(
            format_version=FORMAT_VERSION,
            version=version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            files=files,
        )
        full["encoder"] = {
            **manifest.get("encoder", {}),
            "weights_sha256": {w: files[w] for w in weights},
            "weights_dtype": weights_dtype,
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True), encoding="utf-8")
        verify_version(tmp)
        os.rename(tmp, final)
        _fsync_dir(store)
    except ArtifactError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, SafetensorError) as exc:  # full disk, read-only store, ...
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"cannot write model version {version} into {store}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_current:
        set_current(store, version, channel)
    return final


def _read_manifest(version_dir: Path) -> dict:
    mpath = version_dir / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{version_dir} has no {MANIFEST_FILE}: not a published model version") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON ({exc}); republish this version") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} must hold a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{mpath} lacks {', '.join(missing)}; republish this version")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(
            f"{mpath} has format_version {manifest['format_version']!r}; this erc-stream reads {FORMAT_VERSION}"
        )
    return manifest


def verify_version(version_dir: Path) -> dict:
    """Check a version folder against its manifest; returns the manifest or raises ArtifactError."""
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise ArtifactError(f"model version folder {version_dir} does not exist")
    manifest = _read_manifest(version_dir)
    files: dict = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ArtifactError(
            f"{version_dir.name}: manifest 'files' must map relative paths to sha256 hex strings; "
            "republish this version"
        )
    root = version_dir.resolve()
    for rel, digest in files.items():
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ArtifactError(f"manifest of {version_dir.name} lists {rel!r}, which is outside the version folder")
        if not path.is_file():
            raise ArtifactError(f"{version_dir.name} is incomplete: {rel} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{version_dir.name} was modified after publishing: checksum mismatch on {rel}")
    present = _file_hashes(version_dir)
    extra = sorted(set(present) - set(files))
    if extra:
        raise ArtifactError(f"{version_dir.name} holds files its manifest does not list: {', '.join(extra[:5])}")
    bad = [f for f in present if f.endswith(_FORBIDDEN_SUFFIXES)]
    if bad:
        raise ArtifactError(
            f"{version_dir.name} holds pickle-capable files ({', '.join(bad)}); only safetensors and JSON are loaded"
        )
    if HEAD_FILE not in files:
        raise ArtifactError(f"{version_dir.name} lacks {HEAD_FILE}")
    if not any(f.startswith("encoder/") and f.endswith(".safetensors") for f in files):
        raise ArtifactError(f"{version_dir.name} lacks encoder weights in safetensors format")
    labels = manifest["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ArtifactError(f"{version_dir.name}: manifest labels must be a non-empty list of strings")
    validate_manifest(manifest, version_dir.name)
    return manifest


@functools.cache
def _manifest_validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(resources.files("erc_stream").joinpath(_MANIFEST_SCHEMA).read_text(encoding="utf-8"))
    return Draft202012Validator(schema)


def validate_manifest(manifest: dict, name: str = "manifest") -> None:
    """Check a manifest against ``schemas/manifest.schema.json``; raises ArtifactError naming the field."""
    from jsonschema.exceptions import best_match

    error = best_match(_manifest_validator().iter_errors(manifest))
    if error is not None:
        raise ArtifactError(
            f"{name}: manifest field {error.json_path} is invalid: {error.message[:300]} "
            f"(see {_MANIFEST_SCHEMA}); republish this version"
        )
    context = manifest.get("context_model")
    if context is not None and context["context_turns"] != manifest["prompt"]["context_turns"]:
        raise ArtifactError(
            f"{name}: context_model.context_turns={context['context_turns']} differs from "
            f"prompt.context_turns={manifest['prompt']['context_turns']}; republish this version"
        )


def read_manifest(version_dir: Path) -> dict:
    """The manifest of a version, checked against the schema; files are not hashed (see verify_version)."""
    version_dir = Path(version_dir)
    manifest = _read_manifest(version_dir)
    validate_manifest(manifest, version_dir.name)
    return manifest


def manifest_architecture(manifest: dict) -> str:
    """``window`` or ``turn``; manifests written before the field existed are ``window``."""
    return str(manifest.get("architecture", "window"))


def load_version_files(version_dir: Path, *, verify: bool = True):
    """(manifest, encoder, tokenizer, head tensors) of a version; verified against its checksums."""
    from transformers import AutoModel, AutoTokenizer

    version_dir = Path(version_dir)
    manifest = verify_version(version_dir) if verify else read_manifest(version_dir)
    enc_dir = version_dir / "encoder"
    try:
        tokenizer = AutoTokenizer.from_pretrained(enc_dir, local_files_only=True)
        if manifest["encoder"].get("weights_dtype") == "int8":
            encoder = _load_int8_encoder(enc_dir)
        else:
            encoder = AutoModel.from_pretrained(enc_dir, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"cannot load the encoder of {version_dir.name}: {exc}") from exc
    try:
        head = load_file(str(version_dir / HEAD_FILE))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"cannot read {version_dir.name}/{HEAD_FILE}: {exc}") from exc
    anchors = head.get("anchors")
    if anchors is None or anchors.ndim != 2 or anchors.shape[0] != len(manifest["labels"]):
        raise ArtifactError(
            f"{version_dir.name}: anchors must be ({len(manifest['labels'])}, D), got "
            f"{None if anchors is None else tuple(anchors.shape)}"
        )
    return manifest, encoder, tokenizer, head


def _load_int8_encoder(enc_dir: Path):
    """An encoder stored by publish_version(weights_dtype="int8"), dequantized to fp32."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    from erc_stream.int8 import FORMAT, dequantize_state

    path = enc_dir / INT8_WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        found = (f.metadata() or {}).get("format")
    if found != FORMAT:
        raise ArtifactError(f"{path} is not in the {FORMAT} format this erc-stream reads (found {found!r})")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(enc_dir, local_files_only=True))
    try:
        encoder.load_state_dict(dequantize_state(load_file(str(path))), strict=True)
    except RuntimeError as exc:  # missing or unexpected tensors, wrong shapes
        raise ArtifactError(f"{path} does not fit the encoder its config describes: {str(exc)[:300]}") from exc
    return encoder.eval()
