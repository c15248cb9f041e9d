"""EACL training: stage 1 (encoder + head + anchors) and stage 2 (anchor adaptation), then publish.

Stage 1 anchors are computed at every step from the anchor texts (label word or description):
the live encoder mean-pools the text and the same projection head maps it into the
representation space, as in EACL. When the texts were embedded by an external endpoint,
a linear adapter maps those fixed vectors to the encoder width before the shared head.

Stage 2 freezes the encoder: every training representation is computed once, then the
anchors alone are fitted with cross-entropy over cos(r, a)/tau and chosen on dev.

``architecture="turn"`` trains the turn-once model instead (trainer/turn.py): batches are whole
conversations, each turn encoded once per step as its single-turn prompt, a context transformer
reads every turn's window of those vectors; the same head, anchors, losses and stage 2 follow.
An optional triplet loss (``triplet_weight``) and an optional distillation loss towards a published
teacher's predictions (``distill_from``, trainer/distill.py) are added to the stage-1 loss of either
architecture.

Under torchrun (trainer/distributed.py) stage 1 is DistributedDataParallel: every rank takes
its share of the same global batches (``batch_size`` stays the global batch), SupCon and CE
run on the representations gathered from every rank, so each step equals the one-process step
on the same global batch. Rank 0 alone evaluates, checkpoints, runs stage 2 and publishes;
the other ranks wait at a barrier.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from erc_stream.artifact import new_version_name, publish_version
from erc_stream.context import ContextModel, ContextSettings
from erc_stream.errors import ConfigError, ErcError
from erc_stream.hoststat import read_cpu_ticks, steal_share
from erc_stream.model import (
    EmotionModel,
    Predictions,
    Predictor,
    ProjectionHead,
    TurnEmotionModel,
    TurnPredictor,
    configure_cuda_attention,
    resolve_device,
    resolve_dtype,
)
from erc_stream.prompt import NORMALIZATION, Prompt, PromptBuilder, pad_batch
from trainer.anchors import LLMSettings, describe_emotions, embed_descriptions
from trainer.calibration import calibrate, draw_confidence_report
from trainer.checkpoint import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    STAGE2_REPS_FILE,
    Progress,
    capture_rng,
    load_file,
    restore_rng,
    save_atomic,
    write_run_config,
)
from trainer.config import TrainConfig
from trainer.datasets import DATASETS, Conversation, inverse_frequency, load_split
from trainer.distill import teacher_probabilities
from trainer.distributed import (
    BatchShard,
    DistContext,
    any_rank,
    barrier,
    broadcast_object,
    check_same,
    distributed,
    gather_rows,
    seed_rank,
    shard_batch,
)
from trainer.dropout import resolve_dropout_masks, use_dropout_masks
from trainer.evaluate import build_examples, compute_metrics, predict_examples, write_report
from trainer.frozen import FrozenPrefix, pad_hidden
from trainer.init_weights import init_from_versions
from trainer.losses import anchor_adaptation_loss, cosine_logits, distillation_loss, stage1_loss, triplet_loss
from trainer.turn import TurnData, TurnSplits, TurnStage1Net, predict_turn_data, turn_representations

__all__ = ["adamw", "adamw_groups", "adamw_kind", "fit", "FitResult", "StopFlag", "TrainingInterrupted", "run_dir_of"]

log = logging.getLogger(__name__)

# An epoch whose training steps lost at least this share of the CPU time they asked for to the hypervisor
# (steal) is flagged in the log: its utterances/s are not a figure of the code (erc_stream/hoststat.py).
STEAL_WARN_SHARE = 0.05


@dataclass(frozen=True)
class FitResult:
    version: str
    path: Path
    metrics: dict
    wall_s: float
    best_epoch: int


class _AnchorEncoder(nn.Module):
    """Turns anchor texts into anchor vectors with the live encoder and the shared head."""

    def __init__(self, encoder, head: ProjectionHead, tokenizer, texts: list[str], external: torch.Tensor | None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.external = external  # (C, E) fixed, or None
        self.adapter = nn.Linear(external.shape[1], encoder.config.hidden_size) if external is not None else None
        enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        self.register_buffer("ids", enc["input_ids"], persistent=False)  # (C, L)
        self.register_buffer("mask", enc["attention_mask"], persistent=False)  # (C, L)

    ids: torch.Tensor
    mask: torch.Tensor

    def forward(self) -> torch.Tensor:
        if self.adapter is not None and self.external is not None:
            return self.head(self.adapter(self.external.to(self.adapter.weight.device)))  # (C, D)
        hidden = self.encoder(input_ids=self.ids, attention_mask=self.mask).last_hidden_state  # (C, L, H)
        m = self.mask.unsqueeze(-1).to(hidden.dtype)  # (C, L, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (C, H)
        return self.head(pooled)  # (C, D)


class _Stage1Net(nn.Module):
    """The stage-1 forward in one module, so DistributedDataParallel can wrap it: the mask-token
    representations of a batch and the anchors from their texts, through the shared encoder and head."""

    def __init__(self, model: EmotionModel, anchor_enc: _AnchorEncoder) -> None:
        super().__init__()
        self.model = model
        self.anchor_enc = anchor_enc

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        reps = self.model.represent(input_ids, attention_mask, mask_index)  # (B, D)
        return reps, self.anchor_enc()  # (B, D), (C, D)


class _FrozenStage1Net(nn.Module):
    """The stage-1 forward of a run with frozen lower layers: the top layers read the cached
    frozen-layer output of each prompt (trainer/frozen.py) instead of its tokens."""

    def __init__(self, model: EmotionModel, anchor_enc: _AnchorEncoder, prefix: FrozenPrefix) -> None:
        super().__init__()
        self.model = model
        self.anchor_enc = anchor_enc
        self.prefix = prefix  # its upper part holds the encoder's own top layers (shared parameters)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, mask_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_mask = self.prefix.top_mask(hidden, attention_mask, mask_index, mask_rows_only=self.model.mask_rows_only)
        return self.model.head(h_mask), self.anchor_enc()  # (B, H) -> (B, D), (C, D)


def _train_net(run: _Run) -> nn.Module:
    """The stage-1 forward; under torchrun wrapped in DistributedDataParallel (gradients all-reduced)."""
    if run.turn is not None:  # one process (refused under torchrun in _prepare)
        assert isinstance(run.model, TurnEmotionModel)
        return TurnStage1Net(run.model, run.anchor_enc, run.turn.train)
    assert isinstance(run.model, EmotionModel)
    net: nn.Module = (
        _Stage1Net(run.model, run.anchor_enc)
        if run.frozen is None
        else _FrozenStage1Net(run.model, run.anchor_enc, run.frozen.prefix)
    )
    if not run.dist.enabled:
        return net
    # Some parameters never get a gradient in stage 1: the encoder's pooler (the mask token's hidden
    # state is used, not the pooled one) and model.anchors (stage 1 takes its anchors from anchor_enc).
    return DistributedDataParallel(
        net, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=True
    )


def _window_batches(
    lengths: list[int], labels: list[int], n_classes: int, batch_size: int, rng: random.Random, sampler: str
) -> list[list[int]]:
    """This epoch's batches of training prompt indices.

    ``shuffle``: every prompt once. ``balanced`` (SentEmoContext's class-balanced sampler): as
    many draws with replacement as there are prompts, each weighted by its class's inverse
    frequency, so every class comes about equally often and a rare prompt several times an epoch.
    """
    if sampler != "balanced":
        return _length_sorted_batches(lengths, batch_size, rng)
    per_class = inverse_frequency(labels, n_classes)
    draws = rng.choices(range(len(lengths)), weights=[per_class[y] for y in labels], k=len(lengths))
    return _length_sorted_batches(lengths, batch_size, rng, draws)


def _length_sorted_batches(
    lengths: list[int], batch_size: int, rng: random.Random, draws: list[int] | None = None
) -> list[list[int]]:
    """Shuffle (``draws``: these indices, already random), then sort by length inside chunks of
    50 batches, then shuffle the batches.

    Batches hold prompts of similar length (little padding) while the order stays random.
    """
    if draws is None:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
    else:
        idx = list(draws)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


# Devices where AdamW runs fused: one kernel over every parameter instead of a dozen small ops per
# tensor. On a 2-core CPU the step of a MiniLM model's 22.7M parameters took 66-86 ms in the loop
# and 10-14 ms fused, mpnet-base's 110M 376-387 ms and 55-56 ms (docs/benchmarks/README.md, finding 11).
FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})


def adamw(groups: list[dict], device: torch.device, *, fused: bool | None = None) -> torch.optim.AdamW:
    """The trainer's AdamW over ``groups``: fused on a ``FUSED_ADAMW_DEVICES`` device unless ``fused``
    says otherwise (False: PyTorch's per-tensor loop, as every run before session 35 stepped)."""
    if fused is None:
        fused = device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, fused=fused or None)


def adamw_kind(opt: torch.optim.Optimizer) -> str:
    """What an AdamW steps, ``fused`` or ``loop``, read off its groups (a loaded state dict's groups
    bring the choice of the run that saved them)."""
    return "fused" if all(g.get("fused") for g in opt.param_groups) else "loop"


def adamw_groups(opt: torch.optim.Optimizer) -> list[list[float]]:
    """Each group's tensor count and weight decay, for a benchmark's results to say what it stepped."""
    return [[len(g["params"]), g["weight_decay"]] for g in opt.param_groups]


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _limit(convs: list[Conversation], n: int | None) -> list[Conversation]:
    return convs if n is None else convs[:n]


class TrainingInterrupted(ErcError):
    """A stop was requested (SIGTERM/SIGINT): the run checkpointed and can be resumed."""


class StopFlag:
    """Set from a signal handler or a test; training checks it between optimizer steps."""

    def __init__(self, after_steps: int | None = None, after_stage2_epochs: int | None = None) -> None:
        self._set = False
        self.after_steps = after_steps  # for tests: stop once this many steps are done
        self.after_stage2_epochs = after_stage2_epochs  # for tests: stop in stage 2 after this many epochs

    def set(self) -> None:
        self._set = True

    def should_stop(self, global_step: int) -> bool:
        return self._set or (self.after_steps is not None and global_step >= self.after_steps)

    def should_stop_stage2(self, epoch: int) -> bool:
        return self._set or (self.after_stage2_epochs is not None and epoch >= self.after_stage2_epochs)


@dataclass(frozen=True)
class _Frozen:
    """A run's frozen lower encoder and its output for every training prompt, train_ex order."""

    prefix: FrozenPrefix
    hidden: list[torch.Tensor]  # (T_i, H) fp32 on the CPU

    def batch(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = pad_hidden([self.hidden[i] for i in indices])  # (B, T, H), (B, T)
        return hidden.to(device), mask.to(device)


def _window_batch(run: _Run, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """The stage-1 net's input for these training prompts: padded token ids, or with --freeze-layers
    the cached frozen-layer output (the top layers read it instead of the tokens)."""
    prompts = [run.train_ex[i][0] for i in indices]
    if run.frozen is None:
        return {k: v.to(device) for k, v in pad_batch(prompts, run.tokenizer.pad_token_id or 0).items()}
    hidden, mask = run.frozen.batch(indices, device)  # (b, T, H), (b, T)
    mask_index = torch.tensor([p.mask_index for p in prompts], device=device)  # (b,)
    return {"hidden": hidden, "attention_mask": mask, "mask_index": mask_index}


@dataclass
class _Run:
    """Everything a run builds before training: data, tokenizer, encoder, anchors, model."""

    cfg: TrainConfig
    run_dir: Path
    labels: list[str]
    neutral: str | None
    device: torch.device
    dtype: torch.dtype
    enc_path: Path
    tokenizer: Any
    encoder: nn.Module
    builder: PromptBuilder
    source: Any
    head: ProjectionHead
    anchor_enc: _AnchorEncoder
    model: EmotionModel | TurnEmotionModel
    train_ex: list[tuple[Prompt, int]]  # turn: the single-turn prompts, conversation after conversation
    dev_ex: list[tuple[Prompt, int]]
    anchors_before: torch.Tensor  # (C, D) anchors of the untrained model, for the report
    dist: DistContext  # this process's place in a torchrun run (one process: world_size 1)
    turn: TurnSplits | None = None  # the conversations of a turn run; None for window
    dev_groups: list[str] = field(default_factory=list)  # conversation id of each dev utterance, dev_ex order
    teacher: torch.Tensor | None = None  # (N_train, C) teacher probabilities in train_ex order (--distill-from)
    frozen: _Frozen | None = None  # --freeze-layers: the split encoder and each train prompt's cached output
    init_from: list[dict] = field(default_factory=list)  # --init-from: the versions whose mean started the run
    adamw: str = "loop"  # what stage 1's AdamW ran, fused or loop (a resumed checkpoint's groups keep their own)
    dropout_masks: str = "bernoulli"  # how dropout drew its masks (trainer/dropout.py)
    attention: str = "sdpa"  # the encoder's attention implementation in training (train_attention: erc_train)

    def predictor(self, anchors: torch.Tensor) -> Predictor | TurnPredictor:
        """The shared inference path on the live weights, for dev evaluation."""
        manifest = _manifest_core(self.cfg, self.labels, self.builder, self.source, self.enc_path)
        manifest["version"] = "in-training"
        eval_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        if isinstance(self.model, TurnEmotionModel):
            turn_model = TurnEmotionModel(self.encoder, self.model.context, self.head, anchors.to(self.device))
            return TurnPredictor(turn_model.eval(), self.builder, manifest, self.device, eval_dtype)
        eval_model = EmotionModel(self.encoder, self.head, anchors.to(self.device))
        return Predictor(eval_model.eval(), self.builder, manifest, self.device, eval_dtype)

    def utterances(self, batch: list[int]) -> int:
        """Utterances in a batch (a turn batch lists conversations)."""
        return len(batch) if self.turn is None else sum(self.turn.train.lengths[c] for c in batch)

    def dev_predictions(self, anchors: torch.Tensor, progress: bool, desc: str = "dev") -> tuple[dict, Predictions]:
        """Dev metrics and the predictions behind them (scores for calibration)."""
        predictor = self.predictor(anchors)
        if isinstance(predictor, TurnPredictor):
            assert self.turn is not None
            pred = predict_turn_data(predictor, self.turn.dev, self.cfg.eval_batch_size)
        else:
            pred = predict_examples(
                predictor, self.dev_ex, batch_size=self.cfg.eval_batch_size, progress=progress, desc=desc
            )
        gold = [y for _, y in self.dev_ex]
        return compute_metrics(gold, pred.label_ids.tolist(), self.labels, self.neutral), pred

    def dev_metrics(self, anchors: torch.Tensor, progress: bool, desc: str = "dev") -> dict:
        return self.dev_predictions(anchors, progress, desc)[0]


@dataclass
class _Optim:
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    params: list[nn.Parameter]  # everything clipped together
    class_weights: torch.Tensor | None  # (C,) or None
    net: nn.Module  # the stage-1 forward (_Stage1Net; DDP-wrapped under torchrun)


def run_dir_of(cfg: TrainConfig) -> Path:
    return cfg.run_dir if cfg.run_dir is not None else Path("var/runs") / str(cfg.version)


def fit(cfg: TrainConfig, *, progress: bool = True, stop: StopFlag | None = None, resume: bool = False) -> FitResult:
    """Train on the dataset's train split, select on dev, evaluate, publish into cfg.store.

    The run folder (``cfg.run_dir``, default ``var/runs/<version>``) receives the config and
    checkpoints; ``resume=True`` continues from its latest checkpoint. A set ``stop`` flag makes
    training checkpoint at the next step boundary and raise :class:`TrainingInterrupted`.
    """
    t_start = time.perf_counter()
    with distributed(cfg.device) as ctx:  # one process: no process group, nothing to wait for
        progress = progress and ctx.is_main
        if cfg.version is None:  # random: rank 0 draws it for everyone
            cfg = cfg.replace(version=broadcast_object(new_version_name(cfg.dataset), ctx))
        try:
            run = _prepare(cfg, ctx, resume=resume)
        except Exception:
            if not resume and ctx.is_main:
                _forget_failed_start(run_dir_of(cfg))
            raise
        has_ckpt = resume and (run.run_dir / CHECKPOINT_FILE).is_file()
        ckpt = load_file(run.run_dir / CHECKPOINT_FILE) if has_ckpt else None
        if resume and ckpt is None:
            log.warning("no checkpoint in %s yet: starting the run from its beginning", run.run_dir)
        stop = stop or StopFlag()
        progress_state = _stage1(run, ckpt, progress=progress, stop=stop)
        result = None
        if ctx.is_main:  # best epoch, stage 2, final evaluation and publish: rank 0 alone
            stage1_anchors = _load_best(run, progress_state)
            final_anchors, stage2_info = stage1_anchors, {"enabled": cfg.stage2}
            if cfg.stage2 and cfg.stage2_epochs > 0:
                final_anchors, stage2_info = _adapt_anchors(
                    cfg,
                    run.model,
                    run.builder,
                    run.train_ex,
                    run.dev_ex,
                    stage1_anchors,
                    run.labels,
                    run.neutral,
                    progress,
                    turn=(run.predictor(stage1_anchors), run.turn) if run.turn is not None else None,
                    frozen=run.frozen,
                    run_dir=run.run_dir,
                    stop=stop,
                )
            result = _publish(run, progress_state, final_anchors, stage2_info, t_start, progress)
        barrier(ctx, "rank 0's stage 2 and publish")
        out = broadcast_object(result, ctx)
        assert isinstance(out, FitResult)
        return out


def _forget_failed_start(run_dir: Path) -> None:
    """A fresh run that failed before its first checkpoint (missing data, a bad encoder path) leaves
    no config.json behind: a queue that resumes folders holding one would retry the bad settings."""
    if (run_dir / CHECKPOINT_FILE).exists():
        return
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def _prepare(cfg: TrainConfig, ctx: DistContext, *, resume: bool) -> _Run:
    """Seed, load data and encoder, build anchors and model; write the run's config (rank 0)."""
    seed_rank(cfg.seed, ctx)
    run_dir = run_dir_of(cfg)
    if not resume and (run_dir / CHECKPOINT_FILE).exists():
        raise ConfigError(f"{run_dir} already holds a run; resume it with `erc-train fit --resume {run_dir}`")
    if ctx.is_main:
        write_run_config(run_dir, cfg.to_json())
    spec = DATASETS[cfg.dataset]
    labels = list(spec.labels)
    device = ctx.device if ctx.enabled else resolve_device(cfg.device)  # under torchrun: this rank's GPU
    configure_cuda_attention(device)
    dtype = resolve_dtype(cfg.dtype, device)
    log.info("training on %s with %s; run folder %s", device, dtype, run_dir)

    train_convs = _limit(load_split(cfg.dataset, "train", cfg.data_dir), cfg.max_train_conversations)
    dev_convs = _limit(load_split(cfg.dataset, "dev", cfg.data_dir), cfg.max_dev_conversations)
    tokenizer, encoder = _load_encoder(cfg)
    builder = PromptBuilder(
        tokenizer,
        context_turns=cfg.context_turns,
        max_length=cfg.max_length,
        template=cfg.prompt_template,
        speakers=cfg.speakers,
    )
    source, external = _anchor_texts(cfg, labels)
    head = ProjectionHead(
        encoder.config.hidden_size, cfg.proj_dim, **({} if cfg.dropout is None else {"dropout": cfg.dropout})
    )
    init_records = init_from_versions(encoder, head, cfg.init_from) if cfg.init_from else []
    anchor_enc = _AnchorEncoder(encoder, head, tokenizer, source.texts, external)
    model, train_ex, dev_ex, turn = _build_model(cfg, ctx, encoder, head, builder, labels, train_convs, dev_convs)
    model.to(device)
    anchor_enc.to(device)
    dropout_masks = resolve_dropout_masks(cfg.dropout_masks, device)
    use_dropout_masks(model, dropout_masks)  # the anchor encoder shares its encoder and head; an adapter has none
    attention = encoder.config._attn_implementation
    log.info("dropout draws %s masks (--dropout-masks %s); attention in training: %s", dropout_masks,
             cfg.dropout_masks, attention)  # fmt: skip
    log.info("train %d utterances (%d conversations), dev %d", len(train_ex), len(train_convs), len(dev_ex))
    with torch.no_grad():
        anchors_before = anchor_enc().float().cpu()  # (C, D)
    frozen = None
    if cfg.freeze_layers:
        prompts = [p for p, _ in train_ex]
        prefix = FrozenPrefix.split(encoder, cfg.freeze_layers, prompts[:8], tokenizer.pad_token_id or 0)
        hidden = prefix.cache(
            prompts, batch_size=cfg.eval_batch_size, cache_dir=run_dir if ctx.is_main else None, progress=ctx.is_main
        )
        frozen = _Frozen(prefix, hidden)
        log.info("layers 1-%d frozen: their output for %d prompts is cached", cfg.freeze_layers, len(prompts))
    teacher = None
    if cfg.distill_from is not None:
        teacher = teacher_probabilities(
            cfg.distill_from,
            train_convs,
            labels,
            device=device,
            batch_size=cfg.eval_batch_size,
            cache_dir=run_dir,
            write_cache=ctx.is_main,
        ).to(device)  # (N_train, C)
    return _Run(
        cfg,
        run_dir,
        labels,
        spec.neutral_label,
        device,
        dtype,
        cfg.encoder_path,
        tokenizer,
        encoder,
        builder,
        source,
        head,
        anchor_enc,
        model,
        train_ex,
        dev_ex,
        anchors_before,
        ctx,
        turn,
        dev_groups=[conv.id for conv in dev_convs for _ in conv.utterances],
        teacher=teacher,
        frozen=frozen,
        init_from=init_records,
        dropout_masks=dropout_masks,
        attention=attention,
    )


def _load_encoder(cfg: TrainConfig):
    """Tokenizer and encoder from the local folder; a set ``dropout`` replaces the encoder's own
    hidden and attention dropout (BERT-family config names)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.encoder_path, local_files_only=True)
    no_default = (
        {} if cfg.dropout is None else {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    )
    return tokenizer, AutoModel.from_pretrained(cfg.encoder_path, local_files_only=True, **no_default)


def _anchor_texts(cfg: TrainConfig, labels: list[str]):
    """Anchor texts (label words, LLM or file descriptions) and, optionally, their external embeddings."""
    wants_llm = cfg.anchors == "llm" or cfg.embeddings_model
    llm = LLMSettings.from_env(model=cfg.llm_model, base_url=cfg.llm_base_url) if wants_llm else None
    source = describe_emotions(cfg.anchors, labels, cfg.dataset, llm=llm, descriptions_file=cfg.descriptions)
    external = None
    if cfg.embeddings_model:
        external = embed_descriptions(source, embeddings_model=cfg.embeddings_model, llm=llm).float()
    return source, external


def _build_model(cfg: TrainConfig, ctx: DistContext, encoder, head, builder, labels, train_convs, dev_convs):
    """The architecture's model (anchors zero until stage 1 sets them) and its train/dev examples."""
    label_id = {label: i for i, label in enumerate(labels)}
    anchors = torch.zeros(len(labels), cfg.proj_dim)
    if cfg.architecture != "turn":
        model = EmotionModel(encoder, head, anchors)
        return model, build_examples(builder, train_convs, label_id), build_examples(builder, dev_convs, label_id), None
    if ctx.enabled:
        raise ConfigError("architecture='turn' trains in one process for now; run it without --nproc-per-node")
    settings = ContextSettings(
        hidden_size=encoder.config.hidden_size,
        context_turns=cfg.context_turns,
        layers=cfg.context_layers,
        heads=cfg.context_heads,
        ffn_dim=cfg.context_ffn_dim,
        dropout=cfg.context_dropout,
    )
    turn_model = TurnEmotionModel(encoder, ContextModel(settings), head, anchors)
    turn = TurnSplits(TurnData.build(builder, train_convs, label_id), TurnData.build(builder, dev_convs, label_id))
    return turn_model, turn.train.examples, turn.dev.examples, turn


def _class_weights(cfg: TrainConfig, train_ex: list[tuple[Prompt, int]], n_classes: int) -> torch.Tensor | None:
    if cfg.class_weighting == "none":
        return None
    w = torch.tensor(inverse_frequency([y for _, y in train_ex], n_classes))  # (C,), 1 for a balanced split
    return w.sqrt() if cfg.class_weighting == "sqrt_inverse" else w


def _optimizer(run: _Run) -> _Optim:
    """AdamW with decay off for biases and norms, linear warmup and decay (transformers' schedule)."""
    from transformers import get_linear_schedule_with_warmup

    cfg = run.cfg
    adapter = run.anchor_enc.adapter
    head_params = list(run.head.parameters()) + (list(adapter.parameters()) if adapter is not None else [])
    groups = param_groups(cfg, run.encoder, head_params)
    steps_per_epoch = math.ceil(len(run.train_ex) / cfg.batch_size)
    if isinstance(run.model, TurnEmotionModel):
        assert run.turn is not None
        context_params = list(run.model.context.parameters())
        lr = cfg.context_lr if cfg.context_lr is not None else cfg.head_lr
        groups.append({"params": context_params, "lr": lr, "weight_decay": cfg.weight_decay})
        head_params = head_params + context_params  # clipped with the rest
        steps_per_epoch = run.turn.train.steps_per_epoch(cfg.batch_size, cfg.sampler)
    opt = adamw(groups, run.device)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = get_linear_schedule_with_warmup(opt, int(total_steps * cfg.warmup_ratio), total_steps)
    fp16_cuda = run.device.type == "cuda" and run.dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda") if fp16_cuda else None
    weights = _class_weights(cfg, run.train_ex, len(run.labels))
    return _Optim(
        opt,
        sched,
        scaler,
        [p for p in run.encoder.parameters() if p.requires_grad] + head_params,
        None if weights is None else weights.to(run.device),
        _train_net(run),
    )


def param_groups(cfg: TrainConfig, encoder: torch.nn.Module, head_params: list[torch.nn.Parameter]) -> list[dict]:
    """AdamW's groups for the encoder's trained parameters (not --freeze-layers' ones: decay off for
    biases and norms) and the head's; the benchmarks step the same groups."""
    named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not _no_decay(n)], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if _no_decay(n)], "lr": cfg.lr, "weight_decay": 0.0},
        {"params": head_params, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ]


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "norm" in name.lower()


