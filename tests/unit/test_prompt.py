"""The mask prompt with the real default tokenizer: exact token sequences, truncation,
special-token safety, text normalisation, template validation and padding."""

from __future__ import annotations

import os

import pytest
import torch

from erc_stream.errors import ConfigError, PromptTooLongError
from erc_stream.model import default_encoder_path
from erc_stream.prompt import (
    DEFAULT_TEMPLATE,
    TURN_TEMPLATE,
    Prompt,
    PromptBuilder,
    forward_parts,
    normalize_text,
    pad_batch,
    parts_padded_tokens,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CURRENT_ONLY = [
    "[CLS]", "ross", ":", "i", "am", "fine", ".",
    "for", "utter", "##ance", "i", "am", "fine", ".", ",", "ross", "feels", "[MASK]", "[SEP]",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)


def builder(
    tokenizer, context_turns: int = 2, max_length: int = 128, template: str = DEFAULT_TEMPLATE
) -> PromptBuilder:
    return PromptBuilder(tokenizer, context_turns=context_turns, max_length=max_length, template=template)


def tokens(tokenizer, prompt: Prompt) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(prompt.input_ids))


def three_turns(b: PromptBuilder):
    return b.encode_turns(["Rachel", "Monica", "Joey"], ["Hi there!", "How are you today?", "Hey guys"])


# ---------------------------------------------------------------------------- layout


