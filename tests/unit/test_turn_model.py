"""Turn-once artifacts and offline inference: the manifest schema (old artifacts included),
context weights in head.safetensors, the loader that picks the architecture, and a streaming-
style pass (each turn encoded alone, windows from cached vectors) equal to the evaluator's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from erc_stream.artifact import (
    load_version_files,
    manifest_architecture,
    read_current,
    read_manifest,
    sha256_file,
    validate_manifest,
    verify_version,
)
from erc_stream.context import ContextModel, ContextSettings, pack_windows, same_speaker_flags
from erc_stream.errors import ArtifactError
from erc_stream.model import Predictor, TurnPredictor, load_predictor
from erc_stream.prompt import TURN_TEMPLATE
from tests.fixtures_model import MELD_LABELS, publish_test_model, publish_test_turn_model
from trainer.datasets import Conversation, Utterance
from trainer.evaluate import predict_conversations

ROOT = Path(__file__).resolve().parents[2]
MAIN_MODEL = ROOT / "models" / str(read_current(ROOT / "models"))  # the shipped MELD model
TURN = "test-turn-v1"
WINDOW = "test-window-v1"

CONVS = [
    Conversation(
        id="c1",
        utterances=(
            Utterance("Rachel", "Oh my God, you got the job?", "surprise"),
            Utterance("Monica", "I did! I start on Monday.", "joy"),
            Utterance("Rachel", "That is amazing, I am so happy for you.", "joy"),
            Utterance("Ross", "Wait, which job?", "neutral"),
            Utterance("Monica", "The chef job, Ross. Keep up.", "anger"),
        ),
    ),
    Conversation(
        id="c2",
        utterances=(
            Utterance("Joey", "Where is my sandwich?", "anger"),
            Utterance("Chandler", "I may have eaten it.", "fear"),
        ),
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    publish_test_turn_model(store, version=TURN, context_turns=2)
    publish_test_model(store, version=WINDOW, make_current=False)
    return store


@pytest.fixture(scope="module")
def turn(store) -> TurnPredictor:
    p = load_predictor(store / TURN, device="cpu", dtype="fp32")
    assert isinstance(p, TurnPredictor)
    return p


def edit_manifest(version_dir: Path, change) -> None:
    path = version_dir / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


@pytest.fixture()
def turn_copy(store, tmp_path) -> Path:
    dst = tmp_path / TURN
    shutil.copytree(store / TURN, dst)
    return dst


# ------------------------------------------------------------------------ schema and loading


def test_schemas_folder_holds_the_packaged_manifest_schema():
    packaged = ROOT / "erc_stream" / "schemas" / "manifest.schema.json"
    assert (ROOT / "schemas" / "manifest.schema.json").read_bytes() == packaged.read_bytes()


def test_the_shipped_window_model_validates_and_loads_and_a_manifest_without_the_field_is_a_window():
    manifest = read_manifest(MAIN_MODEL)
    assert manifest_architecture(manifest) == "window"
    older = {k: v for k, v in manifest.items() if k != "architecture"}  # written before the field existed
    validate_manifest(older)
    assert manifest_architecture(older) == "window"
    predictor = load_predictor(MAIN_MODEL, device="cpu", dtype="fp32", verify=False)
    assert type(predictor) is Predictor
    turn = predictor.builder.encode_turn("Ross", "We were on a break!")
    assert predictor.predict([predictor.builder.build([], turn)]).scores.shape == (1, 7)


def test_turn_artifact_records_architecture_and_context_weights(store):
    manifest = verify_version(store / TURN)
    assert manifest["architecture"] == "turn"
    assert manifest["prompt"]["template"] == TURN_TEMPLATE
    settings = ContextSettings.from_manifest(manifest["context_model"])
    assert settings == ContextSettings(hidden_size=384, context_turns=2, layers=1, heads=6, ffn_dim=1536)
    tensors = load_file(str(store / TURN / "head.safetensors"))
    context_keys = {k[len("context.") :] for k in tensors if k.startswith("context.")}
    assert context_keys == set(ContextModel(settings).state_dict())
    assert manifest_architecture(verify_version(store / WINDOW)) == "window"


def test_loaders_refuse_the_other_architecture(store):
    with pytest.raises(ArtifactError, match="is a 'turn' model; load it with erc_stream.model.load_predictor"):
        Predictor.load(store / TURN, device="cpu", dtype="fp32")
    with pytest.raises(ArtifactError, match="is a window model"):
        TurnPredictor.load(store / WINDOW, device="cpu", dtype="fp32")
    assert type(load_predictor(store / WINDOW, device="cpu", dtype="fp32")) is Predictor


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("context_model"), r"field \$ is invalid: 'context_model' is a required property"),
        (lambda m: m.update(architecture="mixed"), r"field \$\.architecture is invalid: 'mixed' is not one of"),
        (lambda m: m.pop("architecture"), r"field \$ is invalid: 'architecture' is a required property"),
        (lambda m: m["context_model"].update(layers=-1), r"field \$\.context_model\.layers is invalid"),
        (lambda m: m["context_model"].update(extra=1), r"\$\.context_model is invalid: Additional properties"),
        (lambda m: m["prompt"].update(context_turns=3), r"context_model\.context_turns=2 differs from prompt"),
        (lambda m: m.update(temperature=0), r"field \$\.temperature is invalid"),
    ],
)
def test_bad_turn_manifests_are_refused_naming_the_field(turn_copy, change, message):
    edit_manifest(turn_copy, change)
    with pytest.raises(ArtifactError, match=message):
        verify_version(turn_copy)
    with pytest.raises(ArtifactError, match=message):
        load_version_files(turn_copy, verify=False)  # the unverified path checks the schema too


def test_context_settings_the_encoder_cannot_take_are_refused(turn_copy):
    edit_manifest(turn_copy, lambda m: m["context_model"].update(heads=5))  # 384 % 5 != 0
    with pytest.raises(ArtifactError, match="heads has an invalid value: 5"):
        TurnPredictor.load(turn_copy, device="cpu", dtype="fp32")


def test_missing_context_weights_are_refused(turn_copy):
    head = turn_copy / "head.safetensors"
    save_file({k: v for k, v in load_file(str(head)).items() if not k.startswith("context.")}, str(head))
    edit_manifest(turn_copy, lambda m: m["files"].update({"head.safetensors": sha256_file(head)}))
    with pytest.raises(ArtifactError, match=r"(?s)head\.safetensors does not match its manifest: .*Missing key"):
        TurnPredictor.load(turn_copy, device="cpu", dtype="fp32")


def test_validate_manifest_accepts_a_window_manifest_with_architecture_window():
    manifest = {k: v for k, v in read_manifest(MAIN_MODEL).items() if k != "architecture"}
    validate_manifest({**manifest, "architecture": "window"})
    with pytest.raises(ArtifactError, match="'architecture' is a required property"):
        validate_manifest({**manifest, "context_model": {}})
    with pytest.raises(ArtifactError, match=r"\$\.architecture is invalid: 'turn' was expected"):
        context = ContextSettings(hidden_size=384, context_turns=5).to_manifest()
        validate_manifest({**manifest, "architecture": "window", "context_model": context})


# ------------------------------------------------------------------------ offline inference


def streamed_scores(predictor: TurnPredictor, convs: list[Conversation]) -> np.ndarray:
    """What a worker computes: each turn encoded alone when it arrives, its vector cached, its
    window packed from the cached vectors of the last k turns, one context pass per turn."""
    k = predictor.builder.context_turns
    rows = []
    for conv in convs:
        cache: list[torch.Tensor] = []
        speakers: list[str] = []
        for u in conv.utterances:
            prompt = predictor.builder.build_turn(predictor.builder.encode_turn(u.speaker, u.text))
            cache.append(predictor.encode([prompt])[0])  # (H,)
            speakers.append(u.speaker)
            window = torch.stack(cache[-(k + 1) :])  # (w, H) oldest first
            flags = same_speaker_flags(speakers[-(k + 1) :])
            rows.append(predictor.predict_windows(pack_windows([window], [flags])).scores[0])
    return np.stack(rows)


def test_streamed_turn_predictions_equal_the_evaluator(turn):
    offline = predict_conversations(turn, CONVS, batch_size=3)
    assert offline.keys == [("c1", i) for i in range(5)] + [("c2", 0), ("c2", 1)]
    assert offline.gold == [MELD_LABELS.index(u.label) for c in CONVS for u in c.utterances]
    np.testing.assert_allclose(streamed_scores(turn, CONVS), offline.predictions.scores, atol=2e-5, rtol=0)


def test_each_turn_is_encoded_once(turn, monkeypatch):
    calls: list[int] = []
    encode = turn.model.encode

    def counting(input_ids, attention_mask, mask_index):
        calls.append(input_ids.shape[0])
        return encode(input_ids, attention_mask, mask_index)

    monkeypatch.setattr(turn.model, "encode", counting)
    predict_conversations(turn, CONVS, batch_size=64)
    assert sum(calls) == sum(len(c.utterances) for c in CONVS) == 7


def test_later_turns_do_not_change_earlier_predictions_and_context_matters(turn):
    full = predict_conversations(turn, CONVS[:1]).predictions.scores
    cut = Conversation(id="c1", utterances=CONVS[0].utterances[:3])
    np.testing.assert_allclose(predict_conversations(turn, [cut]).predictions.scores, full[:3], atol=2e-5, rtol=0)
    alone = predict_conversations(turn.with_context_turns(0), CONVS[:1]).predictions.scores
    np.testing.assert_allclose(alone[0], full[0], atol=2e-5, rtol=0)  # turn 0 has no context anyway
    assert np.abs(alone[1:] - full[1:]).max() > 1e-3  # the others read their windows


def test_turn_warm_up_runs(turn):
    assert turn.warm_up(batch_size=2) > 0


def test_predict_turns_encodes_each_uncached_turn_once_and_equals_the_evaluator(turn, monkeypatch):
    from erc_stream.model import TurnInput

    conv = CONVS[0]
    b = turn.builder
    enc = b.encode_turns([u.speaker for u in conv.utterances], [u.text for u in conv.utterances])
    k = turn.builder.context_turns
    offline = predict_conversations(turn, [conv]).predictions.scores
    windows = [
        [TurnInput(j, conv.utterances[j].speaker, enc[j], None) for j in range(max(0, i - k), i + 1)]
        for i in range(len(enc))
    ]
    calls: list[int] = []
    encode = turn.model.encode

    def counting(input_ids, attention_mask, mask_index):
        calls.append(input_ids.shape[0])
        return encode(input_ids, attention_mask, mask_index)

    monkeypatch.setattr(turn.model, "encode", counting)
    first = turn.predict_turns(windows)  # every turn shows up in up to k + 1 windows
    assert calls == [len(enc)] and sorted(first.vectors) == list(range(len(enc)))
    cost = first.predictions  # its tokens: the turns it encoded
    assert cost.tokens == sum(len(b.build_turn(e)) for e in enc)
    assert cost.padded_tokens == max(len(b.build_turn(e)) for e in enc) * len(enc) > cost.tokens
    np.testing.assert_allclose(first.predictions.scores, offline, atol=2e-5, rtol=0)
    # With the vectors cached, only the turn without one is encoded.
    cached = [[TurnInput(t.key, t.speaker, t.encoded, first.vectors[t.key] if t.key != 4 else None) for t in w]
              for w in windows]  # fmt: skip
    again = turn.predict_turns(cached[3:])
    assert calls[1:] == [1] and list(again.vectors) == [4]
    one_turn = len(b.build_turn(enc[4]))
    assert again.predictions.padded_tokens == again.predictions.tokens == one_turn  # one turn: no padding
    np.testing.assert_allclose(again.predictions.scores, offline[3:], atol=2e-5, rtol=0)
    # Encoded in length-sorted passes of at most 2 turns: the same scores, each pass padded to its own.
    calls.clear()
    parted = turn.predict_turns(windows, max_forward=2)
    lengths = sorted(len(b.build_turn(e)) for e in enc)
    assert calls == [2] * (len(enc) // 2) + [1] * (len(enc) % 2)
    assert parted.predictions.tokens == cost.tokens
    pairs = [lengths[i : i + 2] for i in range(0, len(lengths), 2)]
    assert parted.predictions.padded_tokens == sum(pair[-1] * len(pair) for pair in pairs) < cost.padded_tokens
    np.testing.assert_allclose(parted.predictions.scores, offline, atol=2e-5, rtol=0)
