"""Emotion-anchor descriptions: where the text behind each emotion anchor comes from.

Three sources, chosen by ``mode``:

- ``plain``: the label word itself, as in EACL (``"joy"``).
- ``llm``: an LLM writes a one-or-two-sentence description of each emotion
  through the official ``openai`` client (any OpenAI-compatible server).
  Answers are cached on disk, one JSON file per (model, prompt); a cache hit
  makes no request, so a run can be repeated offline once the cache is filled.
- ``file``: descriptions from a reviewed JSON file
  (``trainer/descriptions/<dataset>.json`` ships with the package).

:func:`embed_descriptions` then turns the descriptions into one vector per
label, either with the trainer's encoder or with an OpenAI-compatible
embeddings endpoint. Every source records a JSON-serialisable provenance that
goes into the model artifact's manifest (never the API key).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from erc_stream.errors import AnchorSourceError

__all__ = [
    "ANCHOR_MODES",
    "LLM_PROMPT_TEMPLATE",
    "LLM_SYSTEM_PROMPT",
    "MAX_DESCRIPTION_CHARS",
    "AnchorSource",
    "LLMSettings",
    "default_descriptions_file",
    "describe_emotions",
    "embed_descriptions",
]

ANCHOR_MODES = ("plain", "llm", "file")

#: Longest description kept from an LLM answer or accepted from a file, in characters.
MAX_DESCRIPTION_CHARS = 400

LLM_SYSTEM_PROMPT = (
    "You write short, precise descriptions of emotions for an emotion-recognition model. "
    "Answer with the description only: no preamble, no list, no quotation marks."
)

#: The user prompt sent once per label; ``{label}`` and ``{labels}`` are filled in.
LLM_PROMPT_TEMPLATE = (
    "Describe the emotion '{label}' as it shows in a line of everyday conversation: "
    "the wording, phrases and cues that reveal it, and what sets it apart from the other "
    "emotions in this label set: {labels}. Answer in one or two sentences."
)

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_DATASET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_DESCRIPTIONS_DIR = Path(__file__).resolve().parent / "descriptions"


def _guidance(dataset: str) -> str:
    return (
        "To proceed, either set OPENAI_BASE_URL, OPENAI_API_KEY and OPENAI_MODEL to a reachable "
        "OpenAI-compatible server (any non-empty key for servers without auth), "
        f"or use the shipped hand-written descriptions with `--anchors file --descriptions "
        f"trainer/descriptions/{dataset}.json`, or use the label words themselves with `--anchors plain`."
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, repr=False)
class LLMSettings:
    """How to reach an OpenAI-compatible server (chat for descriptions, embeddings).

    ``api_key`` is never shown by ``repr`` and never written to provenance or cache.
    ``max_retries`` is passed to the ``openai`` client (its own backoff between tries).
    """

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 30.0
    cache_dir: Path = Path(".cache/erc-anchors")
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"LLMSettings.timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"LLMSettings.max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.model is not None and not self.model.strip():
            raise ValueError(f"LLMSettings.model must be a non-empty model name or None, got {self.model!r}")
        if self.base_url is not None and urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(
                f"LLMSettings.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}"
            )
        if not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Settings from OPENAI_MODEL, OPENAI_BASE_URL and OPENAI_API_KEY.

        Keyword overrides win over the environment; an override whose value is
        None is ignored, so CLI flag values can be passed straight through.
        Empty environment variables count as unset.
        """
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"LLMSettings.from_env got unknown settings {unknown}; known: {sorted(known)}")
        values: dict[str, Any] = {
            "model": os.environ.get("OPENAI_MODEL") or None,
            "base_url": os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": os.environ.get("OPENAI_API_KEY") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def effective_base_url(self) -> str:
        """``base_url``, or the official OpenAI endpoint when unset."""
        return self.base_url or _DEFAULT_BASE_URL

    @property
    def host(self) -> str:
        """Host name of the server only (no scheme, credentials, path or query)."""
        return urlsplit(self.effective_base_url).hostname or ""

    def __repr__(self) -> str:
        key = "'<hidden>'" if self.api_key else "None"
        return (
            f"LLMSettings(model={self.model!r}, base_url={self.base_url!r}, api_key={key}, "
            f"timeout_s={self.timeout_s!r}, cache_dir={str(self.cache_dir)!r}, max_retries={self.max_retries!r})"
        )


@dataclass(frozen=True)
class AnchorSource:
    """The text behind each emotion anchor and where it came from.

    ``descriptions`` maps every label (and nothing else) to the text that gets
    embedded; ``provenance`` is JSON-serialisable and holds no secrets.
    """

    mode: str
    labels: tuple[str, ...]
    descriptions: dict[str, str]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ANCHOR_MODES:
            raise ValueError(f"AnchorSource.mode must be one of {ANCHOR_MODES}, got {self.mode!r}")
        if set(self.descriptions) != set(self.labels):
            raise ValueError(
                f"AnchorSource.descriptions must cover exactly the labels {list(self.labels)}, "
                f"got {sorted(self.descriptions)}"
            )

    @property
    def texts(self) -> list[str]:
        """The descriptions in label order."""
        return [self.descriptions[label] for label in self.labels]


# --------------------------------------------------------------------------- public API


def default_descriptions_file(dataset: str) -> Path:
    """The reviewed descriptions shipped for ``dataset``: ``trainer/descriptions/<dataset>.json``."""
    _check_dataset_name(dataset)
    path = _DESCRIPTIONS_DIR / f"{dataset}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in _DESCRIPTIONS_DIR.glob("*.json"))
        raise AnchorSourceError(
            f"no shipped descriptions file for dataset {dataset!r} (looked for {path}); shipped: {shipped}. "
            "Pass your own with `--anchors file --descriptions PATH.json`, or use `--anchors plain`."
        )
    return path


def describe_emotions(
    mode: str,
    labels: Sequence[str],
    dataset: str,
    *,
    llm: LLMSettings | None = None,
    descriptions_file: Path | None = None,
) -> AnchorSource:
    """Get one description per label from the source ``mode`` (see the module docstring).

    ``llm`` defaults to :meth:`LLMSettings.from_env`; ``descriptions_file``
    defaults to :func:`default_descriptions_file`. Raises AnchorSourceError
    when the source cannot deliver (no LLM and no cache, bad file).
    """
    if mode not in ANCHOR_MODES:
        raise ValueError(f"anchor mode must be one of {ANCHOR_MODES}, got {mode!r}")
    label_tuple = _check_labels(labels)
    _check_dataset_name(dataset)
    if mode == "plain":
        return AnchorSource(
            mode="plain",
            labels=label_tuple,
            descriptions={label: label for label in label_tuple},
            provenance={"mode": "plain", "dataset": dataset, "created_at": _now_iso()},
        )
    if mode == "file":
        path = Path(descriptions_file) if descriptions_file is not None else default_descriptions_file(dataset)
        return _from_file(path, label_tuple, dataset)
    return _from_llm(label_tuple, dataset, llm if llm is not None else LLMSettings.from_env())


def embed_descriptions(
    source: AnchorSource,
    *,
    encoder_embed: Callable[[list[str]], Tensor] | None = None,
    embeddings_model: str | None = None,
    llm: LLMSettings | None = None,
) -> Tensor:
    """One embedding per label, in label order: ``(C, E)``.

    With ``embeddings_model`` the descriptions go to the OpenAI-compatible
    ``/embeddings`` endpoint of ``llm`` (default :meth:`LLMSettings.from_env`)
    and a float32 tensor comes back; otherwise ``encoder_embed(texts)`` is
    called and its ``(C, H)`` output returned as is (gradients kept).
    """
    texts = source.texts
    if embeddings_model is not None:
        return _embed_remote(source, texts, embeddings_model, llm if llm is not None else LLMSettings.from_env())
    if encoder_embed is None:
        raise ValueError("embed_descriptions needs encoder_embed or embeddings_model; both are None")
    out = encoder_embed(texts)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(texts):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"encoder_embed must return a tensor of shape ({len(texts)}, H) for {len(texts)} labels, got {shape}"
        )
    if not torch.isfinite(out).all():
        raise ValueError("encoder_embed returned non-finite values (NaN or inf) for the anchor descriptions")
    return out  # (C, H)