def _save_checkpoint(run: _Run, optim: _Optim, progress: Progress, batch_rng: random.Random) -> None:
    if not run.dist.is_main:  # every rank holds the same weights and optimizer state; rank 0 writes them
        return
    state = {
        "model": run.model.state_dict(),
        "anchor_adapter": run.anchor_enc.adapter.state_dict() if run.anchor_enc.adapter is not None else {},
        "optimizer": optim.opt.state_dict(),
        "scheduler": optim.sched.state_dict(),
        "scaler": optim.scaler.state_dict() if optim.scaler is not None else {},
        "rng": capture_rng(batch_rng),
        "progress": progress.to_state(),
    }
    save_atomic(state, run.run_dir / CHECKPOINT_FILE)


def _restore_checkpoint(run: _Run, optim: _Optim, ckpt: dict, batch_rng: random.Random) -> Progress:
    run.model.load_state_dict(ckpt["model"])
    if run.anchor_enc.adapter is not None:
        run.anchor_enc.adapter.load_state_dict(ckpt["anchor_adapter"])
    optim.opt.load_state_dict(ckpt["optimizer"])
    optim.sched.load_state_dict(ckpt["scheduler"])
    if optim.scaler is not None and ckpt["scaler"]:
        optim.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"], batch_rng)
    progress = Progress.from_state(ckpt["progress"])
    log.info(
        "resumed %s at epoch %d, batch %d (step %d)",
        run.run_dir,
        progress.epoch,
        progress.batch_pos,
        progress.global_step,
    )
    return progress


