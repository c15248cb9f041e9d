"""A frozen lower encoder whose outputs are computed once: train only the top layers.

``erc-train fit --freeze-layers N`` keeps the encoder's embeddings and its first N transformer
layers fixed. Their output for a training prompt never changes, so it is computed once per
prompt (``FrozenPrefix.cache``) and every step runs only the top layers on it. On a CPU this
is what makes a 110M encoder trainable in one session: with 9 of mpnet-base's 12 layers frozen
a step costs about a quarter of a full one, and the cache pass costs one partial forward.

The split reuses the encoder's own modules. ``lower`` is the encoder with its layer list cut
to the first N layers; ``upper`` is a model of the same family whose embeddings pass their input
through and whose layer list is the remaining layers (the same Parameter objects, so training
``upper`` trains the published encoder). Whatever else the encoder module holds (mpnet's
relative position bias) is shared by both. ``split`` checks on a real batch that
upper(lower(x)) equals the whole encoder and refuses a family where it does not.

The published artifact is the whole encoder, unchanged in form: the worker never sees the split.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from erc_stream.errors import ConfigError
from erc_stream.model import mask_hidden
from erc_stream.prompt import Prompt, pad_batch
from trainer.checkpoint import load_file, save_atomic

__all__ = ["FrozenPrefix", "CACHE_FILE", "encoder_layers", "pad_hidden"]

log = logging.getLogger(__name__)

CACHE_FILE = "frozen_cache.pt"
_MATCH_ATOL = 1e-4  # fp32 difference allowed between upper(lower(x)) and the whole encoder


class _PassThrough(nn.Module):
    """Embeddings that return what they are given: the upper model's input is already hidden states."""

    def forward(self, input_ids=None, inputs_embeds=None, **_: object) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The transformer layer list of a BERT-style HF encoder (``encoder.encoder.layer``)."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"--freeze-layers needs an encoder with a layer list at .encoder.layer (BERT, MPNet, RoBERTa); "
            f"{type(encoder).__name__} has none: train it without --freeze-layers"
        )
    return layers


def _shell(encoder: Any, layers: list[nn.Module], embeddings: nn.Module) -> nn.Module:
    """A model of the encoder's family around the given layers and embeddings (shared, not copied)."""
    from transformers import AutoModel

    config = copy.deepcopy(encoder.config)
    config.num_hidden_layers = 0  # the shell allocates no layers of its own
    shell = AutoModel.from_config(config, add_pooling_layer=False)
    for name, child in encoder.encoder.named_children():  # mpnet: relative_attention_bias
        if name != "layer":
            setattr(shell.encoder, name, child)
    shell.encoder.layer = nn.ModuleList(layers)
    shell.embeddings = embeddings
    shell.to(next(encoder.parameters()).device)
    return shell


@dataclass
class FrozenPrefix:
    """The encoder split after ``n_frozen`` layers; ``cache`` holds the lower part's output per prompt."""

    n_frozen: int
    lower: nn.Module  # embeddings + layers[:n_frozen], frozen, always in eval mode
    upper: nn.Module  # layers[n_frozen:] over given hidden states, trained
    pad_id: int  # the tokenizer's padding id (mpnet derives positions from it)

    @classmethod
    def split(cls, encoder: Any, n_frozen: int, probe: list[Prompt], pad_id: int) -> FrozenPrefix:
        """Freeze embeddings and the first ``n_frozen`` layers; check the split on ``probe`` prompts."""
        layers = encoder_layers(encoder)
        if not 0 < n_frozen < len(layers):
            raise ConfigError(
                f"TrainConfig.freeze_layers has an invalid value: {n_frozen}; this encoder has {len(layers)} "
                f"layers, so it must be between 1 and {len(layers) - 1} (0 trains every layer)"
            )
        lower = _shell(encoder, list(layers[:n_frozen]), encoder.embeddings)
        upper = _shell(encoder, list(layers[n_frozen:]), _PassThrough())
        for p in lower.parameters():
            p.requires_grad_(False)
        prefix = cls(n_frozen, lower.eval(), upper, pad_id)
        prefix._check(encoder, probe)
        return prefix

    def _check(self, encoder: nn.Module, probe: list[Prompt]) -> None:
        batch = pad_batch(probe, self.pad_id)
        device = next(encoder.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        was_training = encoder.training
        encoder.eval()
        self.upper.eval()
        with torch.no_grad():
            whole = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
            split = self.top(self.bottom(ids, mask), mask)  # (B, T, H)
        encoder.train(was_training)
        self.upper.train(was_training)
        keep = mask.bool()
        diff = (whole - split).abs()[keep].max().item()
        if diff > _MATCH_ATOL:
            raise ConfigError(
                f"--freeze-layers: this encoder ({type(encoder).__name__}) does not split cleanly after "
                f"layer {self.n_frozen} (largest difference {diff:.2e}); train it without --freeze-layers"
            )

    def bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states after the frozen layers, (B, T, H)."""
        return self.lower(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states from the frozen part's output, (B, T, H)."""
        return self.upper(inputs_embeds=hidden, attention_mask=attention_mask).last_hidden_state

    def top_mask(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        mask_index: torch.Tensor,
        *,
        mask_rows_only: bool = True,
    ) -> torch.Tensor:
        """The encoder's last hidden state at each prompt's mask token from the frozen part's
        output, (B, H); the last layer's feed-forward on the mask rows only (``mask_hidden``)."""
        return mask_hidden(
            self.upper, mask_index, inputs_embeds=hidden, attention_mask=attention_mask, mask_rows_only=mask_rows_only
        )

    def cache(
        self, prompts: list[Prompt], *, batch_size: int, cache_dir: Path | None, progress: bool = True
    ) -> list[torch.Tensor]:
        """The frozen part's output for every prompt, (T_i, H) each, fp32 on the CPU.

        Read back from ``cache_dir`` when a file there was made from the same frozen weights and
        prompts (a resumed run), else computed in length-sorted batches and written there.
        """
        key = self._key(prompts)
        path = cache_dir / CACHE_FILE if cache_dir is not None else None
        if path is not None and path.is_file():
            saved = load_file(path)
            if saved.get("key") == key:
                log.info("frozen-layer outputs of %d prompts read from %s", len(prompts), path)
                return list(saved["hidden"])
            log.info("%s was made from other weights or prompts: computing it again", path)
        device = next(self.lower.parameters()).device
        out: list[torch.Tensor | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        with torch.inference_mode():
            for chunk in tqdm(
                chunks, desc=f"frozen layers 1-{self.n_frozen}", unit="batch", disable=not progress, dynamic_ncols=True
            ):
                batch = pad_batch([prompts[i] for i in chunk], self.pad_id)
                hidden = self.bottom(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float().cpu()
                for row, i in enumerate(chunk):
                    out[i] = hidden[row, : len(prompts[i])].clone()  # (T_i, H)
        result = [h for h in out if h is not None]
        if path is not None:
            save_atomic({"key": key, "hidden": result}, path)
        return result

    def _key(self, prompts: list[Prompt]) -> str:
        """Digest of the frozen weights and the prompts' token ids."""
        digest = hashlib.sha256(str(self.n_frozen).encode())
        for name, tensor in self.lower.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        for prompt in prompts:
            digest.update(str(prompt.input_ids).encode())
        return digest.hexdigest()


def pad_hidden(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad cached (T_i, H) rows into (B, T, H) and their attention mask (B, T)."""
    width = max(r.shape[0] for r in rows)
    hidden = rows[0].new_zeros(len(rows), width, rows[0].shape[1])  # (B, T, H)
    mask = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        hidden[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return hidden, mask
