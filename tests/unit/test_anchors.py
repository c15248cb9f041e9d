"""Emotion-anchor descriptions: plain, file and LLM sources, the cache, and embeddings.

The LLM and embeddings paths go through the real ``openai`` client over real
HTTP to the loopback server in tests/openai_loopback.py; every LLM test
asserts on the requests the server recorded, so it fails if nothing was sent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from erc_stream.errors import AnchorSourceError
from tests.openai_loopback import OpenAILoopback, closed_port_url, default_chat_reply, loopback_embedding
from trainer.anchors import (
    ANCHOR_MODES,
    LLM_PROMPT_TEMPLATE,
    LLM_SYSTEM_PROMPT,
    MAX_DESCRIPTION_CHARS,
    AnchorSource,
    LLMSettings,
    default_descriptions_file,
    describe_emotions,
    embed_descriptions,
)

MELD = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
SHIPPED = {
    "meld": MELD,
    "emorynlp": ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad"),
    "dailydialog": ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
    "iemocap": ("neutral", "frustrated", "angry", "sad", "happy", "excited"),
}
KEY = "sk-loopback-secret-1234"
CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"


@pytest.fixture(autouse=True)
def _no_proxy_no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback requests must not be routed through a proxy, and the machine's
    # OPENAI_* variables must not leak into tests that build settings explicitly.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with OpenAILoopback(api_key=KEY, embedding_dim=8) as srv:
        yield srv


def _settings(base_url: str, tmp_path: Path, model: str = "loop-model", **kw) -> LLMSettings:
    kw.setdefault("api_key", KEY)
    kw.setdefault("max_retries", 0)
    return LLMSettings(model=model, base_url=base_url, cache_dir=tmp_path / "cache", **kw)


def _expected_prompt(label: str, labels=MELD) -> str:
    return LLM_PROMPT_TEMPLATE.format(label=label, labels=", ".join(labels))


# --------------------------------------------------------------------------- plain


def test_plain_mode_uses_the_label_words():
    source = describe_emotions("plain", MELD, "meld")
    assert ANCHOR_MODES == ("plain", "llm", "file")
    assert source.mode == "plain"
    assert source.labels == MELD
    assert source.descriptions == {label: label for label in MELD}
    assert source.texts == list(MELD)
    assert source.provenance["mode"] == "plain"
    json.dumps(source.provenance)


@pytest.mark.parametrize(
    ("mode", "labels", "dataset", "match"),
    [
        ("magic", MELD, "meld", "anchor mode must be one of"),
        ("plain", (), "meld", "labels must not be empty"),
        ("plain", ("joy", "joy"), "meld", r"duplicates \['joy'\]"),
        ("plain", "joy", "meld", "single string"),
        ("plain", MELD, "../etc", "dataset must be a lower-case name"),
    ],
)
def test_bad_arguments_name_the_problem(mode, labels, dataset, match):
    with pytest.raises(ValueError, match=match):
        describe_emotions(mode, labels, dataset)


# --------------------------------------------------------------------------- llm


def test_llm_descriptions_come_from_the_server_through_the_openai_client(server, tmp_path):
    source = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))

    assert source.mode == "llm"
    assert source.descriptions == {label: default_chat_reply(label, {}) for label in MELD}
    chats = server.requests_to(CHAT)
    assert len(chats) == len(MELD) == len(server.requests)
    for label, request in zip(MELD, chats, strict=True):
        assert request.authorization == f"Bearer {KEY}"
        assert request.body["model"] == "loop-model"
        assert request.body["messages"] == [
            {"role": "system", "content": LLM_SYSTEM_PROMPT},
            {"role": "user", "content": _expected_prompt(label)},
        ]
    prov = source.provenance
    assert prov["mode"] == "llm"
    assert prov["llm_model"] == "loop-model"
    assert prov["base_url_host"] == "127.0.0.1"
    assert prov["prompt_template"] == LLM_PROMPT_TEMPLATE
    assert prov["cache_hits"] == 0
    assert prov["requests"] == len(MELD)
    assert "Describe the emotion '{label}'" in LLM_PROMPT_TEMPLATE
    assert len(list((tmp_path / "cache").glob("*.json"))) == len(MELD)


def test_cache_hit_makes_no_request_even_with_the_server_gone(server, tmp_path):
    first = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    assert len(server.requests) == len(MELD)
    server.clear()

    second = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    assert server.requests == []
    assert second.descriptions == first.descriptions
    assert second.provenance["cache_hits"] == len(MELD)
    assert second.provenance["requests"] == 0

    # The key does not depend on the server address, and a full cache needs no API key.
    offline = describe_emotions("llm", MELD, "meld", llm=_settings(closed_port_url(), tmp_path, api_key=None))
    assert offline.descriptions == first.descriptions
    assert server.requests == []


def test_cache_is_keyed_by_model_and_prompt(server, tmp_path):
    describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    server.clear()

    other = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path, model="other-model"))
    chats = server.requests_to(CHAT)
    assert len(chats) == len(MELD)
    assert {r.body["model"] for r in chats} == {"other-model"}
    assert other.provenance["cache_hits"] == 0
    server.clear()

    # Same model, another label set: another prompt, so new requests as well.
    subset = ("neutral", "joy")
    describe_emotions("llm", subset, "meld", llm=_settings(server.base_url, tmp_path))
    assert [r.body["messages"][1]["content"] for r in server.requests_to(CHAT)] == [
        _expected_prompt(label, subset) for label in subset
    ]


def test_only_missing_cache_entries_are_requested(server, tmp_path):
    first = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    (tmp_path / "cache" / f"{first.provenance['cache_keys']['fear']}.json").unlink()
    server.clear()

    again = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    chats = server.requests_to(CHAT)
    assert len(chats) == 1
    assert chats[0].body["messages"][1]["content"] == _expected_prompt("fear")
    assert again.provenance["cache_hits"] == len(MELD) - 1
    assert again.descriptions == first.descriptions


def test_unreachable_server_without_cache_says_how_to_proceed(tmp_path):
    with pytest.raises(AnchorSourceError) as info:
        describe_emotions("llm", MELD, "meld", llm=_settings(closed_port_url(), tmp_path))
    message = str(info.value)
    assert "APIConnectionError" in message
    assert "OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL" in message
    assert "--anchors file --descriptions trainer/descriptions/meld.json" in message
    assert "--anchors plain" in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_partial_cache_and_unreachable_server_is_an_error(server, tmp_path):
    first = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    (tmp_path / "cache" / f"{first.provenance['cache_keys']['anger']}.json").unlink()
    with pytest.raises(AnchorSourceError, match=r"no cached answer for \['anger'\]"):
        describe_emotions("llm", MELD, "meld", llm=_settings(closed_port_url(), tmp_path))


def test_rejected_api_key_is_an_anchor_error_without_the_key(server, tmp_path):
    wrong = "sk-wrong-key-9876"
    with pytest.raises(AnchorSourceError) as info:
        describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path, api_key=wrong))
    message = str(info.value)
    assert "AuthenticationError (HTTP 401)" in message
    assert "--anchors plain" in message
    assert wrong not in message
    assert server.requests[0].authorization == f"Bearer {wrong}"


def test_server_error_is_reported_and_retried_by_the_client(server, tmp_path):
    server.fail_next(500)
    with pytest.raises(AnchorSourceError, match=r"InternalServerError \(HTTP 500\)"):
        describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    assert len(server.requests) == 1
    server.clear()

    server.fail_next(500)
    source = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path, max_retries=1))
    assert len(server.requests_to(CHAT)) == len(MELD) + 1  # one retried
    assert source.descriptions["neutral"] == default_chat_reply("neutral", {})


def test_missing_model_or_key_is_an_anchor_error(tmp_path):
    with pytest.raises(AnchorSourceError, match="no LLM model given.*OPENAI_MODEL"):
        describe_emotions("llm", MELD, "meld", llm=LLMSettings(api_key=KEY, cache_dir=tmp_path))
    with pytest.raises(AnchorSourceError, match="no API key"):
        describe_emotions("llm", MELD, "meld", llm=LLMSettings(model="m", cache_dir=tmp_path))


def test_llm_answers_are_cleaned_and_capped(tmp_path):
    def reply(label, body):
        if label == "joy":
            return "abc " * 300
        return f"  \n {label}\tshows\n\n  as   {label}  \x07"

    with OpenAILoopback(api_key=KEY, chat_reply=reply) as srv:
        source = describe_emotions("llm", MELD, "meld", llm=_settings(srv.base_url, tmp_path))
        assert len(srv.requests_to(CHAT)) == len(MELD)
    assert source.descriptions["joy"] == ("abc " * 100).rstrip()
    assert len(source.descriptions["joy"]) == MAX_DESCRIPTION_CHARS - 1
    assert source.descriptions["fear"] == "fear shows as fear"
    cached = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert sorted(e["description"] for e in cached) == sorted(source.descriptions.values())


def test_empty_llm_answer_is_rejected_and_not_cached(tmp_path):
    with OpenAILoopback(api_key=KEY, chat_reply=lambda label, body: " \n\t ") as srv:
        with pytest.raises(AnchorSourceError, match="empty description for 'neutral'"):
            describe_emotions("llm", MELD, "meld", llm=_settings(srv.base_url, tmp_path))
        assert len(srv.requests) == 1
    assert not list((tmp_path / "cache").glob("*.json"))


def test_corrupt_cache_entry_is_asked_again(server, tmp_path):
    first = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    (tmp_path / "cache" / f"{first.provenance['cache_keys']['joy']}.json").write_text("{not json")
    server.clear()
    again = describe_emotions("llm", MELD, "meld", llm=_settings(server.base_url, tmp_path))
    assert len(server.requests) == 1
    assert again.descriptions == first.descriptions


# --------------------------------------------------------------------------- settings and secrets


def test_settings_from_env_and_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://llm.internal:8000/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    settings = LLMSettings.from_env(model=None, timeout_s=5.0, cache_dir=str(tmp_path))
    assert settings.model == "env-model"
    assert settings.base_url == "http://llm.internal:8000/v1"
    assert settings.api_key == KEY
    assert settings.timeout_s == 5.0
    assert settings.cache_dir == tmp_path
    assert settings.host == "llm.internal"
    assert LLMSettings.from_env(model="flag-model").model == "flag-model"
    monkeypatch.setenv("OPENAI_MODEL", "")
    assert LLMSettings.from_env().model is None
    with pytest.raises(ValueError, match=r"unknown settings \['modle'\]"):
        LLMSettings.from_env(modle="x")
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        LLMSettings(timeout_s=0)
    with pytest.raises(ValueError, match="base_url must be an http"):
        LLMSettings(base_url="llm.internal:8000")


def test_api_key_never_appears_in_repr_provenance_or_cache(server, tmp_path):
    settings = _settings(server.base_url, tmp_path)
    assert KEY not in repr(settings)
    assert "api_key='<hidden>'" in repr(settings)
    source = describe_emotions("llm", MELD, "meld", llm=settings)
    assert KEY not in json.dumps(source.provenance)
    assert KEY not in repr(source)
    for entry in (tmp_path / "cache").glob("*.json"):
        assert KEY not in entry.read_text()
    # The key was really used: the server saw it.
    assert {r.authorization for r in server.requests} == {f"Bearer {KEY}"}


# --------------------------------------------------------------------------- file


def _write(path: Path, descriptions: dict, dataset: str = "meld", provenance=None) -> Path:
    doc = {"dataset": dataset, "provenance": provenance or {"author": "test"}, "descriptions": descriptions}
    path.write_text(json.dumps(doc))
    return path


def test_file_mode_loads_descriptions_and_records_provenance(tmp_path):
    texts = {label: f"  {label} in   a line " for label in MELD}
    path = _write(tmp_path / "d.json", texts, provenance={"author": "me", "reviewed": True})
    source = describe_emotions("file", MELD, "meld", descriptions_file=path)
    assert source.descriptions == {label: f"{label} in a line" for label in MELD}
    prov = source.provenance
    assert prov["mode"] == "file"
    assert prov["file"] == str(path)
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["file_provenance"] == {"author": "me", "reviewed": True}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({label: "x" for label in MELD if label != "anger"}, r"missing \['anger'\], extra \[\]"),
        ({**{label: "x" for label in MELD}, "boredom": "x"}, r"missing \[\], extra \['boredom'\]"),
        ({**{label: "x" for label in MELD}, "joy": "   "}, "description of 'joy' is empty"),
        ({**{label: "x" for label in MELD}, "joy": 3}, "description of 'joy' must be a string"),
        ({**{label: "x" for label in MELD}, "joy": "y" * 401}, "'joy' has 401 characters"),
    ],
)
def test_file_mode_validation_errors(tmp_path, content, match):
    path = _write(tmp_path / "d.json", content)
    with pytest.raises(AnchorSourceError, match=match):
        describe_emotions("file", MELD, "meld", descriptions_file=path)


def test_file_mode_structural_errors(tmp_path):
    good = {label: "x" for label in MELD}
    with pytest.raises(AnchorSourceError, match="cannot read descriptions file"):
        describe_emotions("file", MELD, "meld", descriptions_file=tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AnchorSourceError, match="is not valid JSON"):
        describe_emotions("file", MELD, "meld", descriptions_file=tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(AnchorSourceError, match="must be a JSON object"):
        describe_emotions("file", MELD, "meld", descriptions_file=tmp_path / "list.json")
    path = _write(tmp_path / "other.json", good, dataset="dailydialog")
    with pytest.raises(AnchorSourceError, match="is for dataset 'dailydialog', not 'meld'"):
        describe_emotions("file", MELD, "meld", descriptions_file=path)


@pytest.mark.parametrize("dataset", sorted(SHIPPED))
def test_shipped_descriptions_cover_their_dataset(dataset):
    labels = SHIPPED[dataset]
    path = default_descriptions_file(dataset)
    assert path == Path(__file__).resolve().parents[2] / "trainer" / "descriptions" / f"{dataset}.json"
    source = describe_emotions("file", labels, dataset)  # default file
    assert source.labels == labels
    assert list(json.loads(path.read_text())["descriptions"]) == list(labels)
    assert len(set(source.texts)) == len(labels)
    assert all(40 <= len(text) <= MAX_DESCRIPTION_CHARS for text in source.texts)
    assert source.provenance["file_provenance"]["reviewed"] is True
    assert source.provenance["file_provenance"]["date"] == "2026-11-22"


def test_unknown_dataset_has_no_default_file():
    with pytest.raises(AnchorSourceError, match=r"shipped: \['dailydialog', 'emorynlp', 'iemocap', 'meld'\]"):
        default_descriptions_file("nosuch")


# --------------------------------------------------------------------------- embeddings


def test_embeddings_endpoint_returns_rows_in_label_order(tmp_path):
    source = describe_emotions("file", MELD, "meld")
    with OpenAILoopback(api_key=KEY, embedding_dim=8, reverse_embeddings=True) as srv:
        out = embed_descriptions(source, embeddings_model="emb-model", llm=_settings(srv.base_url, tmp_path))
        requests = srv.requests_to(EMBED)
    assert len(requests) == 1
    assert requests[0].authorization == f"Bearer {KEY}"
    assert requests[0].body["model"] == "emb-model"
    assert requests[0].body["input"] == source.texts
    assert out.shape == (len(MELD), 8)
    assert out.dtype == torch.float32
    expected = torch.tensor([loopback_embedding("emb-model", text, 8) for text in source.texts])
    assert torch.equal(out, expected)


def test_embeddings_endpoint_unreachable_is_an_anchor_error(tmp_path):
    source = describe_emotions("plain", MELD, "meld")
    with pytest.raises(AnchorSourceError, match="drop --embeddings-model"):
        embed_descriptions(source, embeddings_model="emb-model", llm=_settings(closed_port_url(), tmp_path))


def test_encoder_embed_gets_the_texts_in_label_order():
    source = describe_emotions("file", MELD, "meld")
    seen: list[list[str]] = []

    def encoder_embed(texts: list[str]) -> torch.Tensor:
        seen.append(texts)
        return torch.tensor([[float(len(t)), float(i)] for i, t in enumerate(texts)])  # (C, 2)

    out = embed_descriptions(source, encoder_embed=encoder_embed)
    assert seen == [source.texts]
    assert out.tolist() == [[float(len(source.descriptions[label])), float(i)] for i, label in enumerate(MELD)]


def test_encoder_embed_output_is_checked():
    source = describe_emotions("plain", MELD, "meld")
    with pytest.raises(ValueError, match=r"shape \(7, H\) for 7 labels, got \(6, 4\)"):
        embed_descriptions(source, encoder_embed=lambda texts: torch.zeros(6, 4))
    with pytest.raises(ValueError, match="non-finite"):
        embed_descriptions(source, encoder_embed=lambda texts: torch.full((7, 4), float("nan")))
    with pytest.raises(ValueError, match="needs encoder_embed or embeddings_model"):
        embed_descriptions(source)


def test_anchor_source_checks_its_fields():
    with pytest.raises(ValueError, match="must cover exactly the labels"):
        AnchorSource(mode="plain", labels=("a", "b"), descriptions={"a": "a"}, provenance={})
    with pytest.raises(ValueError, match="mode must be one of"):
        AnchorSource(mode="x", labels=("a",), descriptions={"a": "a"}, provenance={})