def _stage1(run: _Run, ckpt: dict | None, *, progress: bool, stop: StopFlag) -> Progress:
    """Stage 1 epochs with dev selection; checkpoints every N steps and at each epoch end."""
    cfg = run.cfg
    optim = _optimizer(run)
    batch_rng = random.Random(cfg.seed)
    state = _restore_checkpoint(run, optim, ckpt, batch_rng) if ckpt is not None else Progress()
    run.adamw = adamw_kind(optim.opt)
    if ckpt is not None and run.dist.rank > 0:  # the checkpoint holds rank 0's streams: draw other dropout masks
        seed_rank(cfg.seed + 1_000_003 * state.global_step, run.dist)
    _note_precision(run, state)
    lengths = [len(p) for p, _ in run.train_ex]
    labels = [y for _, y in run.train_ex]
    while state.epoch <= cfg.epochs:
        if state.batches is None and run.turn is not None:  # whole conversations, up to batch_size turns
            state.batches = run.turn.train.batches(cfg.batch_size, batch_rng, cfg.sampler)
        if state.batches is None:
            state.batches = _window_batches(lengths, labels, len(run.labels), cfg.batch_size, batch_rng, cfg.sampler)
        check_same(state.batches, run.dist, f"the global batches of epoch {state.epoch}")
        _train_epoch(run, optim, state, batch_rng, progress=progress, stop=stop)
        _end_epoch(run, state, progress=progress)
        _save_checkpoint(run, optim, state, batch_rng)
    return state


