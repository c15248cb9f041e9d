"""Conversation datasets for emotion recognition, read into one canonical form.

Every loader returns ``list[Conversation]``: conversations in a fixed order, each a tuple
of ``Utterance(speaker, text, label)`` in the order they were spoken. Texts are kept as
they are in the files (MELD's typographic quotes and dashes included); normalisation is
the prompt builder's job (``erc_stream.prompt``), so training and streaming share it.
Labels are the lowercase names in ``DATASETS[name].labels``, whose order fixes class ids.

Where the files are
-------------------
``data_dir`` (an argument, else ``$ERC_DATA_DIR``, else ``../shared/datasets`` relative to
the current directory, i.e. the shared folder when run from the repository root) holds one
folder per dataset::

    <data_dir>/meld/{train,dev,test}_sent_emo.csv            MELD (declare-lab/MELD, data/MELD)
    <data_dir>/emorynlp/emorynlp_{train,dev,test}_final.csv  EmoryNLP (declare-lab/MELD, data/emorynlp)
    <data_dir>/dailydialog/{train,validation,test}/dialogues_{split}.txt
    <data_dir>/dailydialog/{train,validation,test}/dialogues_emotion_{split}.txt
                                   DailyDialog as distributed; the same files directly under
                                   <data_dir>/dailydialog/ are accepted too. Split "dev" is
                                   the distribution's "validation".
    <data_dir>/iemocap/{train,dev,test}.jsonl                 IEMOCAP, converted by you (below)

MELD: CSV (UTF-8, a BOM is fine) with at least the columns ``Utterance, Speaker, Emotion,
Dialogue_ID, Utterance_ID``. A conversation is one Dialogue_ID, its turns ordered by the
integer Utterance_ID. Ids: ``meld-<split>-<Dialogue_ID>``, conversations sorted by that id.

EmoryNLP: CSV with at least ``Utterance, Speaker, Emotion, Scene_ID, Utterance_ID, Season,
Episode``. A conversation is one scene (Season, Episode, Scene_ID), turns ordered by the
integer Utterance_ID; ids ``emorynlp-<split>-s<Season>e<Episode>c<Scene_ID>``, sorted by
(Season, Episode, Scene_ID). Speaker cells are Python list literals such as
``['Monica Geller', 'Phoebe Buffay']``: several speakers are joined with ``" & "``, an empty
list gives ``"unknown"``, and a cell that is not a list of strings is used as written.
Emotions are capitalised in the file (``Joyful``) and lowercased here.

DailyDialog: ``dialogues_<split>.txt`` holds one dialogue per line, utterances each ended by
``__eou__``; line i of ``dialogues_emotion_<split>.txt`` holds one integer per utterance of
dialogue i (0 no emotion -> neutral, 1 anger, 2 disgust, 3 fear, 4 happiness, 5 sadness,
6 surprise). The spaces around each ``__eou__`` are dropped; the text is otherwise as
distributed (tokenised, with spaces before punctuation). Speakers alternate ``A``, ``B``.
Ids: ``dailydialog-<split>-<i>`` with i the 0-based line index.

IEMOCAP (its licence forbids redistribution: request it at https://sail.usc.edu/iemocap/
and convert it yourself). One JSON object per line (UTF-8, blank lines ignored)::

    {"id": "Ses01F_impro01",
     "turns": [{"speaker": "F", "text": "Excuse me.", "label": "neu"},
               {"speaker": "M", "text": "Do you have your forms?", "label": "frustrated"}]}

``id`` is a non-empty string, unique within the file; ``turns`` is a non-empty list in
spoken order; each turn has string fields ``speaker``, ``text`` and ``label`` (other keys
are ignored). ``label`` is one of the six classes, as a short code or a name, any case:
neu/neutral, fru/frustrated/frustration, ang/angry/anger, sad/sadness,
hap/happy/happiness, exc/excited/excitement. Turns with other IEMOCAP labels (xxx, oth,
sur, fea, dis) are not part of the 6-class setup: leave them out when converting.
Conversations keep file order; ids are ``iemocap-<split>-<id>``.

Errors: a missing folder or file raises ``DataNotFoundError`` naming the expected paths,
``$ERC_DATA_DIR`` and where to get the data; an unknown dataset or split name raises
``ConfigError``; a bad label, number or row raises ``ValueError`` naming file, line and value.
A blank speaker becomes ``"unknown"`` in every dataset.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erc_stream.errors import ConfigError, DataNotFoundError

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "SPLITS",
    "UNKNOWN_SPEAKER",
    "Conversation",
    "DatasetSpec",
    "Utterance",
    "available_splits",
    "data_dir_from_env",
    "inverse_frequency",
    "label_counts",
    "load_split",
]

DATA_DIR_ENV = "ERC_DATA_DIR"
DEFAULT_DATA_DIR = Path("../shared/datasets")
SPLITS = ("train", "dev", "test")
UNKNOWN_SPEAKER = "unknown"


@dataclass(frozen=True)
class Utterance:
    """One turn: who spoke, the raw text as in the file, and its canonical label."""

    speaker: str
    text: str
    label: str


@dataclass(frozen=True)
class Conversation:
    """A dialogue (MELD), scene (EmoryNLP), dialogue line (DailyDialog) or session dialogue (IEMOCAP)."""

    id: str
    utterances: tuple[Utterance, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's fixed label order (index = class id) and where to obtain it."""

    name: str
    labels: tuple[str, ...]
    neutral_label: str
    source_url: str

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels: duplicate names in {self.labels!r}")
        if self.neutral_label not in self.labels:
            raise ValueError(f"neutral_label: {self.neutral_label!r} is not one of labels {self.labels!r}")


