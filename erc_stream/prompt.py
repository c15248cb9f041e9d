"""The mask prompt: the last k turns, then "For utterance u_t, s_t feels [MASK]".

One implementation serves the trainer and the worker, so a streamed prediction sees
exactly the token ids an offline evaluation sees.

Layout of one input (token level)::

    [CLS] s_{t-k}: u_{t-k} ... s_{t-1}: u_{t-1} s_t: u_t <template(u_t, s_t, [MASK])> [SEP]

Context is truncated oldest first: whole turns are dropped from the oldest end, and the
oldest turn that still fits partly keeps its newest tokens. The current turn and the
template are never truncated; if they alone do not fit, ``PromptTooLongError`` is raised
(the worker dead-letters such a turn with reason ``prompt_too_long``).

Speakers are shown by name (``speakers="names"``, the default) or by their place in the
prompt (``speakers="anonymous"``): the current speaker is "speaker 1", the next other speaker
met going back through the context "speaker 2", and so on. The anonymous form does not carry
a name from the training data (MELD's Ross, Rachel, ...) to a support chat's user ids.

Turns are tokenized once (``encode_turns``) and the token ids are reused by every later
prompt whose window contains them, which is what makes the streaming path cheap.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from erc_stream.errors import ConfigError, PromptTooLongError

__all__ = [
    "DEFAULT_TEMPLATE",
    "NORMALIZATION",
    "SPEAKER_MODES",
    "TURN_TEMPLATE",
    "EncodedTurn",
    "Prompt",
    "PromptBuilder",
    "forward_parts",
    "normalize_text",
    "pad_batch",
    "parts_padded_tokens",
]

DEFAULT_TEMPLATE = "For utterance {utterance}, {speaker} feels {mask}"
# Written into every manifest's prompt: the text normalization (normalize_text) its prompts were built with.
NORMALIZATION = "erc_stream.prompt.normalize_text v1"
# The turn-once architecture encodes each turn alone: "s_t: u_t s_t feels [MASK]". The
# utterance is already on the line, so the template does not repeat it.
TURN_TEMPLATE = "{speaker} feels {mask}"
_TEMPLATE_FIELDS = {"utterance", "speaker", "mask"}
# How a prompt names speakers: by name, or "speaker N" by recency within the prompt.
SPEAKER_MODES = ("names", "anonymous")

# Typographic punctuation (MELD has ~4k of these in train) mapped to the ASCII forms that
# live chat mostly uses, so training and streaming see one spelling.
_PUNCT = str.maketrans(
    {
        "\u2018": "'",  # ‘
        "\u2019": "'",  # ’
        "\u201a": "'",  # ‚
        "\u201b": "'",  # ‛
        "\u2032": "'",  # ′
        "\u201c": '"',  # “
        "\u201d": '"',  # ”
        "\u201e": '"',  # „
        "\u201f": '"',  # ‟
        "\u2033": '"',  # ″
        "\u2026": "...",  # …
        "\u2014": "-",  # —
        "\u2013": "-",  # –
        "\u2012": "-",  # ‒
        "\u2015": "-",  # ―
        "\u2212": "-",  # −
        "\u00a0": " ",  # no-break space
        "\u2009": " ",  # thin space
        "\u200a": " ",  # hair space
        "\u202f": " ",  # narrow no-break space
        "\u200b": None,  # zero-width space
        "\ufeff": None,  # byte order mark
    }
)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Canonical form of an utterance or speaker name, shared by training and streaming.

    NFC, typographic quotes/dashes/ellipses to ASCII, control characters removed,
    runs of whitespace collapsed to one space, ends stripped.
    """
    text = unicodedata.normalize("NFC", text).translate(_PUNCT)
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        text = "".join(
            " " if ch in "\t\n\r" else ch for ch in text if ch in "\t\n\r" or unicodedata.category(ch) != "Cc"
        )
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True, slots=True)
class EncodedTurn:
    """Token ids of one turn, computed once and reused by every prompt that shows it."""

    speaker_ids: tuple[int, ...]
    text_ids: tuple[int, ...]
    line_ids: tuple[int, ...]  # "speaker: text", as the turn appears in the context


@dataclass(frozen=True, slots=True)
class Prompt:
    """One model input: token ids with special tokens, where the mask is, how much context."""

    input_ids: tuple[int, ...]
    mask_index: int
    context_used: int  # previous turns that contributed at least one token

    def __len__(self) -> int:
        return len(self.input_ids)