def _note_precision(run: _Run, state: Progress) -> None:
    """Record the precision this stretch of stage 1 trains in; warn when a resume changed it."""
    dtype = str(run.dtype).replace("torch.", "")
    if state.precisions and state.precisions[-1]["dtype"] == dtype:
        return
    if state.precisions:
        before = state.precisions[-1]["dtype"]
        log.warning(
            "this run trained in %s up to step %d; here dtype=%s resolves to %s, so it goes on in %s "
            "(the manifest records both; to keep one precision, resume on a machine like the first)",
            before,
            state.global_step,
            run.cfg.dtype,
            dtype,
            dtype,
        )
    elif state.global_step:  # a checkpoint written before precisions were recorded: that stretch is unknown
        state.precisions.append({"dtype": "unknown", "from_step": 0})
    state.precisions.append({"dtype": dtype, "from_step": state.global_step})


def _train_epoch(
    run: _Run, optim: _Optim, state: Progress, batch_rng: random.Random, *, progress: bool, stop: StopFlag
) -> None:
    cfg = run.cfg
    assert state.batches is not None
    run.model.train()
    run.anchor_enc.train()
    if run.frozen is not None:  # no dropout in the frozen layers: the anchor texts see them as the cache did
        run.frozen.prefix.lower.eval()
    todo = state.batches[state.batch_pos :]
    bar = tqdm(
        total=len(state.batches),
        initial=state.batch_pos,
        desc=f"stage 1 epoch {state.epoch}/{cfg.epochs}",
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    )
    seen = sum(run.utterances(b) for b in state.batches[: state.batch_pos])
    for batch_idx in todo:
        ticks0, t0 = read_cpu_ticks(), time.perf_counter()
        parts = _train_step(run, optim, shard_batch(batch_idx, run.dist.rank, run.dist.world_size))
        state.epoch_train_s += time.perf_counter() - t0
        ticks1 = read_cpu_ticks()
        if ticks0 is not None and ticks1 is not None:
            state.epoch_cpu_busy_ticks += ticks1.busy - ticks0.busy
            state.epoch_cpu_steal_ticks += ticks1.steal - ticks0.steal
        state.batch_pos += 1
        state.global_step += 1
        seen += run.utterances(batch_idx)
        for k, v in parts.items():
            state.running[k] = 0.9 * state.running.get(k, v) + 0.1 * v
        bar.update(1)
        steal = steal_share(state.epoch_cpu_busy_ticks, state.epoch_cpu_steal_ticks)
        bar.set_postfix(
            loss=f"{state.running['loss']:.3f}",
            ce=f"{state.running['ce']:.3f}",
            sup=f"{state.running['sup']:.3f}",
            utt_s=f"{seen / max(state.epoch_train_s, 1e-9):.1f}",
            **({"steal": f"{steal:.0%}"} if steal is not None else {}),
        )
        every = cfg.checkpoint_every_steps
        if every and state.global_step % every == 0:
            _save_checkpoint(run, optim, state, batch_rng)
        # Every rank stops at the same step (one of them got the signal), or the others would wait in a collective.
        if any_rank(stop.should_stop(state.global_step), run.dist):
            _save_checkpoint(run, optim, state, batch_rng)
            bar.close()
            raise TrainingInterrupted(
                f"stopped at epoch {state.epoch}, batch {state.batch_pos} (step {state.global_step}); "
                f"resume with: erc-train fit --resume {run.run_dir}"
            )
    bar.close()


