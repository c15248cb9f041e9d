"""docs/runs/gpu_carry.py, which moves an encoder to a lent GPU and a trained model back in pieces:
weights come back as the bf16 values they were sent as (integer buffers exactly), the small files
byte for byte, and pieces that do not add up or are missing are refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "runs" / "gpu_carry.py"
_spec = importlib.util.spec_from_file_location("gpu_carry", SCRIPT)
assert _spec is not None and _spec.loader is not None
gpu_carry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_carry)


def _encoder(folder: Path) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weights = {
        "embeddings.word_embeddings.weight": torch.randn(50, 8, generator=gen),
        "encoder.layer.0.attention.q.weight": torch.randn(8, 8, generator=gen) * 0.02,
        "encoder.layer.0.attention.q.bias": torch.zeros(8),
        "embeddings.position_ids": torch.arange(12, dtype=torch.int64).unsqueeze(0),
    }
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "mpnet", "hidden_size": 8}', encoding="utf-8")
    (folder / "vocab.txt").write_text("[PAD]\n[MASK]\nhello\n", encoding="utf-8")
    return weights


def test_pack_then_unpack_gives_the_bf16_values_back_in_fp32_and_every_file(tmp_path: Path) -> None:
    weights = _encoder(tmp_path / "enc")
    gpu_carry.pack(tmp_path / "enc", tmp_path / "parts", parts=3)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        "encoder.part1", "encoder.part2", "encoder.part3", "encoder.sha256",
    ]  # fmt: skip
    gpu_carry.unpack(tmp_path / "parts", tmp_path / "back")
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert back.keys() == weights.keys()
    for name, t in weights.items():
        if t.is_floating_point():
            assert back[name].dtype == torch.float32
            assert torch.equal(back[name], t.to(torch.bfloat16).float()), name
        else:
            assert torch.equal(back[name], t), name
    for f in ("config.json", "vocab.txt"):
        assert (tmp_path / "back" / f).read_bytes() == (tmp_path / "enc" / f).read_bytes()


def test_unpack_refuses_pieces_that_do_not_add_up(tmp_path: Path) -> None:
    _encoder(tmp_path / "enc")
    gpu_carry.pack(tmp_path / "enc", tmp_path / "parts", parts=2)
    part = tmp_path / "parts" / "encoder.part2"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="do not add up"):
        gpu_carry.unpack(tmp_path / "parts", tmp_path / "back")
    with pytest.raises(SystemExit, match="no encoder.part"):
        gpu_carry.unpack(tmp_path / "empty", tmp_path / "back")


def test_split_then_join_round_trips_a_folder_and_refuses_a_missing_piece(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpu_carry, "PIECE_BYTES", 4096)
    model = tmp_path / "meld-x"
    (model / "encoder").mkdir(parents=True)
    payload = torch.randn(5000).numpy().tobytes()
    (model / "encoder" / "weights.bin").write_bytes(payload)
    (model / "manifest.json").write_text('{"version": "meld-x"}', encoding="utf-8")
    gpu_carry.split(model, tmp_path / "pieces")
    count = len(list((tmp_path / "pieces").glob("piece.*")))
    assert count > 3 and all(p.stat().st_size <= 4096 for p in (tmp_path / "pieces").glob("piece.*"))
    gpu_carry.join(tmp_path / "pieces", tmp_path / "here")
    assert (tmp_path / "here" / "meld-x" / "encoder" / "weights.bin").read_bytes() == payload
    assert (tmp_path / "here" / "meld-x" / "manifest.json").read_text(encoding="utf-8") == '{"version": "meld-x"}'
    (tmp_path / "pieces" / "piece.001").unlink()
    with pytest.raises(SystemExit, match=r"pieces \[1\] missing"):
        gpu_carry.join(tmp_path / "pieces", tmp_path / "again")
