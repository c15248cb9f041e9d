"""trainer/init_weights.py: the starting weights of `fit --init-from`, from real published versions
of the default encoder: one version is loaded as it is, several are averaged parameter by
parameter (an 8-bit one dequantized first), and versions that do not fit the run are refused with
what to change."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, AutoModel

from erc_stream.errors import ConfigError
from erc_stream.model import ProjectionHead, default_encoder_path
from tests.fixtures_model import (
    TEST_PROJ_DIM,
    load_default_encoder,
    publish_test_model,
    publish_test_turn_model,
    random_head,
)
from trainer.init_weights import init_from_versions


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    return {
        "a": publish_test_model(store, "a", seed=1, encoder_shift=0.01, make_current=False),
        "b": publish_test_model(store, "b", seed=2, encoder_shift=-0.03, make_current=False),
        "int8": publish_test_model(store, "int8", seed=3, weights_dtype="int8", make_current=False),
    }


def fresh(proj_dim: int = TEST_PROJ_DIM):
    """A run's encoder (a copy of the pretrained one, disturbed so that loading shows) and a new head."""
    _, encoder = load_default_encoder()
    encoder = copy.deepcopy(encoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(0.5)
    return encoder, ProjectionHead(encoder.config.hidden_size, proj_dim)


def stored_head(seed: int) -> dict[str, torch.Tensor]:
    return random_head(load_default_encoder()[1].config.hidden_size, 7, seed=seed)[0]


def test_one_version_starts_the_run_with_its_own_weights(versions):
    encoder, head = fresh()
    records = init_from_versions(encoder, head, [versions["a"]])
    pretrained = load_default_encoder()[1].state_dict()
    for name, value in encoder.state_dict().items():
        want = pretrained[name] + 0.01 if value.is_floating_point() else pretrained[name]
        torch.testing.assert_close(value, want.to(value.dtype), rtol=0, atol=1e-6)
    for name, value in head.state_dict().items():
        torch.testing.assert_close(value, stored_head(1)[name], rtol=0, atol=0)
    assert [r["version"] for r in records] == ["a"]
    assert records[0]["path"] == str(versions["a"]) and len(records[0]["manifest_sha256"]) == 64


def test_several_versions_are_averaged_parameter_by_parameter(versions):
    encoder, head = fresh()
    records = init_from_versions(encoder, head, [versions["a"], versions["b"]])
    pretrained = load_default_encoder()[1].state_dict()
    layer = "encoder.layer.3.attention.self.query.weight"
    torch.testing.assert_close(encoder.state_dict()[layer], pretrained[layer] - 0.01, rtol=0, atol=1e-6)
    h1, h2 = stored_head(1), stored_head(2)
    for name, value in head.state_dict().items():
        torch.testing.assert_close(value, (h1[name] + h2[name]) / 2, rtol=0, atol=1e-7)
    assert [r["version"] for r in records] == ["a", "b"]


def test_an_8bit_version_is_dequantized_before_it_is_averaged(versions):
    encoder, head = fresh()
    init_from_versions(encoder, head, [versions["int8"], versions["a"]])
    pretrained = load_default_encoder()[1].state_dict()
    layer = "encoder.layer.0.output.dense.weight"
    got = encoder.state_dict()[layer]
    # 8-bit storage moves a weight by at most half a quantization step; the mean halves that again
    assert (got - (pretrained[layer] + 0.005)).abs().max() < 0.01
    assert (got - pretrained[layer] * 0.5).abs().max() > 0.01  # the disturbed starting weights are gone


def test_a_head_of_another_width_is_refused_with_the_flag_to_change(versions):
    encoder, head = fresh(proj_dim=TEST_PROJ_DIM * 2)
    with pytest.raises(ConfigError, match=r"--init-from .*a.*projection head.*--proj-dim"):
        init_from_versions(encoder, head, [versions["a"]])


def test_another_encoder_shape_is_refused_with_what_to_do(versions):
    config = AutoConfig.from_pretrained(default_encoder_path(), local_files_only=True, num_hidden_layers=2)
    encoder = AutoModel.from_config(config)
    head = ProjectionHead(config.hidden_size, TEST_PROJ_DIM)
    with pytest.raises(ConfigError, match=r"its encoder does not match this run's .*unexpected.*--encoder"):
        init_from_versions(encoder, head, [versions["a"]])


def test_a_turn_model_is_refused(tmp_path):
    turn = publish_test_turn_model(tmp_path / "store", make_current=False)
    encoder, head = fresh()
    with pytest.raises(ConfigError, match="'turn' model; only window models"):
        init_from_versions(encoder, head, [turn])