def _train_step(run: _Run, optim: _Optim, shard: BatchShard) -> dict[str, float]:
    """One optimizer step on one global batch (this rank runs ``shard``); returns the loss parts for the log.

    The loss is computed on every rank over the whole global batch: the representations of every
    rank are gathered with gradients, so SupCon compares each utterance with all the others.
    """
    cfg, device = run.cfg, run.device
    if run.turn is not None:  # shard.batch: whole conversations, every turn of them encoded once
        with _autocast(device, run.dtype):
            reps, y, anchors = optim.net(list(shard.batch))  # (B, D) every turn, (B,), (C, D)
    else:
        y = torch.tensor([run.train_ex[i][1] for i in shard.batch], device=device)  # (B,) the global batch
        batch = _window_batch(run, list(shard.indices), device)
        with _autocast(device, run.dtype):
            local_reps, anchors = optim.net(**batch)  # (b, D) this rank's rows, (C, D)
        reps = gather_rows(local_reps, shard, run.dist)  # (B, D) every rank's rows, in batch order
    loss, parts = stage1_loss(
        reps.float(),
        y,
        anchors.float(),
        temperature=cfg.temperature,
        lambda1=cfg.lambda1,
        lambda2=cfg.lambda2,
        class_weights=optim.class_weights,
    )
    if run.teacher is not None and cfg.distill_weight > 0:
        rows = run.turn.train.turns_of(shard.batch) if run.turn is not None else list(shard.batch)
        student = cosine_logits(reps.float(), anchors.float(), cfg.temperature)  # (B, C)
        kd = distillation_loss(student, run.teacher[rows])
        loss = loss + cfg.distill_weight * kd
        parts = {**parts, "loss": float(loss.detach()), "kd": float(kd.detach())}
    if cfg.triplet_weight > 0:
        triplet = triplet_loss(reps, y, cfg.triplet_margin, cfg.triplet_mining)
        loss = loss + cfg.triplet_weight * triplet
        parts = {**parts, "loss": float(loss.detach()), "triplet": float(triplet.detach())}
    optim.opt.zero_grad(set_to_none=True)
    if optim.scaler is not None:
        optim.scaler.scale(loss).backward()
        optim.scaler.unscale_(optim.opt)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(optim.params, cfg.max_grad_norm)
    if optim.scaler is not None:
        optim.scaler.step(optim.opt)
        optim.scaler.update()
    else:
        optim.opt.step()
    optim.sched.step()
    return parts


