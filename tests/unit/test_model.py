"""Predictor on a published (untrained) version: output shapes and their relations, the
forward pass against an independent computation, batch-composition invariance, settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from erc_stream.errors import ConfigError
from erc_stream.model import (
    CPU_MAX_FORWARD,
    Predictor,
    ProjectionHead,
    cpu_has_native_bf16,
    resolve_device,
    resolve_dtype,
    resolve_max_forward,
)
from tests.fixtures_model import MELD_LABELS, load_default_encoder, publish_test_model

TEXTS = [
    ("Rachel", "Hi there!"),
    ("Monica", "How are you today? I haven't seen you in ages, where have you been all this time?"),
    ("Joey", "Hey guys"),
    ("Ross", "I am fine."),
    ("Chandler", "Could this day BE any longer? Seriously, I have been in meetings since seven."),
]


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    return publish_test_model(tmp_path_factory.mktemp("store"), version="test-v1", context_turns=2, max_length=128)


@pytest.fixture(scope="module")
def predictor(version_dir) -> Predictor:
    return Predictor.load(version_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def prompts(predictor):
    b = predictor.builder
    turns = b.encode_turns([s for s, _ in TEXTS], [t for _, t in TEXTS])
    return [b.build(turns[:i], turns[i]) for i in range(len(turns))]


def test_load_reads_the_manifest(predictor):
    assert predictor.labels == MELD_LABELS
    assert predictor.version == "test-v1"
    assert predictor.temperature == 0.1
    assert predictor.builder.context_turns == 2
    assert predictor.builder.max_length == 128
    assert predictor.device == torch.device("cpu")
    assert predictor.dtype == torch.float32
    assert not predictor.model.training
    assert predictor.pad_id == 0


def test_prediction_shapes_and_relations(predictor, prompts):
    out = predictor.predict(prompts)
    assert len(out) == 5
    assert out.scores.shape == (5, 7) and out.confidence.shape == (5, 7) and out.label_ids.shape == (5,)
    assert out.scores.dtype == np.float32
    assert np.all(out.scores >= -1.0 - 1e-6) and np.all(out.scores <= 1.0 + 1e-6)
    np.testing.assert_allclose(out.confidence.sum(axis=1), np.ones(5), atol=1e-5)
    z = out.scores.astype(np.float64) / 0.1
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out.confidence, softmax, atol=1e-5)
    assert out.label_ids.tolist() == out.scores.argmax(axis=1).tolist()
    assert out.seconds > 0


def test_scores_equal_an_independent_forward_pass(predictor, prompts, version_dir):
    """Fresh encoder from the packaged folder + the published head, computed step by step."""
    _, encoder = load_default_encoder()
    tensors = load_file(str(version_dir / "head.safetensors"))
    head = ProjectionHead(384, 64)
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    head.eval()
    p = prompts[3]
    with torch.no_grad():
        ids = torch.tensor([p.input_ids])  # (1, T)
        hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # (1, T, H)
        r = head(hidden[0, p.mask_index])  # (D,)
        expected = F.cosine_similarity(r.unsqueeze(0), tensors["anchors"], dim=-1)  # (C,)
    got = predictor.predict([p]).scores[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def test_batch_composition_invariance(predictor, prompts):
    """A prompt scores the same alone, padded inside a batch, and at any position in it."""
    alone = np.stack([predictor.predict([p]).scores[0] for p in prompts])  # (5, C)
    batched = predictor.predict(prompts).scores
    reversed_ = predictor.predict(prompts[::-1]).scores[::-1]
    lengths = [len(p) for p in prompts]
    assert len(set(lengths)) > 1  # the batch really is padded
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(reversed_, alone, atol=1e-5)
    # The shortest prompt next to the longest (most padding).
    short, long_ = lengths.index(min(lengths)), lengths.index(max(lengths))
    pair = predictor.predict([prompts[short], prompts[long_]]).scores
    np.testing.assert_allclose(pair[0], alone[short], atol=1e-5)


def test_forward_parts_score_what_one_pass_scores_in_input_order(predictor, prompts, monkeypatch):
    """A batch run as length-sorted parts: rows back in the caller's order, the same scores."""
    one_pass = predictor.predict(prompts)
    whole = one_pass.scores
    widths: list[tuple[int, int]] = []
    forward = predictor.model.forward

    def recording(input_ids, attention_mask, mask_index):
        widths.append(tuple(input_ids.shape))
        return forward(input_ids, attention_mask, mask_index)

    monkeypatch.setattr(predictor.model, "forward", recording)
    lengths = [len(p) for p in prompts]
    parted = predictor.predict(prompts, max_forward=2)
    by_length = sorted(lengths)
    # Three passes (2 + 2 + 1), each padded to the longest of its own prompts.
    assert widths == [(2, by_length[1]), (2, by_length[3]), (1, by_length[4])]
    np.testing.assert_allclose(parted.scores, whole, atol=1e-5)
    assert parted.label_ids.tolist() == whole.argmax(axis=1).tolist()
    # The predictions count what the encoder saw: the real tokens, and each pass padded to its longest.
    assert parted.tokens == sum(lengths) == one_pass.tokens
    assert parted.padded_tokens == sum(w * n for n, w in widths) < one_pass.padded_tokens == 5 * max(lengths)
    widths.clear()
    predictor.predict(prompts, max_forward=len(prompts))  # no more than the batch: one pass
    assert widths == [(5, max(lengths))]