def test_no_context(tokenizer):
    b = builder(tokenizer)
    p = b.build([], b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == CURRENT_ONLY
    assert p.mask_index == 17
    assert p.context_used == 0
    assert len(p) == 19


def test_k2_context_drops_the_oldest_of_three(tokenizer):
    b = builder(tokenizer, context_turns=2)
    p = b.build(three_turns(b), b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == [
        "[CLS]",
        "monica", ":", "how", "are", "you", "today", "?",
        "joey", ":", "hey", "guys",
        "ross", ":", "i", "am", "fine", ".",
        "for", "utter", "##ance", "i", "am", "fine", ".", ",", "ross", "feels", "[MASK]", "[SEP]",
    ]  # fmt: skip
    assert p.context_used == 2
    assert p.mask_index == 28


def test_context_turns_zero_ignores_context(tokenizer):
    b = builder(tokenizer, context_turns=0)
    p = b.build(three_turns(b), b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == CURRENT_ONLY
    assert p.context_used == 0


@pytest.mark.parametrize(
    ("max_length", "kept_context", "context_used"),
    [
        # 30 tokens untruncated; current turn + template + [CLS]/[SEP] need 19.
        (25, ["today", "?", "joey", ":", "hey", "guys"], 2),  # monica's turn keeps its newest 2 tokens
        (24, ["?", "joey", ":", "hey", "guys"], 2),
        (23, ["joey", ":", "hey", "guys"], 1),  # exactly the newest turn: the older one is gone
        (22, [":", "hey", "guys"], 1),  # the newest turn itself is cut from its start
        (20, ["guys"], 1),
        (19, [], 0),  # no room for context at all
    ],
)
def test_truncation_drops_oldest_context_first(tokenizer, max_length, kept_context, context_used):
    b = builder(tokenizer, context_turns=2, max_length=max_length)
    p = b.build(three_turns(b), b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == ["[CLS]"] + kept_context + CURRENT_ONLY[1:]
    assert len(p) == max_length
    assert p.context_used == context_used
    assert p.input_ids[p.mask_index] == tokenizer.mask_token_id


@pytest.mark.parametrize(("room", "kept_context"), [(0, []), (3, [":", "hey", "guys"])])
def test_current_turn_and_template_are_never_truncated(tokenizer, room, kept_context):
    long_text = " ".join(["word"] * 40)
    # [CLS] [SEP], "ross :", the text, "for utter ##ance", the text again, ", ross feels [MASK]"
    needed = 2 + 2 + 40 + 3 + 40 + 4
    b = builder(tokenizer, context_turns=2, max_length=needed + room)
    current = b.encode_turn("Ross", long_text)
    assert b.required_length(current) == needed
    p = b.build(three_turns(b), current)
    assert tokens(tokenizer, p) == ["[CLS]"] + kept_context + ["ross", ":"] + ["word"] * 40 + [
        "for", "utter", "##ance",
    ] + ["word"] * 40 + [",", "ross", "feels", "[MASK]", "[SEP]"]  # fmt: skip
    assert p.context_used == (1 if room else 0)
    assert len(p) == needed + room


def test_a_long_current_turn_that_does_not_fit_is_refused_not_cut(tokenizer):
    long_text = " ".join(["word"] * 40)
    b = builder(tokenizer, context_turns=2, max_length=2 + 2 + 40 + 3 + 40 + 4 - 1)
    with pytest.raises(PromptTooLongError, match="needs 91 tokens"):
        b.build([], b.encode_turn("Ross", long_text))


def test_prompt_too_long_when_current_and_template_exceed_max_length(tokenizer):
    b = builder(tokenizer, max_length=18)  # the current turn below needs 19
    current = b.encode_turn("Ross", "I am fine.")
    assert b.required_length(current) == 19
    with pytest.raises(PromptTooLongError, match=r"needs 19 tokens .* max_length=18"):
        b.build([], current)
    assert isinstance(PromptTooLongError("x"), ValueError)


def test_mask_index_points_at_mask_with_a_custom_template(tokenizer):
    b = builder(tokenizer, template="{speaker} says {utterance} and feels {mask} right now")
    p = b.build(b.encode_turns(["Joey"], ["Hey"]), b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == [
        "[CLS]", "joey", ":", "hey", "ross", ":", "i", "am", "fine", ".",
        "ross", "says", "i", "am", "fine", ".", "and", "feels", "[MASK]", "right", "now", "[SEP]",
    ]  # fmt: skip
    assert p.mask_index == 18
    assert p.input_ids[p.mask_index] == tokenizer.mask_token_id
    assert p.input_ids.count(tokenizer.mask_token_id) == 1


def test_user_typed_special_tokens_stay_plain_text(tokenizer):
    b = builder(tokenizer)
    user = b.encode_turn("Eve", "type [MASK] and [SEP] and [CLS] here")
    p = b.build([b.encode_turn("Mallory", "[PAD] [UNK] [MASK]")], user)
    toks = tokens(tokenizer, p)
    assert toks == [
        "[CLS]", "mallory", ":", "[", "pad", "]", "[", "un", "##k", "]", "[", "mask", "]",
        "eve", ":", "type", "[", "mask", "]", "and", "[", "sep", "]", "and", "[", "cl", "##s", "]", "here",
        "for", "utter", "##ance",
        "type", "[", "mask", "]", "and", "[", "sep", "]", "and", "[", "cl", "##s", "]", "here",
        ",", "eve", "feels", "[MASK]", "[SEP]",
    ]  # fmt: skip
    specials = {tokenizer.mask_token_id, tokenizer.sep_token_id, tokenizer.cls_token_id,
                tokenizer.pad_token_id, tokenizer.unk_token_id}  # fmt: skip
    special_positions = [i for i, t in enumerate(p.input_ids) if t in specials]
    assert special_positions == [0, p.mask_index, len(p) - 1]  # only [CLS], the template's [MASK], [SEP]


@pytest.mark.parametrize(
    ("speakers", "texts"),
    [
        (["Rachel", "Monica", "Joey", "Ross"], ["Hi there!", "How are you today?", "Hey guys", "I am fine."]),
        (["A", "B", "A"], ["It's 5 o'clock, isn't it?", "Yes -- we're late (again).", "Oh no! What now?"]),
        (["Dr. Smith", "Mr. Jones"], ["Please take a seat; this won't take long.", "Thanks, doctor. Café au lait?"]),
    ],
)
def test_piecewise_ids_equal_tokenizing_the_rendered_string(tokenizer, speakers, texts):
    b = builder(tokenizer, context_turns=3)
    enc = b.encode_turns(speakers, texts)
    p = b.build(enc[:-1], enc[-1])
    lines = " ".join(f"{s}: {t}" for s, t in zip(speakers, texts, strict=True))
    rendered = (
        lines + " " + DEFAULT_TEMPLATE.format(utterance=texts[-1], speaker=speakers[-1], mask=tokenizer.mask_token)
    )
    assert list(p.input_ids) == tokenizer(rendered)["input_ids"]


def test_encode_turns_checks_lengths_and_accepts_empty(tokenizer):
    b = builder(tokenizer)
    assert b.encode_turns([], []) == []
    with pytest.raises(ValueError, match="2 speakers for 1 texts"):
        b.encode_turns(["a", "b"], ["x"])


def test_turn_ids_are_normalized_text(tokenizer):
    b = builder(tokenizer)
    assert b.encode_turn("Ross\u00a0Geller", "I\u2019m fine\u2026") == b.encode_turn("Ross Geller", "I'm fine...")


# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("\u2018Hi\u2019", "'Hi'"),
        ("\u201cyou\u201d", '"you"'),
        ("wait\u2026", "wait..."),
        ("a\u2014b", "a-b"),
        ("a\u2013b", "a-b"),
        ("a\u00a0b", "a b"),
        ("I\u2019m \u201cfine\u201d\u2026 really \u2014 ok", 'I\'m "fine"... really - ok'),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("a\x00b\x07c\x1bd\x7fe", "abcde"),  # control characters removed
        ("line\none\r\ntwo\tthree", "line one two three"),  # newlines and tabs become spaces
        ("  lots   of \t\n spaces  ", "lots of spaces"),
        ("cafe\u0301", "caf\u00e9"),  # NFC
        ("", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("For utterance {utterance}, {speaker} feels", r"must contain \{mask\}"),
        ("{utterance} {emotion} {mask}", r"field \{emotion\} is not allowed"),
        ("{utterance} {mask} {utterance}", r"uses \{utterance\} twice"),
        ("{mask} and {mask}", r"uses \{mask\} twice"),
        ("{utterance!r} {mask}", r"not allowed"),
        ("{utterance:>10} {mask}", r"not allowed"),
        ("{utterance {mask}", r"malformed"),
    ],
)
def test_template_validation(tokenizer, template, message):
    with pytest.raises(ConfigError, match=message):
        builder(tokenizer, template=template)


def test_builder_settings_validation(tokenizer):
    with pytest.raises(ConfigError, match="context_turns must be >= 0, got -1"):
        builder(tokenizer, context_turns=-1)
    with pytest.raises(ConfigError, match="max_length must be >= 8, got 7"):
        builder(tokenizer, max_length=7)


# ---------------------------------------------------------------------------- padding


def test_pad_batch_shapes_and_values():
    prompts = [
        Prompt(input_ids=(101, 5, 103, 102), mask_index=2, context_used=0),
        Prompt(input_ids=(101, 7, 8, 9, 103, 102), mask_index=4, context_used=1),
        Prompt(input_ids=(101, 103, 102), mask_index=1, context_used=0),
    ]
    batch = pad_batch(prompts, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "mask_index"}
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist() == [
        [101, 5, 103, 102, 0, 0],
        [101, 7, 8, 9, 103, 102],
        [101, 103, 102, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
    ]
    assert batch["mask_index"].tolist() == [2, 4, 1]


def test_pad_batch_uses_the_given_pad_id():
    batch = pad_batch([Prompt((1, 2), 1, 0), Prompt((1,), 0, 0)], pad_id=-7)
    assert batch["input_ids"].tolist() == [[1, 2], [1, -7]]
    assert tuple(batch["input_ids"].shape) == (2, 2)


# ---------------------------------------------------------------------------- turn-once prompt


def test_turn_prompt_exact_tokens(tokenizer):
    b = builder(tokenizer, context_turns=5, template=TURN_TEMPLATE)
    p = b.build_turn(b.encode_turn("Ross", "I am fine."))
    assert tokens(tokenizer, p) == ["[CLS]", "ross", ":", "i", "am", "fine", ".", "ross", "feels", "[MASK]", "[SEP]"]
    assert p.mask_index == 9
    assert p.context_used == 0


def test_turn_prompt_ignores_context_turns_and_equals_a_window_prompt_without_context(tokenizer):
    b = builder(tokenizer, context_turns=2, template=TURN_TEMPLATE)
    current = b.encode_turn("Joey", "How you doin'?")
    p = b.build_turn(current)
    assert p == builder(tokenizer, context_turns=0, template=TURN_TEMPLATE).build(three_turns(b), current)
    assert p != b.build(three_turns(b), current)  # the window prompt of the same builder shows context


def test_turn_prompt_too_long_is_refused(tokenizer):
    long_text = " ".join(["word"] * 40)
    # [CLS] [SEP], "ross :", the text, "ross feels [MASK]"
    b = builder(tokenizer, template=TURN_TEMPLATE, max_length=2 + 2 + 40 + 3 - 1)
    with pytest.raises(PromptTooLongError, match="needs 47 tokens"):
        b.build_turn(b.encode_turn("Ross", long_text))


@pytest.mark.parametrize("template", [TURN_TEMPLATE, DEFAULT_TEMPLATE])
def test_turn_prompt_fit_keeps_the_first_tokens_that_fit(tokenizer, template):
    long_text = " ".join(["word"] * 38 + ["end", "here"])
    b = builder(tokenizer, template=template, max_length=30)
    p = b.build_turn(b.encode_turn("Ross", long_text), fit=True)
    toks = tokens(tokenizer, p)
    assert len(p) <= 30 and toks[p.mask_index] == "[MASK]"
    if template == TURN_TEMPLATE:  # [CLS] ross : <text> ross feels [MASK] [SEP]: 23 words fit
        assert toks == ["[CLS]", "ross", ":"] + ["word"] * 23 + ["ross", "feels", "[MASK]", "[SEP]"]
    else:  # the utterance appears twice: 9 words fit in each place
        assert toks[:12] == ["[CLS]", "ross", ":"] + ["word"] * 9
    short = b.encode_turn("Ross", "I am fine.")
    assert b.build_turn(short, fit=True) == b.build_turn(short)


# ---------------------------------------------------------------------------- anonymous speakers


def test_anonymous_speakers_are_numbered_by_recency_with_the_current_one_first(tokenizer):
    b = PromptBuilder(tokenizer, context_turns=3, max_length=128, speakers="anonymous")
    ctx = b.encode_turns(["Rachel", "Ross", "Monica"], ["Hi there!", "Hey.", "How are you today?"])
    p = b.build(ctx, b.encode_turn("Ross", "I am fine."))
    # Ross speaks now (speaker 1) and before; Monica is the nearest other speaker (2), then Rachel (3).
    assert tokens(tokenizer, p) == [
        "[CLS]",
        "speaker", "3", ":", "hi", "there", "!",
        "speaker", "1", ":", "hey", ".",
        "speaker", "2", ":", "how", "are", "you", "today", "?",
        "speaker", "1", ":", "i", "am", "fine", ".",
        "for", "utter", "##ance", "i", "am", "fine", ".", ",", "speaker", "1", "feels", "[MASK]",
        "[SEP]",
    ]  # fmt: skip
    assert p.context_used == 3
    assert tokens(tokenizer, p)[p.mask_index] == "[MASK]"
    for name in ("rachel", "ross", "monica"):
        assert name not in tokens(tokenizer, p)


def test_anonymous_prompt_depends_on_who_spoke_when_not_on_the_names(tokenizer):
    b = PromptBuilder(tokenizer, context_turns=2, max_length=128, speakers="anonymous")
    texts = ["Where is my parcel?", "Let me check."]
    support = b.build(b.encode_turns(["customer-81", "agent-7"], texts), b.encode_turn("customer-81", "Hurry up."))
    friends = b.build(b.encode_turns(["Rachel", "Ross"], texts), b.encode_turn("Rachel", "Hurry up."))
    assert support == friends
    # A third person changes the numbering: the current speaker is speaker 1, the other two 2 and 3.
    other = b.build(b.encode_turns(["Rachel", "Ross"], texts), b.encode_turn("Joey", "Hurry up."))
    assert other != friends
    assert tokens(tokenizer, other)[1:3] == ["speaker", "3"]


def test_anonymous_truncation_and_turn_prompts_count_the_label_not_the_name(tokenizer):
    names = PromptBuilder(tokenizer, context_turns=2, max_length=128)
    anon = PromptBuilder(tokenizer, context_turns=2, max_length=128, speakers="anonymous")
    long_name = "Mr. Bartholomew Featherstonehaugh"  # many word pieces; the label is two
    cur_n, cur_a = names.encode_turn(long_name, "I am fine."), anon.encode_turn(long_name, "I am fine.")
    assert anon.required_length(cur_a) < names.required_length(cur_n)
    p = anon.build_turn(cur_a)
    assert len(p) == anon.required_length(cur_a)
    assert tokens(tokenizer, p)[1:4] == ["speaker", "1", ":"]
    # Room for exactly the current turn: no context fits, and it is not refused.
    tight = PromptBuilder(tokenizer, context_turns=2, max_length=anon.required_length(cur_a), speakers="anonymous")
    q = tight.build(anon.encode_turns(["Rachel"], ["Hi there!"]), tight.encode_turn(long_name, "I am fine."))
    assert q.context_used == 0 and len(q) == anon.required_length(cur_a)


def test_speakers_mode_is_validated(tokenizer):
    with pytest.raises(ConfigError, match="speakers must be one of names, anonymous"):
        PromptBuilder(tokenizer, context_turns=2, max_length=128, speakers="pseudonyms")


def test_forward_parts_sort_by_length_and_cut():
    lengths = [30, 10, 50, 20, 40]
    assert forward_parts(lengths, None) == [[0, 1, 2, 3, 4]]  # one pass, batch order
    assert forward_parts(lengths, 5) == [[0, 1, 2, 3, 4]] == forward_parts(lengths, 8)
    assert forward_parts(lengths, 2) == [[1, 3], [0, 4], [2]]  # 10, 20 | 30, 40 | 50
    assert forward_parts(lengths, 1) == [[1], [3], [0], [4], [2]]
    assert forward_parts([7, 7, 3], 2) == [[2, 0], [1]]  # stable among equal lengths
    assert forward_parts([], 4) == [] and forward_parts([], None) == []


def test_padded_tokens_of_a_policy():
    lengths = [30, 10, 50, 20, 40]

    def padded(lengths, max_forward):
        return parts_padded_tokens(lengths, forward_parts(lengths, max_forward))

    assert padded(lengths, None) == 250  # 5 x 50
    assert padded(lengths, 2) == 2 * 20 + 2 * 40 + 50  # 170
    assert padded(lengths, 1) == sum(lengths)  # no padding
    assert padded([], 8) == 0