def _end_epoch(run: _Run, state: Progress, *, progress: bool) -> None:
    """Dev evaluation on rank 0 while the other ranks wait; move on to the next epoch."""
    if run.dist.is_main:
        _evaluate_epoch(run, state, progress=progress)
    barrier(run.dist, f"rank 0's dev evaluation of epoch {state.epoch}")
    state.epoch += 1
    state.batch_pos, state.batches, state.epoch_train_s, state.running = 0, None, 0.0, {}
    state.epoch_cpu_busy_ticks = state.epoch_cpu_steal_ticks = 0


def _evaluate_epoch(run: _Run, state: Progress, *, progress: bool) -> None:
    """Dev evaluation and the epoch's history row; keep the best epoch's weights in best.pt."""
    run.model.eval()
    run.anchor_enc.eval()
    with torch.no_grad():
        anchors_now = run.anchor_enc().float()  # (C, D)
    m = run.dev_metrics(anchors_now, progress)
    n_train = sum(run.utterances(b) for b in state.batches or [])
    utt_s = n_train / max(state.epoch_train_s, 1e-9)
    steal = steal_share(state.epoch_cpu_busy_ticks, state.epoch_cpu_steal_ticks)
    state.history.append(
        {
            "epoch": state.epoch,
            "train_s": round(state.epoch_train_s, 1),
            "utt_per_s": round(utt_s, 2),
            "cpu_steal": None if steal is None else round(steal, 4),
            "dev_weighted_f1": m["weighted_f1"],
            "dev_macro_f1": m["macro_f1"],
            **{f"loss_{k}": round(v, 4) for k, v in state.running.items()},
        }
    )
    log.info("epoch %d: dev weighted F1 %.4f (%.1f utt/s)", state.epoch, m["weighted_f1"], utt_s)
    if steal is not None and steal >= STEAL_WARN_SHARE:
        log.warning(
            "epoch %d: the hypervisor withheld %.0f%% of the CPU time this machine asked for during training "
            "(steal in /proc/stat): its %.1f utt/s measure the host as much as this code",
            state.epoch,
            100 * steal,
            utt_s,
        )
    if progress:
        tqdm.write(
            f"epoch {state.epoch}: dev weighted F1 {m['weighted_f1']:.4f}  macro F1 {m['macro_f1']:.4f}  "
            f"({utt_s:.1f} utt/s)"
        )
    if m["weighted_f1"] > state.best_f1:
        state.best_f1, state.best_epoch = m["weighted_f1"], state.epoch
        save_atomic({"model": run.model.state_dict(), "anchors": anchors_now.cpu()}, run.run_dir / BEST_FILE)


