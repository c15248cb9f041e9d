"""EACL training: stage 1 (encoder + head + anchors) and stage 2 (anchor adaptation), then publish.

Stage 1 anchors are computed at every step from the anchor texts (label word or description):
the live encoder mean-pools the text and the same projection head maps it into the
representation space, as in EACL. When the texts were embedded by an external endpoint,
a linear adapter maps those fixed vectors to the encoder width before the shared head.

Stage 2 freezes the encoder: every training representation is computed once, then the
anchors alone are fitted with cross-entropy over cos(r, a)/tau and chosen on dev.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from erc_stream.artifact import new_version_name, publish_version
from erc_stream.model import (
    EmotionModel,
    Predictor,
    ProjectionHead,
    default_encoder_path,
    resolve_device,
    resolve_dtype,
)
from erc_stream.prompt import Prompt, PromptBuilder, pad_batch
from trainer.anchors import LLMSettings, describe_emotions, embed_descriptions
from trainer.config import TrainConfig
from trainer.datasets import DATASETS, Conversation, load_split
from trainer.evaluate import build_examples, compute_metrics, predict_examples, write_report
from trainer.losses import anchor_adaptation_loss, stage1_loss

__all__ = ["fit", "FitResult"]

log = logging.getLogger(__name__)


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

    def forward(self) -> torch.Tensor:
        if self.adapter is not None:
            return self.head(self.adapter(self.external.to(self.adapter.weight.device)))  # (C, D)
        hidden = self.encoder(input_ids=self.ids, attention_mask=self.mask).last_hidden_state  # (C, L, H)
        m = self.mask.unsqueeze(-1).to(hidden.dtype)  # (C, L, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (C, H)
        return self.head(pooled)  # (C, D)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _length_sorted_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort by length inside chunks of 50 batches, then shuffle the batches.

    Batches hold prompts of similar length (little padding) while the order stays random.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), chunk):
        part = sorted(idx[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def _limit(convs: list[Conversation], n: int | None) -> list[Conversation]:
    return convs if n is None else convs[:n]


def fit(cfg: TrainConfig, *, progress: bool = True) -> FitResult:
    """Train on the dataset's train split, select on dev, evaluate, publish into cfg.store."""
    from transformers import AutoModel, AutoTokenizer

    t_start = time.perf_counter()
    _seed_everything(cfg.seed)
    spec = DATASETS[cfg.dataset]
    labels = list(spec.labels)
    label_id = {l: i for i, l in enumerate(labels)}
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    log.info("training on %s with %s", device, dtype)

    train_convs = _limit(load_split(cfg.dataset, "train", cfg.data_dir), cfg.max_train_conversations)
    dev_convs = _limit(load_split(cfg.dataset, "dev", cfg.data_dir), cfg.max_dev_conversations)

    enc_path = Path(cfg.encoder) if cfg.encoder else default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(enc_path, local_files_only=True)
    encoder = AutoModel.from_pretrained(enc_path, local_files_only=True)
    builder = PromptBuilder(
        tokenizer, context_turns=cfg.context_turns, max_length=cfg.max_length, template=cfg.template
    )

    # Anchor texts (label words, LLM or file descriptions) and, optionally, external embeddings.
    llm = (
        LLMSettings.from_env(model=cfg.llm_model, base_url=cfg.llm_base_url)
        if cfg.anchors == "llm" or cfg.embeddings_model
        else None
    )
    source = describe_emotions(cfg.anchors, labels, cfg.dataset, llm=llm, descriptions_file=cfg.descriptions)
    external = None
    if cfg.embeddings_model:
        external = embed_descriptions(source, embeddings_model=cfg.embeddings_model, llm=llm).float()

    head = ProjectionHead(encoder.config.hidden_size, cfg.proj_dim)
    anchor_enc = _AnchorEncoder(encoder, head, tokenizer, source.texts, external)
    model = EmotionModel(encoder, head, torch.zeros(len(labels), cfg.proj_dim))
    model.to(device)
    anchor_enc.to(device)

    train_ex = build_examples(builder, train_convs, label_id)
    dev_ex = build_examples(builder, dev_convs, label_id)
    log.info("train %d utterances (%d conversations), dev %d", len(train_ex), len(train_convs), len(dev_ex))

    with torch.no_grad():
        anchors_before = anchor_enc().float().cpu()

    # ---- stage 1 ----
    enc_params = list(encoder.parameters())
    head_params = list(head.parameters()) + ([p for p in anchor_enc.adapter.parameters()] if anchor_enc.adapter else [])
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n or "norm" in n.lower()  # noqa: E731
    groups = [
        {
            "params": [p for n, p in encoder.named_parameters() if not no_decay(n)],
            "lr": cfg.lr,
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in encoder.named_parameters() if no_decay(n)], "lr": cfg.lr, "weight_decay": 0.0},
        {"params": head_params, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ]
    opt = torch.optim.AdamW(groups)
    rng = random.Random(cfg.seed)
    lengths = [len(p) for p, _ in train_ex]
    steps_per_epoch = math.ceil(len(train_ex) / cfg.batch_size)
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    warmup = int(total_steps * cfg.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None

    def current_predictor(anchors: torch.Tensor) -> Predictor:
        eval_model = EmotionModel(encoder, head, anchors.to(device))
        manifest = _manifest_core(cfg, labels, builder, source, enc_path)
        manifest["version"] = "in-training"
        return Predictor(
            eval_model.eval(), builder, manifest, device, torch.float32 if dtype != torch.float16 else dtype
        )

    best = {"f1": -1.0, "epoch": 0, "state": None, "anchor_state": None}
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        anchor_enc.train()
        batches = _length_sorted_batches(lengths, cfg.batch_size, rng)
        bar = tqdm(
            batches, desc=f"stage 1 epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress, dynamic_ncols=True
        )
        seen, t_epoch, running = 0, time.perf_counter(), {}
        for batch_idx in bar:
            prompts = [train_ex[i][0] for i in batch_idx]
            y = torch.tensor([train_ex[i][1] for i in batch_idx], device=device)
            batch = {k: v.to(device) for k, v in pad_batch(prompts, tokenizer.pad_token_id or 0).items()}
            with _autocast(device, dtype):
                reps = model.represent(**batch)  # (B, D)
                anchors = anchor_enc()  # (C, D)
            loss, parts = stage1_loss(
                reps.float(), y, anchors.float(), temperature=cfg.temperature, lambda1=cfg.lambda1, lambda2=cfg.lambda2
            )
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(enc_params + head_params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            seen += len(batch_idx)
            for k, v in parts.items():
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            bar.set_postfix(
                loss=f"{running['loss']:.3f}",
                ce=f"{running['ce']:.3f}",
                sup=f"{running['sup']:.3f}",
                utt_s=f"{seen / (time.perf_counter() - t_epoch):.1f}",
            )
        bar.close()
        train_s = time.perf_counter() - t_epoch
        model.eval()
        anchor_enc.eval()
        with torch.no_grad():
            anchors_now = anchor_enc().float()
        dev_pred = predict_examples(
            current_predictor(anchors_now), dev_ex, batch_size=cfg.eval_batch_size, progress=progress, desc="dev"
        )
        m = compute_metrics([y for _, y in dev_ex], dev_pred.label_ids.tolist(), labels, spec.neutral_label)
        history.append(
            {
                "epoch": epoch,
                "train_s": round(train_s, 1),
                "utt_per_s": round(len(train_ex) / train_s, 2),
                "dev_weighted_f1": m["weighted_f1"],
                "dev_macro_f1": m["macro_f1"],
                **{f"loss_{k}": round(v, 4) for k, v in running.items()},
            }
        )
        log.info("epoch %d: dev weighted F1 %.4f (%.1f utt/s)", epoch, m["weighted_f1"], len(train_ex) / train_s)
        if progress:
            tqdm.write(
                f"epoch {epoch}: dev weighted F1 {m['weighted_f1']:.4f}  macro F1 {m['macro_f1']:.4f}  ({len(train_ex) / train_s:.1f} utt/s)"
            )
        if m["weighted_f1"] > best["f1"]:
            best.update(
                f1=m["weighted_f1"],
                epoch=epoch,
                state=copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}),
                anchor_state=anchors_now.cpu().clone(),
            )

    if best["state"] is not None:
        model.load_state_dict(best["state"])
        stage1_anchors = best["anchor_state"].to(device)
    else:  # epochs == 0: the untrained encoder with its text anchors
        stage1_anchors = anchors_before.to(device)
    model.eval()

    # ---- stage 2 ----
    final_anchors = stage1_anchors
    stage2_info: dict = {"enabled": cfg.stage2}
    if cfg.stage2 and cfg.stage2_epochs > 0:
        final_anchors, stage2_info = _adapt_anchors(
            cfg, model, builder, train_ex, dev_ex, stage1_anchors, labels, spec.neutral_label, progress
        )

    # ---- evaluate and publish ----
    predictor = current_predictor(final_anchors)
    dev_pred = predict_examples(predictor, dev_ex, batch_size=cfg.eval_batch_size, progress=progress, desc="final dev")
    dev_metrics = compute_metrics([y for _, y in dev_ex], dev_pred.label_ids.tolist(), labels, spec.neutral_label)
    wall_s = time.perf_counter() - t_start
    version = cfg.version or new_version_name(cfg.dataset)
    manifest = _manifest_core(cfg, labels, builder, source, enc_path)
    manifest["metrics"] = {"dev": _headline(dev_metrics)}
    manifest["training"] = {
        "config": cfg.to_json(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "best_epoch": best["epoch"],
        "history": history,
        "stage2": stage2_info,
        "wall_s": round(wall_s, 1),
        "train_utterances": len(train_ex),
        "dev_utterances": len(dev_ex),
    }
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        write_report(
            report,
            {"dev": dev_metrics},
            labels,
            anchors_before=anchors_before,
            anchors_after=final_anchors.cpu(),
            history=history,
            title=f"{cfg.dataset} {version}",
        )
        path = publish_version(
            cfg.store,
            version=version,
            encoder=encoder,
            tokenizer=tokenizer,
            head_state=head.state_dict(),
            anchors=final_anchors,
            manifest=manifest,
            report_dir=report,
            make_current=cfg.make_current,
        )
    return FitResult(version=version, path=path, metrics=dev_metrics, wall_s=wall_s, best_epoch=best["epoch"])


def _adapt_anchors(cfg, model, builder, train_ex, dev_ex, anchors0, labels, neutral, progress):
    """Stage 2: frozen encoder; fit anchors on cached representations, pick the best on dev."""
    device = anchors0.device

    def reps_of(examples, desc):
        out = []
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        chunks = [order[i : i + cfg.eval_batch_size] for i in range(0, len(order), cfg.eval_batch_size)]
        with torch.inference_mode():
            for ch in tqdm(chunks, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
                batch = {
                    k: v.to(device)
                    for k, v in pad_batch([examples[i][0] for i in ch], builder.tokenizer.pad_token_id or 0).items()
                }
                out.append((ch, model.represent(**batch).float()))
        reps = torch.empty(len(examples), out[0][1].shape[1], device=device)
        for ch, r in out:
            reps[torch.tensor(ch, device=device)] = r
        return reps  # (N, D)

    train_r = reps_of(train_ex, "stage 2: train representations")
    dev_r = reps_of(dev_ex, "stage 2: dev representations")
    train_y = torch.tensor([y for _, y in train_ex], device=device)
    dev_y = [y for _, y in dev_ex]
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
            loss = anchor_adaptation_loss(train_r[idx], train_y[idx], anchors, cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        f1 = dev_f1(anchors.detach())
        bar.set_postfix(loss=f"{loss.item():.3f}", dev_wf1=f"{f1:.4f}")
        if f1 > best_f1:
            best_f1, best_a, best_epoch = f1, anchors.detach().clone(), epoch
    return best_a, {
        "enabled": True,
        "epochs": cfg.stage2_epochs,
        "best_epoch": best_epoch,
        "dev_weighted_f1_before": round(start_f1, 4),
        "dev_weighted_f1_after": round(best_f1, 4),
    }


def _manifest_core(cfg: TrainConfig, labels, builder: PromptBuilder, source, enc_path: Path) -> dict:
    return {
        "dataset": cfg.dataset,
        "labels": list(labels),
        "prompt": {
            "template": builder.template,
            "context_turns": builder.context_turns,
            "max_length": builder.max_length,
            "normalization": "erc_stream.prompt.normalize_text v1",
        },
        "temperature": cfg.temperature,
        "encoder": {"id": enc_path.name if enc_path.name != "model" else enc_path.parent.name, "source": str(enc_path)},
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