# --------------------------------------------------------------------------- helpers


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if isinstance(labels, str):
        raise ValueError(f"labels must be a sequence of label strings, got the single string {labels!r}")
    label_tuple = tuple(labels)
    if not label_tuple:
        raise ValueError("labels must not be empty")
    bad = [label for label in label_tuple if not isinstance(label, str) or not label.strip()]
    if bad:
        raise ValueError(f"labels must be non-empty strings, got {bad!r}")
    duplicates = sorted({label for label in label_tuple if label_tuple.count(label) > 1})
    if duplicates:
        raise ValueError(f"labels must be unique, got duplicates {duplicates}")
    return label_tuple


def _check_dataset_name(dataset: str) -> None:
    if not isinstance(dataset, str) or not _DATASET_NAME_RE.match(dataset):
        raise ValueError(
            f"dataset must be a lower-case name such as 'meld' (letters, digits, '-', '_'), got {dataset!r}"
        )


def _clean(text: str) -> str:
    """Collapse all whitespace to single spaces, drop control characters, cap the length."""
    collapsed = " ".join(str(text).split())
    printable = "".join(ch for ch in collapsed if unicodedata.category(ch) != "Cc")
    return printable[:MAX_DESCRIPTION_CHARS].rstrip()


# file mode -------------------------------------------------------------------------


