"""8-bit storage of encoder weights (erc_stream.int8 and publish_version(weights_dtype="int8"))."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from erc_stream.artifact import INT8_WEIGHTS_FILE, load_version_files, verify_version
from erc_stream.errors import ArtifactError
from erc_stream.int8 import BLOCK, FORMAT, MIN_NUMEL, OUTLIER_RATIO, SCALE_SUFFIX, dequantize_state, quantize_state
from tests.fixtures_model import load_default_encoder, publish_test_model


def test_blocks_are_scaled_by_their_largest_magnitude_and_rounded():
    w = torch.zeros(2, MIN_NUMEL // 2)
    w[0, :3] = torch.tensor([1.27, -0.635, 0.004])  # block 0 of row 0, scale 0.01: 127, -63.5, 0.4
    w[0, 4:6] = torch.tensor([0.254, -0.1])  # block 1 of row 0 (block 4), scale 0.002: 127, -50
    w[1, :2] = torch.tensor([-2.54, 1.0])  # scale 0.02: -127, 50
    state = {"m": w, "b": torch.tensor([0.5, 1.5]), "ids": torch.tensor([1, 2])}
    q = quantize_state(state, block=4, outlier_ratio=float("inf"))  # a sparse matrix is all outliers
    assert q["m"].dtype == torch.int8
    assert q["m"][0, :6].tolist() == [127, -64, 0, 0, 127, -50]  # round half to even: -63.5 -> -64
    assert q["m"][1, :2].tolist() == [-127, 50]
    scale = q["m" + SCALE_SUFFIX]
    assert scale.shape == (2, MIN_NUMEL // 8)
    assert scale[0, :3].tolist() == pytest.approx([0.01, 0.002, 1.0])  # an all-zero block gets scale 1
    assert scale[1, 0].item() == pytest.approx(0.02)
    assert q["b"].dtype == torch.float32 and q["b"].tolist() == [0.5, 1.5]  # 1-D: kept in fp32
    assert q["ids"].dtype == torch.int64  # integers untouched
    back = dequantize_state(q)
    assert set(back) == {"m", "b", "ids"}
    assert back["m"][0, :6].tolist() == pytest.approx([1.27, -0.64, 0.0, 0.0, 0.254, -0.1])
    assert back["m"][1, :2].tolist() == pytest.approx([-2.54, 1.0])


def test_a_row_length_the_block_does_not_divide_gets_one_scale_per_row():
    w = torch.randn(8, 1000)  # 1000 % 16 != 0
    q = quantize_state({"w": w})
    assert q["w" + SCALE_SUFFIX].shape == (8, 1)
    assert torch.allclose(q["w" + SCALE_SUFFIX][:, 0], w.abs().amax(dim=1) / 127)
    assert quantize_state({"w": torch.randn(8, 1024)})["w" + SCALE_SUFFIX].shape == (8, 1024 // BLOCK)


def test_small_matrices_and_zero_rows_are_safe():
    small = torch.randn(4, 4)
    zero = torch.zeros(2, MIN_NUMEL)
    q = quantize_state({"small": small, "zero": zero})
    assert q["small"].dtype == torch.float32 and torch.equal(q["small"], small)
    assert torch.equal(dequantize_state(q)["zero"], zero)  # no division by zero
    with pytest.raises(ValueError, match="block must be"):
        quantize_state({"zero": zero}, block=0)


def test_a_matrix_with_outliers_stays_in_16_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    plain = w.clone()
    w[5, 9] = 1.5 * OUTLIER_RATIO  # the std stays about 1.1: over the ratio
    q = quantize_state({"w": w, "plain": plain})
    assert q["w"].dtype == torch.float16 and "w" + SCALE_SUFFIX not in q
    assert q["plain"].dtype == torch.int8 and "plain" + SCALE_SUFFIX in q
    back = dequantize_state(q)
    assert back["w"].dtype == torch.float32 and torch.equal(back["w"], w.half().float())
    assert quantize_state({"w": w}, outlier_ratio=3 * OUTLIER_RATIO)["w"].dtype == torch.int8


@pytest.mark.parametrize("block", [BLOCK, 384])
def test_the_rounding_error_is_at_most_half_a_step_per_block(block):
    torch.manual_seed(0)
    w = torch.randn(64, 384) * torch.linspace(0.01, 3.0, 64)[:, None]
    w[3, 7] = 40.0  # one outlier coarsens its own block only
    back = dequantize_state(quantize_state({"w": w}, block=block))["w"]
    step = w.reshape(64, -1, block).abs().amax(dim=2) / 127  # (R, C/b)
    assert ((back - w).abs() <= step.repeat_interleave(block, dim=1) / 2 + 1e-6).all()
    if block == BLOCK:  # the rest of the outlier's row keeps a fine step
        assert (back[3, BLOCK:] - w[3, BLOCK:]).abs().max() < 0.02


def test_a_scale_without_its_tensor_or_of_the_wrong_shape_is_refused():
    with pytest.raises(ArtifactError, match="without its tensor"):
        dequantize_state({"w" + SCALE_SUFFIX: torch.ones(2)})
    with pytest.raises(ArtifactError, match="expected int8"):
        dequantize_state({"w": torch.zeros(2, 3, dtype=torch.int8), "w" + SCALE_SUFFIX: torch.ones(3, 1)})
    with pytest.raises(ArtifactError, match="expected int8"):  # 3 values do not split into 2 blocks
        dequantize_state({"w": torch.zeros(2, 3, dtype=torch.int8), "w" + SCALE_SUFFIX: torch.ones(2, 2)})
    with pytest.raises(ArtifactError, match="expected int8"):  # the row-wise layout of a 1-D scale
        dequantize_state({"w": torch.zeros(2, 4, dtype=torch.int8), "w" + SCALE_SUFFIX: torch.ones(2)})
    with pytest.raises(ArtifactError, match="reserves"):
        quantize_state({"w" + SCALE_SUFFIX: torch.ones(2)})


def test_an_int8_version_is_a_third_of_fp32_and_loads_close_to_the_original(tmp_path):
    fp32 = publish_test_model(tmp_path / "store", "v32")
    int8 = publish_test_model(tmp_path / "store", "v8", weights_dtype="int8")
    manifest = verify_version(int8)
    assert manifest["encoder"]["weights_dtype"] == "int8"
    assert list(manifest["encoder"]["weights_sha256"]) == [f"encoder/{INT8_WEIGHTS_FILE}"]
    assert not (int8 / "encoder" / "model.safetensors").exists()
    with safe_open(str(int8 / "encoder" / INT8_WEIGHTS_FILE), "pt") as f:
        assert f.metadata() == {"format": FORMAT}
    size = {p: (p / "encoder" / n).stat().st_size for p, n in ((fp32, "model.safetensors"), (int8, INT8_WEIGHTS_FILE))}
    assert size[int8] < 0.33 * size[fp32]  # 1 byte a value + 4 per block of 32; outlier matrices 2 a value
    _, reference = load_default_encoder()
    _, encoder, _, _ = load_version_files(int8)
    assert not encoder.training
    ref_state = reference.state_dict()
    for name, value in encoder.state_dict().items():
        assert value.dtype == torch.float32, name
        ref = ref_state[name]
        if value.ndim == 2:
            b = BLOCK if ref.shape[1] % BLOCK == 0 else ref.shape[1]
            step = (ref.reshape(ref.shape[0], -1, b).abs().amax(dim=2) / 127).repeat_interleave(b, dim=1)
        else:
            step = torch.zeros_like(ref)
        assert ((value - ref).abs() <= step / 2 + 1e-6).all(), name


def test_int8_weights_in_another_format_or_missing_a_tensor_are_refused(tmp_path):
    path = publish_test_model(tmp_path / "store", "v8", weights_dtype="int8")
    weights = path / "encoder" / INT8_WEIGHTS_FILE
    tensors = load_file(str(weights))
    manifest_path = path / "manifest.json"

    def rewrite(new: dict, metadata: dict) -> None:
        from erc_stream.artifact import sha256_file

        save_file(new, str(weights), metadata=metadata)
        m = json.loads(manifest_path.read_text())
        m["files"][f"encoder/{INT8_WEIGHTS_FILE}"] = sha256_file(weights)
        manifest_path.write_text(json.dumps(m))

    rewrite(tensors, {"format": "something-else"})
    with pytest.raises(ArtifactError, match="not in the int8-blockwise-absmax format"):
        load_version_files(path)
    dropped = next(k for k in tensors if not k.endswith(SCALE_SUFFIX) and tensors[k].ndim == 1)
    rewrite({k: v for k, v in tensors.items() if k != dropped}, {"format": FORMAT})
    with pytest.raises(ArtifactError, match="does not fit the encoder"):
        load_version_files(path)