def test_resolve_max_forward():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_max_forward(None, cpu) == CPU_MAX_FORWARD == 8
    assert resolve_max_forward(None, cuda) is None  # one pass on a GPU
    assert resolve_max_forward(0, cpu) is None and resolve_max_forward(0, cuda) is None
    assert resolve_max_forward(4, cpu) == 4 and resolve_max_forward(16, cuda) == 16
    with pytest.raises(ConfigError, match=r"max_forward_prompts must be 0 \(one pass\) or more, got -1"):
        resolve_max_forward(-1, cpu)


def test_with_context_turns(predictor, prompts):
    fewer = predictor.with_context_turns(1)
    assert fewer.builder.context_turns == 1
    assert fewer.model is predictor.model and fewer.labels == predictor.labels
    assert predictor.builder.context_turns == 2  # the original is unchanged
    assert predictor.with_context_turns(0).builder.context_turns == 0
    with pytest.raises(ConfigError, match=r"context_turns=3 is outside what model test-v1 allows \(0\.\.2\)"):
        predictor.with_context_turns(3)
    with pytest.raises(ConfigError, match=r"context_turns=-1 is outside"):
        predictor.with_context_turns(-1)


def test_warm_up_runs(predictor):
    seconds = predictor.warm_up(batch_size=2)
    assert seconds > 0


def test_bf16_on_cpu_is_close_to_fp32(version_dir, predictor, prompts):
    bf16 = Predictor.load(version_dir, device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    out = bf16.predict(prompts[:2])
    assert out.scores.dtype == np.float32  # scores are computed in fp32 whatever the weights
    np.testing.assert_allclose(out.scores, predictor.predict(prompts[:2]).scores, atol=0.05)


# ---------------------------------------------------------------------------- settings


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"device must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match=r"got 'CPU'"):
        resolve_device("CPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no CUDA GPU is visible")
def test_resolve_device_cuda_without_gpu():
    with pytest.raises(ConfigError, match=r"device='cuda' but no CUDA GPU is visible"):
        resolve_device("cuda")


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16  # no GPU needed to resolve
    with pytest.raises(ConfigError, match=r"dtype='fp16' is for CUDA; on CPU use fp32 or bf16"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match=r"dtype must be auto, fp32, bf16 or fp16, got 'int8'"):
        resolve_dtype("int8", cpu)


def test_load_with_bad_settings_fails_before_anything_is_moved(version_dir):
    with pytest.raises(ConfigError, match="got 'tpu'"):
        Predictor.load(version_dir, device="tpu")
    with pytest.raises(ConfigError, match="fp16"):
        Predictor.load(version_dir, device="cpu", dtype="fp16")


@pytest.mark.parametrize(
    ("device", "env", "expect_on"),
    [("cpu", None, True), ("cuda", None, False), ("cuda", "1", True)],
)
def test_cudnn_attention_is_turned_off_for_cuda_unless_asked_for(monkeypatch, device, env, expect_on):
    """The flag is process-wide and settable without a GPU; docs/benchmarks/gpu_h200.md has why."""
    from erc_stream.model import configure_cuda_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    if env is None:
        monkeypatch.delenv("ERC_CUDNN_SDP", raising=False)
    else:
        monkeypatch.setenv("ERC_CUDNN_SDP", env)
    try:
        configure_cuda_attention(torch.device(device))
        assert torch.backends.cuda.cudnn_sdp_enabled() is expect_on
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