def _from_file(path: Path, labels: tuple[str, ...], dataset: str) -> AnchorSource:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnchorSourceError(
            f"cannot read descriptions file {path}: {exc.strerror or exc}. Check the --descriptions path, "
            f"or use the shipped one: trainer/descriptions/{dataset}.json"
        ) from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnchorSourceError(f"descriptions file {path} is not valid JSON: {exc}") from exc
    expected_shape = '{"dataset": ..., "provenance": {...}, "descriptions": {label: text}}'
    if not isinstance(data, dict) or not isinstance(data.get("descriptions"), dict):
        raise AnchorSourceError(f"descriptions file {path} must be a JSON object {expected_shape}")
    file_dataset = data.get("dataset")
    if not isinstance(file_dataset, str):
        raise AnchorSourceError(f"descriptions file {path} needs a string 'dataset' field: {expected_shape}")
    if file_dataset != dataset:
        raise AnchorSourceError(
            f"descriptions file {path} is for dataset {file_dataset!r}, not {dataset!r}; "
            f"pass the file written for {dataset!r}"
        )
    file_provenance = data.get("provenance", {})
    if not isinstance(file_provenance, dict):
        raise AnchorSourceError(
            f"descriptions file {path}: 'provenance' must be a JSON object, got {file_provenance!r}"
        )

    given: dict = data["descriptions"]
    missing = [label for label in labels if label not in given]
    extra = sorted(key for key in given if key not in labels)
    if missing or extra:
        raise AnchorSourceError(
            f"descriptions file {path} must describe exactly the labels of {dataset} {list(labels)}: "
            f"missing {missing}, extra {extra}"
        )
    descriptions: dict[str, str] = {}
    for label in labels:
        text = given[label]
        if not isinstance(text, str):
            raise AnchorSourceError(
                f"descriptions file {path}: description of {label!r} must be a string, got {text!r}"
            )
        collapsed = " ".join(text.split())
        if not collapsed:
            raise AnchorSourceError(f"descriptions file {path}: description of {label!r} is empty")
        if len(collapsed) > MAX_DESCRIPTION_CHARS:
            raise AnchorSourceError(
                f"descriptions file {path}: description of {label!r} has {len(collapsed)} characters, "
                f"more than {MAX_DESCRIPTION_CHARS}; shorten it to one or two sentences"
            )
        descriptions[label] = _clean(collapsed)
    return AnchorSource(
        mode="file",
        labels=labels,
        descriptions=descriptions,
        provenance={
            "mode": "file",
            "dataset": dataset,
            "file": str(path),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "file_provenance": file_provenance,
            "created_at": _now_iso(),
        },
    )


# llm mode ----------------------------------------------------------------------------