class PromptBuilder:
    """Builds mask-prompt inputs for a tokenizer. Holds no model state; cheap to copy."""

    def __init__(
        self,
        tokenizer,
        *,
        context_turns: int,
        max_length: int,
        template: str = DEFAULT_TEMPLATE,
        speakers: str = "names",
    ) -> None:
        if speakers not in SPEAKER_MODES:
            raise ConfigError(f"speakers must be one of {', '.join(SPEAKER_MODES)}, got {speakers!r}")
        if context_turns < 0:
            raise ConfigError(f"context_turns must be >= 0, got {context_turns}")
        if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ConfigError(
                f"tokenizer {type(tokenizer).__name__} lacks a [MASK], [CLS] or [SEP] token; "
                "use a masked-language-model encoder (BERT, RoBERTa, MiniLM, ...)"
            )
        self.tokenizer = tokenizer
        self.context_turns = context_turns
        self.max_length = max_length
        self.template = template
        self.speakers = speakers
        self._labels: list[tuple[int, ...]] = []  # anonymous: token ids of "speaker 1", "speaker 2", ...
        self._pieces = _parse_template(template)
        # Literal pieces of the template, tokenized once.
        literals = [p for kind, p in self._pieces if kind == "literal"]
        literal_ids = self._tokenize(literals) if literals else []
        self._literal_ids = dict(zip(literals, literal_ids, strict=True))
        self._colon_ids = tuple(self._tokenize([":"])[0])
        if max_length < 8:
            raise ConfigError(f"max_length must be >= 8, got {max_length}")

    # -- tokenization -------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        # A leading space makes BPE tokenizers use their mid-sentence word forms; WordPiece
        # ignores it. split_special_tokens keeps a literal "[MASK]" typed by a user from
        # becoming the mask token.
        out = self.tokenizer(
            [" " + t for t in texts],
            add_special_tokens=False,
            split_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return out["input_ids"]

    def encode_turns(self, speakers: Sequence[str], texts: Sequence[str]) -> list[EncodedTurn]:
        """Normalize and tokenize turns in one tokenizer call."""
        if len(speakers) != len(texts):
            raise ValueError(f"{len(speakers)} speakers for {len(texts)} texts")
        if not texts:
            return []
        spk = [normalize_text(s) for s in speakers]
        txt = [normalize_text(t) for t in texts]
        ids = self._tokenize(spk + txt)
        n = len(txt)
        colon = self._colon_ids
        return [
            EncodedTurn(
                speaker_ids=tuple(ids[i]),
                text_ids=tuple(ids[n + i]),
                line_ids=tuple(ids[i]) + colon + tuple(ids[n + i]),
            )
            for i in range(n)
        ]

    def encode_turn(self, speaker: str, text: str) -> EncodedTurn:
        return self.encode_turns([speaker], [text])[0]

    # -- building ------------------------------------------------------------------------
    def _template_ids(self, current: EncodedTurn) -> tuple[list[int], int]:
        ids: list[int] = []
        mask_at = -1
        for kind, piece in self._pieces:
            if kind == "literal":
                ids.extend(self._literal_ids[piece])
            elif piece == "utterance":
                ids.extend(current.text_ids)
            elif piece == "speaker":
                ids.extend(current.speaker_ids)
            else:  # mask
                mask_at = len(ids)
                ids.append(self.tokenizer.mask_token_id)
        return ids, mask_at

    def _label(self, n: int) -> tuple[int, ...]:
        """Token ids of "speaker n" (1-based), tokenized on first use."""
        while len(self._labels) < n:
            self._labels.append(tuple(self._tokenize([f"speaker {len(self._labels) + 1}"])[0]))
        return self._labels[n - 1]

    def _relabel(self, turn: EncodedTurn, n: int) -> EncodedTurn:
        label = self._label(n)
        return EncodedTurn(label, turn.text_ids, label + self._colon_ids + turn.text_ids)

    def _anonymous(self, context: Sequence[EncodedTurn], current: EncodedTurn) -> tuple[list[EncodedTurn], EncodedTurn]:
        """``context`` and ``current`` with each speaker named by recency: current = speaker 1."""
        numbers = {current.speaker_ids: 1}
        out = []
        for turn in reversed(context):
            n = numbers.setdefault(turn.speaker_ids, len(numbers) + 1)
            out.append(self._relabel(turn, n))
        out.reverse()
        return out, self._relabel(current, 1)

    def required_length(self, current: EncodedTurn) -> int:
        """Tokens the current turn needs with no context at all (special tokens included)."""
        if self.speakers == "anonymous":
            current = self._relabel(current, 1)
        template_ids, _ = self._template_ids(current)
        return 2 + len(current.line_ids) + len(template_ids)

    def build(self, context: Sequence[EncodedTurn], current: EncodedTurn) -> Prompt:
        """The input for ``current`` given the turns before it (oldest first)."""
        recent = list(context[-self.context_turns :]) if self.context_turns else []
        if self.speakers == "anonymous":
            recent, current = self._anonymous(recent, current)
        template_ids, mask_at = self._template_ids(current)
        fixed = 2 + len(current.line_ids) + len(template_ids)
        if fixed > self.max_length:
            raise PromptTooLongError(
                f"the current turn needs {fixed} tokens with the prompt, more than max_length="
                f"{self.max_length}; shorten the text or use a model trained with a larger max_length"
            )
        budget = self.max_length - fixed
        kept: list[tuple[int, ...]] = []
        for turn in reversed(recent):  # newest first: the oldest context goes first
            if budget <= 0:
                break
            line = turn.line_ids
            if len(line) > budget:
                line = line[len(line) - budget :]  # keep the newest tokens of this turn
            kept.append(line)
            budget -= len(line)
        ids: list[int] = [self.tokenizer.cls_token_id]
        for line in reversed(kept):
            ids.extend(line)
        ids.extend(current.line_ids)
        prefix = len(ids)
        ids.extend(template_ids)
        ids.append(self.tokenizer.sep_token_id)
        return Prompt(input_ids=tuple(ids), mask_index=prefix + mask_at, context_used=len(kept))

    def build_turn(self, current: EncodedTurn, *, fit: bool = False) -> Prompt:
        """The input of the turn-once architecture: ``current`` alone, whatever ``context_turns`` is.

        ``[CLS] s_t: u_t <template> [SEP]``; its context reaches the model later, as the cached
        vectors of earlier turns. Too long a turn raises ``PromptTooLongError`` as in ``build``,
        unless ``fit``: then the utterance keeps only its first tokens, as many as fit (the worker
        does this for a context turn that was itself refused as too long but stays in its window,
        as a window prompt would show its newest tokens).
        """
        if self.speakers == "anonymous":
            current = self._relabel(current, 1)
        if fit:
            overflow = self.required_length(current) - self.max_length
            if overflow > 0:
                per_token = 1 + sum(1 for kind, p in self._pieces if kind == "field" and p == "utterance")
                keep = len(current.text_ids) - -(-overflow // per_token)  # ceil division
                if keep >= 0:
                    text = current.text_ids[:keep]
                    current = EncodedTurn(current.speaker_ids, text, current.speaker_ids + self._colon_ids + text)
        return self.build((), current)


def _parse_template(template: str) -> list[tuple[str, str]]:
    pieces: list[tuple[str, str]] = []
    seen: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"prompt template {template!r} is malformed: {exc}") from exc
    for literal, field, spec, conv in parsed:
        if literal.strip():
            pieces.append(("literal", literal.strip()))
        if field is None:
            continue
        if field not in _TEMPLATE_FIELDS or spec or conv:
            raise ConfigError(
                f"prompt template field {{{field}}} is not allowed; use only {{utterance}}, {{speaker}}, {{mask}}"
            )
        if field in seen:
            raise ConfigError(f"prompt template uses {{{field}}} twice: {template!r}")
        seen.append(field)
        pieces.append(("field", field))
    if "mask" not in seen:
        raise ConfigError(f"prompt template must contain {{mask}}: {template!r}")
    return pieces


def pad_batch(prompts: Sequence[Prompt], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad prompts to the longest one: input_ids, attention_mask (B, T), mask_index (B,)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (B, T)
    for i, p in enumerate(prompts):
        input_ids[i, : len(p)] = torch.tensor(p.input_ids, dtype=torch.long)
        attention_mask[i, : len(p)] = 1
    mask_index = torch.tensor([p.mask_index for p in prompts], dtype=torch.long)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mask_index": mask_index}


def forward_parts(lengths: Sequence[int], max_forward: int | None) -> list[list[int]]:
    """Indices of a batch's prompts in forward passes of at most ``max_forward`` prompts.

    ``None``: one pass, in batch order. Otherwise the prompts sorted by length (stable), cut into
    consecutive parts, so each part is padded only to its own longest prompt.
    """
    if max_forward is None or len(lengths) <= max_forward:
        return [list(range(len(lengths)))] if lengths else []
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[k : k + max_forward] for k in range(0, len(order), max_forward)]


def parts_padded_tokens(lengths: Sequence[int], parts: Sequence[Sequence[int]]) -> int:
    """Tokens the encoder sees for these parts of a batch (``forward_parts``), each padded to its longest."""
    return sum(max(lengths[i] for i in part) * len(part) for part in parts)