DATASETS: dict[str, DatasetSpec] = {
    "meld": DatasetSpec(
        name="meld",
        labels=("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"),
        neutral_label="neutral",
        source_url="https://github.com/declare-lab/MELD",
    ),
    "emorynlp": DatasetSpec(
        name="emorynlp",
        labels=("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad"),
        neutral_label="neutral",
        source_url="https://github.com/declare-lab/MELD",
    ),
    "dailydialog": DatasetSpec(
        name="dailydialog",
        labels=("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"),
        neutral_label="neutral",
        source_url="http://yanran.li/dailydialog",
    ),
    "iemocap": DatasetSpec(
        name="iemocap",
        labels=("neutral", "frustrated", "angry", "sad", "happy", "excited"),
        neutral_label="neutral",
        source_url="https://sail.usc.edu/iemocap/",
    ),
}

# What to do to get each dataset, appended to DataNotFoundError messages.
_HOW_TO_GET = {
    "meld": "copy data/MELD/{train,dev,test}_sent_emo.csv from https://github.com/declare-lab/MELD",
    "emorynlp": "copy data/emorynlp/emorynlp_{train,dev,test}_final.csv from https://github.com/declare-lab/MELD",
    "dailydialog": (
        "download ijcnlp_dailydialog.zip from http://yanran.li/dailydialog and unzip its "
        "train.zip, validation.zip and test.zip into the dailydialog folder"
    ),
    "iemocap": (
        "request IEMOCAP at https://sail.usc.edu/iemocap/ (its licence forbids shipping it), then "
        "convert it to the JSONL format described in trainer/datasets.py"
    ),
}

# DailyDialog's emotion codes, by position.
_DAILYDIALOG_CODES = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")

_IEMOCAP_LABELS = {
    "neu": "neutral",
    "neutral": "neutral",
    "fru": "frustrated",
    "frustrated": "frustrated",
    "frustration": "frustrated",
    "ang": "angry",
    "angry": "angry",
    "anger": "angry",
    "sad": "sad",
    "sadness": "sad",
    "hap": "happy",
    "happy": "happy",
    "happiness": "happy",
    "exc": "excited",
    "excited": "excited",
    "excitement": "excited",
}
_IEMOCAP_HINT = (
    " (or the codes neu, fru, ang, sad, hap, exc); turns labelled xxx, oth, sur, fea or dis "
    "are not in the 6-class setup, leave them out when converting"
)


