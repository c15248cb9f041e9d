"""The benchmarks count FLOPs with the shape of the model they measure, read from its encoder config."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import _common
from erc_stream.artifact import list_versions

STORE = Path(__file__).resolve().parents[2] / "models"


def test_every_shipped_encoder_shape_is_read_from_its_config():
    for version in list_versions(STORE):
        config = json.loads((STORE / version / "encoder" / "config.json").read_text())
        shape = _common.encoder_shape(STORE / version)
        assert (shape.layers, shape.hidden, shape.intermediate) == (
            config["num_hidden_layers"],
            config["hidden_size"],
            config["intermediate_size"],
        )


def test_flops_per_token_follow_the_shape(tmp_path):
    enc = tmp_path / "v" / "encoder"
    enc.mkdir(parents=True)
    (enc / "config.json").write_text(
        json.dumps({"num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072})
    )
    mpnet = _common.encoder_shape(tmp_path / "v")
    # 12 * (8*768^2 + 4*768*3072 + 4*T*768) at T = 100
    assert _common.encoder_flops_per_token(100, mpnet) == 12 * (8 * 768**2 + 4 * 768 * 3072 + 4 * 100 * 768)
    assert _common.encoder_flops_per_token(100) == 6 * (8 * 384**2 + 4 * 384 * 1536 + 4 * 100 * 384)  # MiniLM


def test_a_pass_with_mask_rows_drops_the_last_feed_forward_of_every_other_token():
    per_token = _common.encoder_flops_per_token(50)
    assert _common.encoder_pass_flops(4, 50, mask_rows=False) == 4 * 50 * per_token
    # MiniLM: the last layer's feed-forward (4*H*I = 4*384*1536 FLOPs a token) runs on 4 rows, not 200.
    assert _common.encoder_pass_flops(4, 50) == 4 * 50 * per_token - 4 * 49 * 4 * 384 * 1536
