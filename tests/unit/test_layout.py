"""Package layout rules (ARCHITECTURE.md): ``erc_stream`` never imports ``trainer``, except its
``devtools`` subpackage (the local broker, replay, tail and demo); the worker needs no devtools."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import erc_stream

ROOT = Path(__file__).resolve().parents[2]


def _daemon_modules() -> list[str]:
    """Every module of erc_stream outside erc_stream.devtools."""
    names = [m.name for m in pkgutil.walk_packages(erc_stream.__path__, "erc_stream.")]
    return sorted(n for n in names if not n.startswith("erc_stream.devtools"))


def _loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules of a fresh interpreter after importing ``modules``."""
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_daemon_modules_are_found() -> None:
    mods = _daemon_modules()
    for name in ("erc_stream.worker", "erc_stream.reload", "erc_stream.emit", "erc_stream.window", "erc_stream.cli"):
        assert name in mods


def test_the_worker_imports_neither_trainer_nor_devtools() -> None:
    loaded = _loaded_after_import(["erc_stream.worker"])
    assert "erc_stream.worker" in loaded
    assert not {m for m in loaded if m == "trainer" or m.startswith("trainer.")}
    assert not {m for m in loaded if m.startswith("erc_stream.devtools")}


def test_no_module_outside_devtools_imports_trainer() -> None:
    loaded = _loaded_after_import(_daemon_modules())
    assert not sorted(m for m in loaded if m == "trainer" or m.startswith("trainer."))