def data_dir_from_env() -> Path:
    """``$ERC_DATA_DIR`` if set and non-empty, else ``../shared/datasets`` (relative to the cwd)."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_DATA_DIR


def load_split(dataset: str, split: str, data_dir: Path | None = None) -> list[Conversation]:
    """Read one split of a dataset into conversations (see the module docstring for formats)."""
    spec = _spec(dataset)
    _check_split(split)
    root = data_dir_from_env() if data_dir is None else Path(data_dir)
    files = _find_files(spec.name, split, root)
    if files is None:
        raise DataNotFoundError(_not_found_message(spec.name, split, root, data_dir is None))
    conversations = _LOADERS[spec.name](files, split)
    if not conversations:
        raise ValueError(
            f"{files[0]}: holds no conversations; the file is empty or truncated, get it again "
            f"({_HOW_TO_GET[spec.name]})"
        )
    return conversations


def available_splits(dataset: str, data_dir: Path | None = None) -> list[str]:
    """The splits of ``dataset`` whose files exist under the data dir, in ``SPLITS`` order."""
    spec = _spec(dataset)
    root = data_dir_from_env() if data_dir is None else Path(data_dir)
    return [split for split in SPLITS if _find_files(spec.name, split, root) is not None]


def label_counts(conversations: Iterable[Conversation], labels: Sequence[str] | None = None) -> dict[str, int]:
    """Utterances per label.

    With ``labels`` (e.g. ``DATASETS["meld"].labels``) the result has exactly those keys in
    that order, zeros included, and a label outside them raises ``ValueError``. Without,
    only the labels seen, most frequent first (ties by name).
    """
    counts = Counter(u.label for conversation in conversations for u in conversation.utterances)
    if labels is None:
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    unknown = sorted(set(counts) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown!r} occur in the conversations but not in labels {tuple(labels)!r}")
    return {label: counts[label] for label in labels}


def inverse_frequency(labels: Sequence[int], n_classes: int) -> list[float]:
    """Each class's weight ``N / (C n_c)`` over class ids ``labels``: 1 for every class of a
    balanced split, above 1 for rare ones (an absent class counts as seen once)."""
    counts = Counter(labels)
    return [len(labels) / (n_classes * max(counts[c], 1)) for c in range(n_classes)]


# --- names and paths ---------------------------------------------------------------------


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise ConfigError(f"dataset: unknown name {dataset!r}; valid names: {', '.join(DATASETS)}") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(
            f"split: unknown name {split!r}; valid names: {', '.join(SPLITS)} (DailyDialog's 'validation' is 'dev')"
        )


def _layouts(dataset: str, split: str, root: Path) -> list[tuple[Path, ...]]:
    """Alternative sets of files that hold one split; the first complete set is read."""
    if dataset == "meld":
        return [(root / "meld" / f"{split}_sent_emo.csv",)]
    if dataset == "emorynlp":
        return [(root / "emorynlp" / f"emorynlp_{split}_final.csv",)]
    if dataset == "dailydialog":
        name = "validation" if split == "dev" else split
        folder = root / "dailydialog"
        return [
            (folder / name / f"dialogues_{name}.txt", folder / name / f"dialogues_emotion_{name}.txt"),
            (folder / f"dialogues_{name}.txt", folder / f"dialogues_emotion_{name}.txt"),
        ]
    return [(root / "iemocap" / f"{split}.jsonl",)]


def _find_files(dataset: str, split: str, root: Path) -> tuple[Path, ...] | None:
    for files in _layouts(dataset, split, root):
        if all(path.is_file() for path in files):
            return files
    return None


def _not_found_message(dataset: str, split: str, root: Path, from_env: bool) -> str:
    if not from_env:
        origin = "the data_dir argument"
    elif os.environ.get(DATA_DIR_ENV, "").strip():
        origin = f"${DATA_DIR_ENV}"
    else:
        origin = f"the default, as ${DATA_DIR_ENV} is not set"
    expected = " or ".join(" + ".join(str(path) for path in files) for files in _layouts(dataset, split, root))
    missing_root = "" if root.is_dir() else f" (the data dir {root} itself does not exist)"
    return (
        f"{dataset} split {split!r} not found: expected {expected}{missing_root}. "
        f"The data dir {root} comes from {origin}; set {DATA_DIR_ENV} to the folder that holds "
        f"{dataset}/. To get the data, {_HOW_TO_GET[dataset]}."
    )


# --- file reading --------------------------------------------------------------------------


def _read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for each CSV record, after checking the header."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if header is None:
                raise ValueError(f"{path}: empty file; expected a header with columns {', '.join(required)}")
            missing = [column for column in required if column not in header]
            if missing:
                raise ValueError(f"{path}: missing columns {', '.join(missing)}; the header has {', '.join(header)}")
            for row in reader:
                if None in row or any(value is None for value in row.values()):
                    raise ValueError(
                        f"{path}, line {reader.line_num}: the record does not have the header's "
                        f"{len(header)} fields; fix the quoting of that line"
                    )
                yield reader.line_num, row
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error}); re-save the file as UTF-8") from None
    except csv.Error as error:
        raise ValueError(f"{path}: malformed CSV ({error})") from None


def _read_text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, trailing blank lines dropped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error}); re-save the file as UTF-8") from None
    # split on "\n" only: str.splitlines would also split on characters such as U+2028
    # that may occur inside an utterance.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"{path}, line {line}: {column} is {value!r}, expected an integer") from None


def _label(value: str, mapping: dict[str, str], path: Path, line: int, dataset: str, hint: str = "") -> str:
    label = mapping.get(value.strip().lower())
    if label is None:
        raise ValueError(
            f"{path}, line {line}: unknown {dataset} label {value!r}; expected one of "
            f"{', '.join(DATASETS[dataset].labels)}{hint}"
        )
    return label


def _speaker(value: str) -> str:
    return value.strip() or UNKNOWN_SPEAKER


def _ordered(groups: dict, path: Path, id_name: str) -> Iterator[tuple[Any, tuple[Utterance, ...]]]:
    """Sort groups of (utterance id, line, utterance) by key, then by utterance id."""
    for key in sorted(groups):
        turns = sorted(groups[key], key=lambda turn: turn[0])
        for (first_id, first_line, _), (second_id, second_line, _) in itertools.pairwise(turns):
            if first_id == second_id:
                raise ValueError(
                    f"{path}, lines {first_line} and {second_line}: {id_name} {first_id} occurs twice "
                    "in one conversation, so the turn order is ambiguous"
                )
        yield key, tuple(utterance for _, _, utterance in turns)


# --- loaders ---------------------------------------------------------------------------------


def _friends_conversations(
    path: Path, dataset: str, required: Sequence[str], key: Sequence[str], speaker: Callable[[str], str]
) -> Iterator[tuple[tuple[int, ...], tuple[Utterance, ...]]]:
    """MELD and EmoryNLP (both Friends transcripts, one CSV row per utterance): the rows grouped
    by the integer ``key`` columns, each group in Utterance_ID order."""
    labels = {label: label for label in DATASETS[dataset].labels}
    groups: dict[tuple[int, ...], list[tuple[int, int, Utterance]]] = {}
    for line, row in _read_csv(path, required):
        group = tuple(_int(row[column], path, line, column) for column in key)
        utterance_id = _int(row["Utterance_ID"], path, line, "Utterance_ID")
        utterance = Utterance(
            speaker=speaker(row["Speaker"]),
            text=row["Utterance"],
            label=_label(row["Emotion"], labels, path, line, dataset),
        )
        groups.setdefault(group, []).append((utterance_id, line, utterance))
    return _ordered(groups, path, "Utterance_ID")


def _load_meld(files: tuple[Path, ...], split: str) -> list[Conversation]:
    (path,) = files
    required = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
    return [
        Conversation(id=f"meld-{split}-{dialogue_id}", utterances=utterances)
        for (dialogue_id,), utterances in _friends_conversations(path, "meld", required, ("Dialogue_ID",), _speaker)
    ]


def _emorynlp_speaker(value: str) -> str:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, list) and all(isinstance(name, str) for name in parsed):
            names = [name.strip() for name in parsed if name.strip()]
            return " & ".join(names) if names else UNKNOWN_SPEAKER
    return _speaker(text)


def _load_emorynlp(files: tuple[Path, ...], split: str) -> list[Conversation]:
    (path,) = files
    required = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
    key = ("Season", "Episode", "Scene_ID")
    return [
        Conversation(id=f"emorynlp-{split}-s{season}e{episode}c{scene_id}", utterances=utterances)
        for (season, episode, scene_id), utterances in _friends_conversations(
            path, "emorynlp", required, key, _emorynlp_speaker
        )
    ]


def _load_dailydialog(files: tuple[Path, ...], split: str) -> list[Conversation]:
    text_path, emotion_path = files
    dialogues = _read_text_lines(text_path)
    emotions = _read_text_lines(emotion_path)
    if len(dialogues) != len(emotions):
        raise ValueError(
            f"{text_path} has {len(dialogues)} dialogue lines but {emotion_path} has {len(emotions)} "
            "emotion lines; the two files pair line by line, take both from the same download"
        )
    conversations = []
    for index, (dialogue, codes) in enumerate(zip(dialogues, emotions, strict=True)):
        line = index + 1
        pieces = dialogue.split("__eou__")
        # Every utterance ends with __eou__, so the last piece is normally blank; keep it only
        # if someone left the final terminator off.
        if not pieces[-1].strip():
            pieces.pop()
        if not pieces:
            raise ValueError(f"{text_path}, line {line}: no utterances (blank line inside the file)")
        texts = [piece.strip() for piece in pieces]
        labels = [_dailydialog_label(code, emotion_path, line) for code in codes.split()]
        if len(labels) != len(texts):
            raise ValueError(
                f"{text_path}, line {line} has {len(texts)} utterances but {emotion_path}, line {line} "
                f"has {len(labels)} emotion codes; they must match one to one"
            )
        utterances = tuple(
            Utterance(speaker="AB"[turn % 2], text=text, label=label)
            for turn, (text, label) in enumerate(zip(texts, labels, strict=True))
        )
        conversations.append(Conversation(id=f"dailydialog-{split}-{index}", utterances=utterances))
    return conversations


def _dailydialog_label(code: str, path: Path, line: int) -> str:
    if code.isascii() and code.isdigit() and int(code) < len(_DAILYDIALOG_CODES):
        return _DAILYDIALOG_CODES[int(code)]
    raise ValueError(
        f"{path}, line {line}: unknown dailydialog emotion code {code!r}; expected an integer 0-6 "
        "(0 no emotion, 1 anger, 2 disgust, 3 fear, 4 happiness, 5 sadness, 6 surprise)"
    )


def _load_iemocap(files: tuple[Path, ...], split: str) -> list[Conversation]:
    (path,) = files
    conversations = []
    first_line: dict[str, int] = {}
    for index, raw in enumerate(_read_text_lines(path)):
        line = index + 1
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {line}: not valid JSON ({error.msg} at column {error.colno})") from None
        conversation_id, turns = _iemocap_record(record, path, line)
        if conversation_id in first_line:
            raise ValueError(
                f"{path}, lines {first_line[conversation_id]} and {line}: id {conversation_id!r} occurs twice"
            )
        first_line[conversation_id] = line
        utterances = tuple(
            Utterance(
                speaker=_speaker(turn["speaker"]),
                text=turn["text"],
                label=_label(turn["label"], _IEMOCAP_LABELS, path, line, "iemocap", _IEMOCAP_HINT),
            )
            for turn in turns
        )
        conversations.append(Conversation(id=f"iemocap-{split}-{conversation_id}", utterances=utterances))
    return conversations


def _iemocap_record(record: object, path: Path, line: int) -> tuple[str, list[dict[str, str]]]:
    """Check one JSONL record's shape; return its id and turns."""
    where = f"{path}, line {line}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with 'id' and 'turns', got {type(record).__name__}")
    conversation_id = record.get("id")
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        raise ValueError(f"{where}: 'id' must be a non-empty string, got {conversation_id!r}")
    turns = record.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'turns' must be a non-empty list, got {turns!r:.80}")
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: turn {number} must be an object, got {turn!r:.80}")
        for field in ("speaker", "text", "label"):
            if not isinstance(turn.get(field), str):
                raise ValueError(
                    f"{where}: turn {number} field {field!r} must be a string, got {turn.get(field)!r:.80}"
                )
    return conversation_id, turns


_LOADERS: dict[str, Callable[[tuple[Path, ...], str], list[Conversation]]] = {
    "meld": _load_meld,
    "emorynlp": _load_emorynlp,
    "dailydialog": _load_dailydialog,
    "iemocap": _load_iemocap,
}