def _messages(label: str, labels: tuple[str, ...]) -> list[dict[str, str]]:
    prompt = LLM_PROMPT_TEMPLATE.format(label=label, labels=", ".join(labels))
    return [{"role": "system", "content": LLM_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]


def _cache_key(model: str, messages: list[dict[str, str]]) -> str:
    # The server address is deliberately not part of the key: the same model
    # behind another URL gives an equivalent answer, and moving servers should not refill the cache.
    payload = json.dumps({"model": model, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _cache_read(path: Path, model: str, messages: list[dict[str, str]]) -> str | None:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or unreadable: treat as a miss and ask again
    if not isinstance(entry, dict) or entry.get("model") != model or entry.get("messages") != messages:
        return None
    text = entry.get("description")
    if not isinstance(text, str):
        return None
    return _clean(text) or None


def _cache_write(path: Path, model: str, messages: list[dict[str, str]], text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"model": model, "messages": messages, "description": text, "created_at": _now_iso()}
    # Write then rename, so a crash never leaves a half-written entry behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(entry, fh, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _client(settings: LLMSettings, dataset: str, what: str) -> Any:
    import openai  # imported here: plain and file modes do not need it

    if not settings.api_key:
        raise AnchorSourceError(f"no API key for the {what} at {settings.host}. " + _guidance(dataset))
    return openai.OpenAI(
        base_url=settings.effective_base_url,
        api_key=settings.api_key,
        timeout=settings.timeout_s,
        max_retries=settings.max_retries,
    )


def _describe_api_error(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    return f"{name} (HTTP {status})" if status is not None else name


def _from_llm(labels: tuple[str, ...], dataset: str, settings: LLMSettings) -> AnchorSource:
    import openai

    if not settings.model:
        raise AnchorSourceError("no LLM model given for --anchors llm (flag or OPENAI_MODEL). " + _guidance(dataset))
    model = settings.model
    descriptions: dict[str, str] = {}
    cache_keys: dict[str, str] = {}
    misses: list[str] = []
    for label in labels:
        key = _cache_key(model, _messages(label, labels))
        cache_keys[label] = key
        cached = _cache_read(settings.cache_dir / f"{key}.json", model, _messages(label, labels))
        if cached is None:
            misses.append(label)
        else:
            descriptions[label] = cached

    if misses:
        client = _client(settings, dataset, "LLM")
        for label in misses:
            messages = _messages(label, labels)
            try:
                response = client.chat.completions.create(model=model, messages=messages)
            except openai.OpenAIError as exc:
                raise AnchorSourceError(
                    f"could not get a description of {label!r} from the LLM {model!r} at {settings.host}: "
                    f"{_describe_api_error(exc)}; no cached answer for {misses}. " + _guidance(dataset)
                ) from exc
            content = response.choices[0].message.content if response.choices else None
            text = _clean(content or "")
            if not text:
                raise AnchorSourceError(
                    f"the LLM {model!r} at {settings.host} returned an empty description for {label!r}. "
                    + _guidance(dataset)
                )
            _cache_write(settings.cache_dir / f"{cache_keys[label]}.json", model, messages, text)
            descriptions[label] = text

    return AnchorSource(
        mode="llm",
        labels=labels,
        descriptions={label: descriptions[label] for label in labels},
        provenance={
            "mode": "llm",
            "dataset": dataset,
            "llm_model": model,
            "base_url_host": settings.host,
            "system_prompt": LLM_SYSTEM_PROMPT,
            "prompt_template": LLM_PROMPT_TEMPLATE,
            "max_description_chars": MAX_DESCRIPTION_CHARS,
            "cache_keys": cache_keys,
            "cache_hits": len(labels) - len(misses),
            "requests": len(misses),
            "created_at": _now_iso(),
        },
    )


# embeddings endpoint -------------------------------------------------------------------


def _embed_remote(source: AnchorSource, texts: list[str], model: str, settings: LLMSettings) -> Tensor:
    import openai

    dataset = str(source.provenance.get("dataset", "<dataset>"))
    client = _client(settings, dataset, "embeddings endpoint")
    try:
        response = client.embeddings.create(model=model, input=texts, encoding_format="float")
    except openai.OpenAIError as exc:
        raise AnchorSourceError(
            f"could not embed the anchor descriptions with {model!r} at {settings.host}: "
            f"{_describe_api_error(exc)}. Set OPENAI_BASE_URL/OPENAI_API_KEY to a reachable server "
            "with that embeddings model, or drop --embeddings-model to embed with the encoder."
        ) from exc
    items = sorted(response.data, key=lambda item: item.index)  # the API does not promise input order
    if [item.index for item in items] != list(range(len(texts))):
        raise AnchorSourceError(
            f"the embeddings endpoint returned indices {[item.index for item in items]} "
            f"for {len(texts)} inputs; expected 0..{len(texts) - 1}"
        )
    dims = {len(item.embedding) for item in items}
    if len(dims) != 1 or 0 in dims:
        raise AnchorSourceError(f"the embeddings endpoint returned vectors of differing or zero length {sorted(dims)}")
    out = torch.tensor([list(item.embedding) for item in items], dtype=torch.float32)  # (C, E)
    if not torch.isfinite(out).all():
        raise AnchorSourceError(f"the embeddings endpoint returned non-finite values for model {model!r}")
    return out
