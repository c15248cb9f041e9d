"""A short run of the GPU model-path benchmark (benchmarks/bench_gpu.py): it runs, records the
card, and every point has a throughput. `make bench-gpu` is the full run that writes
docs/benchmarks/gpu.{json,md}."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(900)


def test_short_model_path_benchmark(device: torch.device, tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--quick", "--device", device.type,
           "--batch-sizes", "1,32", "--out-dir", str(tmp_path), "--name", "gpu-short"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=800, cwd=ROOT, env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout[-4000:])
    payload = json.loads((tmp_path / "gpu-short.json").read_text())
    if device.type == "cuda":
        assert payload["gpu"]["name"] == torch.cuda.get_device_name(device)
        dtypes = {"fp32", "fp16"} | ({"bf16"} if torch.cuda.is_bf16_supported() else set())
    else:
        dtypes = {"fp32", "bf16"}
    rows = payload["predict"]
    assert {(r["dtype"], r["batch_size"]) for r in rows} == {(d, b) for d in dtypes for b in (1, 32)}
    assert all(r["utterances"] > 0 and r["utt_per_s"] > 0 and r["batch_ms_p50"] > 0 for r in rows)
    assert set(payload["agreement"]) == dtypes - {"fp32"}
    assert (tmp_path / "gpu-short.md").read_text().startswith("# GPU model-path benchmark")