def _load_best(run: _Run, state: Progress) -> torch.Tensor:
    """Put the best stage-1 epoch's weights in the model; its anchors, or the text anchors if no epoch ran."""
    run.model.eval()
    if state.best_epoch == 0:
        return run.anchors_before.to(run.device)
    best = load_file(run.run_dir / BEST_FILE)
    run.model.load_state_dict(best["model"])
    return best["anchors"].to(run.device)


def _publish(
    run: _Run, state: Progress, anchors: torch.Tensor, stage2_info: dict, t_start: float, progress: bool
) -> FitResult:
    """Final dev evaluation, manifest and report, atomic publish into the store."""
    cfg = run.cfg
    dev_metrics, dev_pred = run.dev_predictions(anchors, progress, desc="final dev")
    dev_gold = [y for _, y in run.dev_ex]
    calibration = calibrate(dev_pred.scores, dev_gold, run.dev_groups, cfg.temperature)
    log.info("confidence temperature %.4f (tau %g): dev ECE %.4f -> %.4f", calibration.temperature, cfg.temperature,
             calibration.ece_before, calibration.ece_after)  # fmt: skip
    if calibration.warning:
        log.warning("%s", calibration.warning)
    wall_s = time.perf_counter() - t_start
    version = str(cfg.version)
    manifest = _manifest_core(cfg, run.labels, run.builder, run.source, run.enc_path)
    context = run.model.context if isinstance(run.model, TurnEmotionModel) else None
    if context is not None:
        manifest["context_model"] = context.settings.to_manifest()
    manifest["metrics"] = {"dev": _headline(dev_metrics)}
    manifest["calibration"] = calibration.to_manifest()
    manifest["training"] = {
        "config": cfg.to_json(),
        "device": str(run.device),
        "dtype": str(run.dtype).replace("torch.", ""),
        "precisions": state.precisions,  # more than one: a resume went on in another precision
        "processes": run.dist.world_size,  # torchrun world size; batch_size is the global batch
        "backend": run.dist.backend,  # gloo, nccl, or None for one process
        "adamw": run.adamw,  # absent: trained before session 35, in the loop
        "dropout_masks": run.dropout_masks,  # absent: trained before session 36, bernoulli
        "attention": run.attention,  # absent: trained before session 37, the encoder's own (sdpa or eager)
        "best_epoch": state.best_epoch,
        "history": state.history,
        "stage2": stage2_info,
        **({"init_from": run.init_from} if run.init_from else {}),
        "wall_s": round(wall_s, 1),
        "train_utterances": len(run.train_ex),
        "dev_utterances": len(run.dev_ex),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        write_report(
            report,
            {"dev": dev_metrics},
            run.labels,
            anchors_before=run.anchors_before,
            anchors_after=anchors.cpu(),
            history=state.history,
            title=f"{cfg.dataset} {version}",
        )
        # The reliability diagram, and what alerting on one emotion buys with the confidence this version serves.
        draw_confidence_report(report, dev_pred.scores, dev_gold, dev_pred.label_ids, calibration, run.labels,
                               f"{cfg.dataset} {version} dev")  # fmt: skip
        path = publish_version(
            cfg.store,
            version=version,
            encoder=run.encoder,
            tokenizer=run.tokenizer,
            head_state=run.head.state_dict(),
            anchors=anchors,
            manifest=manifest,
            report_dir=report,
            make_current=cfg.make_current,
            channel=cfg.channel,
            context_state=context.state_dict() if context is not None else None,
            weights_dtype=cfg.weights_dtype,
        )
    return FitResult(version=version, path=path, metrics=dev_metrics, wall_s=wall_s, best_epoch=state.best_epoch)


def _adapt_anchors(
    cfg, model, builder, train_ex, dev_ex, anchors0, labels, neutral, progress, turn=None, frozen=None,
    run_dir: Path | None = None, stop: StopFlag | None = None,
):  # fmt: skip
    """Stage 2: frozen encoder; fit anchors on cached representations, pick the best on dev.

    ``turn``: (TurnPredictor, TurnSplits) of a turn run, whose representations come from cached
    turn vectors and the context model rather than from window prompts. ``frozen``: a
    --freeze-layers run's cache, from which the training representations are computed (the top
    layers only). ``run_dir``: where a window run keeps the train and dev representations
    (STAGE2_REPS_FILE; encoding all of train again is most of stage 2's time, 15-20 minutes for a
    110M encoder on a 2-core CPU), so that a run stopped in stage 2 resumes without it.
    ``stop``: checked once the representations are kept and after every anchor epoch; stage 2
    then starts over on resume, which gives the same anchors (its only randomness is a generator
    seeded from the config). A class-weighted run (``cfg.class_weighting``) weights this
    cross-entropy as it weighted stage 1's.
    """
    device = anchors0.device
    reps_file = run_dir / STAGE2_REPS_FILE if run_dir is not None and turn is None else None

    def reps_of(examples, desc, cache=None):  # cache: the frozen-layer output of these examples
        out = []
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        chunks = [order[i : i + cfg.eval_batch_size] for i in range(0, len(order), cfg.eval_batch_size)]
        with torch.inference_mode():
            for ch in tqdm(chunks, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
                batch = {
                    k: v.to(device)
                    for k, v in pad_batch([examples[i][0] for i in ch], builder.tokenizer.pad_token_id or 0).items()
                }
                if cache is None:
                    reps = model.represent(**batch)  # (b, D)
                else:
                    hidden, mask = cache.batch(ch, device)  # (b, T, H), (b, T)
                    h_mask = cache.prefix.top_mask(
                        hidden, mask, batch["mask_index"], mask_rows_only=model.mask_rows_only
                    )  # (b, H)
                    reps = model.head(h_mask)  # (b, D)
                out.append((ch, reps.float()))
        reps = torch.empty(len(examples), out[0][1].shape[1], device=device)
        for ch, r in out:
            reps[torch.tensor(ch, device=device)] = r
        return reps  # (N, D)

    if turn is not None:
        predictor, splits = turn
        train_r = turn_representations(predictor, splits.train, cfg.eval_batch_size).to(device)  # (N, D)
        dev_r = turn_representations(predictor, splits.dev, cfg.eval_batch_size).to(device)
    else:
        fingerprint = _reps_fingerprint(model, train_ex, dev_ex) if reps_file is not None else ""
        kept = _read_stage2_reps(reps_file, fingerprint, device)
        if kept is not None:
            train_r, dev_r = kept
            log.info("stage 2: train and dev representations read from %s", reps_file)
        else:
            train_r = reps_of(train_ex, "stage 2: train representations", frozen)
            dev_r = reps_of(dev_ex, "stage 2: dev representations")
            if reps_file is not None:
                save_atomic({"fingerprint": fingerprint, "train": train_r.cpu(), "dev": dev_r.cpu()}, reps_file)
    _stop_in_stage2(stop, 0, run_dir, reps_file)
    train_y = torch.tensor([y for _, y in train_ex], device=device)
    dev_y = [y for _, y in dev_ex]
    # The class weights of stage 1's cross-entropy: without them stage 2 pulls the anchors back
    # towards the frequent classes (session 21: a class-weighted mpnet-base run's rare classes).
    class_weights = _class_weights(cfg, train_ex, len(labels))
    if class_weights is not None:
        class_weights = class_weights.to(device)
    anchors = nn.Parameter(anchors0.detach().clone())
    opt = torch.optim.Adam([anchors], lr=cfg.stage2_lr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    def dev_f1(a):
        with torch.no_grad():
            pred = (F.normalize(dev_r, dim=-1) @ F.normalize(a, dim=-1).T).argmax(1).tolist()
        return compute_metrics(dev_y, pred, labels, neutral)["weighted_f1"]

    best_f1, best_a, best_epoch = dev_f1(anchors0), anchors0.detach().clone(), 0
    start_f1 = best_f1
    bar = tqdm(
        range(1, cfg.stage2_epochs + 1), desc="stage 2 anchors", unit="epoch", disable=not progress, dynamic_ncols=True
    )
    for epoch in bar:
        perm = torch.randperm(len(train_r), generator=gen).to(device)
        for i in range(0, len(perm), 256):
            idx = perm[i : i + 256]
            loss = anchor_adaptation_loss(train_r[idx], train_y[idx], anchors, cfg.temperature, class_weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        f1 = dev_f1(anchors.detach())
        bar.set_postfix(loss=f"{loss.item():.3f}", dev_wf1=f"{f1:.4f}")
        if f1 > best_f1:
            best_f1, best_a, best_epoch = f1, anchors.detach().clone(), epoch
        _stop_in_stage2(stop, epoch, run_dir, reps_file)
    return best_a, {
        "enabled": True,
        "epochs": cfg.stage2_epochs,
        "best_epoch": best_epoch,
        "dev_weighted_f1_before": round(start_f1, 4),
        "dev_weighted_f1_after": round(best_f1, 4),
        **({"class_weighting": cfg.class_weighting} if class_weights is not None else {}),
    }


def _reps_fingerprint(model: nn.Module, *example_sets) -> str:
    """sha256 of what stage 2's representations depend on: every weight of the model and every prompt."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for examples in example_sets:
        h.update(b"|")
        for prompt, y in examples:
            h.update(torch.tensor([*prompt.input_ids, -1, prompt.mask_index, y]).numpy().tobytes())
    return h.hexdigest()


def _read_stage2_reps(path: Path | None, fingerprint: str, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kept (train, dev) representations if ``path`` holds them for this model and these prompts."""
    if path is None or not path.is_file():
        return None
    kept = load_file(path)
    if kept.get("fingerprint") != fingerprint:
        log.info("stage 2: %s was made by other weights or prompts; encoding again", path)
        return None
    return kept["train"].to(device), kept["dev"].to(device)


def _stop_in_stage2(stop: StopFlag | None, epoch: int, run_dir: Path | None, reps_file: Path | None) -> None:
    if stop is not None and stop.should_stop_stage2(epoch):
        kept = f"; the representations are kept in {reps_file}" if reps_file is not None else ""
        raise TrainingInterrupted(
            f"stopped in stage 2 after {epoch} anchor epochs (stage 2 starts over on resume{kept}); "
            f"resume with: erc-train fit --resume {run_dir if run_dir is not None else 'RUN_DIR'}"
        )


def _manifest_core(cfg: TrainConfig, labels, builder: PromptBuilder, source, enc_path: Path) -> dict:
    return {
        "dataset": cfg.dataset,
        "architecture": cfg.architecture,
        "labels": list(labels),
        "prompt": {
            "template": builder.template,
            "speakers": builder.speakers,
            "context_turns": builder.context_turns,
            "max_length": builder.max_length,
            "normalization": NORMALIZATION,
        },
        "temperature": cfg.temperature,
        "encoder": {
            "id": enc_path.name if enc_path.name != "model" else enc_path.parent.name,
            "source": str(enc_path),
            "name": cfg.encoder,
        },
        "head": {"proj_dim": cfg.proj_dim, "activation": "gelu"},
        "anchors": {
            **json.loads(json.dumps(source.provenance, default=str)),
            "mode": source.mode,
            "descriptions": dict(source.descriptions),
            "embeddings_model": cfg.embeddings_model,
        },
        "losses": {
            "lambda1": cfg.lambda1,
            "lambda2": cfg.lambda2,
            "temperature": cfg.temperature,
            "stage2": cfg.stage2,
            "triplet": (
                {"weight": cfg.triplet_weight, "margin": cfg.triplet_margin, "mining": cfg.triplet_mining}
                if cfg.triplet_weight > 0
                else None
            ),
            "sampler": cfg.sampler,
        },
    }


def _headline(m: dict) -> dict:
    keys = (
        "weighted_f1",
        "macro_f1",
        "accuracy",
        "mcc",
        "per_class_f1",
        "micro_f1_no_neutral",
        "macro_f1_no_neutral",
        "support",
    )
    return {k: m[k] for k in keys if k in m}
