"""trainer.datasets: the real MELD/EmoryNLP files, and small DailyDialog/IEMOCAP fixtures.

The expected counts below were computed independently of the loader, from the shell:
``wc -l`` (no record spans two lines) for utterances, and for conversations the sorted
unique Dialogue_ID column (MELD: 8th comma field from the right) or unique
(Season, Episode, Scene_ID) triples (EmoryNLP).
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from erc_stream.errors import ConfigError, DataNotFoundError
from trainer.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DEFAULT_DATA_DIR,
    SPLITS,
    Conversation,
    DatasetSpec,
    Utterance,
    available_splits,
    data_dir_from_env,
    label_counts,
    load_split,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "datasets"


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    root = data_dir_from_env()
    if not (root / "meld" / "train_sent_emo.csv").is_file() or not (root / "emorynlp").is_dir():
        pytest.skip(f"MELD/EmoryNLP not found under {root.resolve()}: set {DATA_DIR_ENV} to the shared datasets")
    return root


@pytest.fixture(scope="module")
def meld_train(shared_dir: Path) -> list[Conversation]:
    return load_split("meld", "train", shared_dir)


@pytest.fixture(scope="module")
def emorynlp_train(shared_dir: Path) -> list[Conversation]:
    return load_split("emorynlp", "train", shared_dir)


def _size(conversations: list[Conversation]) -> tuple[int, int]:
    return len(conversations), sum(len(c.utterances) for c in conversations)


def _write_csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


# --- MELD (real data) --------------------------------------------------------------------------


def test_meld_sizes(shared_dir: Path, meld_train: list[Conversation]) -> None:
    assert _size(meld_train) == (1038, 9989)
    assert _size(load_split("meld", "dev", shared_dir)) == (114, 1109)


def test_meld_first_dialogue_exact(meld_train: list[Conversation]) -> None:
    first = meld_train[0]
    assert first.id == "meld-train-0"
    assert len(first.utterances) == 14
    # Raw text: the typographic apostrophe stays (normalisation belongs to the prompt builder).
    assert first.utterances[0] == Utterance(
        speaker="Chandler",
        text="also I was the point person on my company\u2019s transition from the KL-5 to GR-6 system.",
        label="neutral",
    )
    assert first.utterances[4] == Utterance(speaker="Chandler", text="My duties?  All right.", label="surprise")
    assert first.utterances[10] == Utterance(speaker="Chandler", text="No don\u2019t I beg of you!", label="fear")
    assert first.utterances[13].speaker == "The Interviewer"


def test_meld_conversation_ids_sorted_numerically(meld_train: list[Conversation]) -> None:
    ids = [int(c.id.removeprefix("meld-train-")) for c in meld_train]
    assert ids == sorted(ids)
    assert ids[:3] == [0, 1, 2]
    assert 60 not in ids  # dialogue 60 is absent from MELD's train file
    assert ids[-1] == 1038


def test_meld_label_counts(meld_train: list[Conversation]) -> None:
    assert label_counts(meld_train, DATASETS["meld"].labels) == {
        "neutral": 4710,
        "surprise": 1205,
        "fear": 268,
        "sadness": 683,
        "joy": 1743,
        "disgust": 271,
        "anger": 1109,
    }


def test_meld_orders_by_integer_utterance_id(shared_dir: Path, tmp_path: Path) -> None:
    """Rows shuffled in the file come back in Utterance_ID order (10 after 9, not after 1)."""
    header, rows = _read_csv(shared_dir / "meld" / "dev_sent_emo.csv")
    dialogue = header.index("Dialogue_ID")
    kept = [row for row in rows if row[dialogue] in {"0", "1"}]
    assert len(kept) > 11
    _write_csv(tmp_path / "meld" / "dev_sent_emo.csv", header, list(reversed(kept)))

    shuffled = load_split("meld", "dev", tmp_path)
    original = [c for c in load_split("meld", "dev", shared_dir) if c.id in {"meld-dev-0", "meld-dev-1"}]
    assert shuffled == original
    assert max(len(c.utterances) for c in shuffled) > 10

    # Cross-check against the file rows, sorted by integer Utterance_ID.
    utterance_id, text = header.index("Utterance_ID"), header.index("Utterance")
    for conversation in shuffled:
        rows_of = [row for row in kept if f"meld-dev-{row[dialogue]}" == conversation.id]
        expected = [row[text] for row in sorted(rows_of, key=lambda r: int(r[utterance_id]))]
        assert [u.text for u in conversation.utterances] == expected


def test_meld_test_split_loads_when_present(shared_dir: Path, tmp_path: Path) -> None:
    header, rows = _read_csv(shared_dir / "meld" / "dev_sent_emo.csv")
    (tmp_path / "meld").mkdir()
    shutil.copy(shared_dir / "meld" / "train_sent_emo.csv", tmp_path / "meld" / "train_sent_emo.csv")
    assert available_splits("meld", tmp_path) == ["train"]
    # Write the copy with a BOM, as Excel would.
    with (tmp_path / "meld" / "test_sent_emo.csv").open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows[:6])

    assert available_splits("meld", tmp_path) == ["train", "test"]
    test = load_split("meld", "test", tmp_path)
    dialogue, text = header.index("Dialogue_ID"), header.index("Utterance")
    assert [c.id for c in test] == [f"meld-test-{d}" for d in sorted({int(row[dialogue]) for row in rows[:6]})]
    assert [u.text for c in test for u in c.utterances] == [row[text] for row in rows[:6]]


def test_meld_unknown_label_names_file_line_and_value(tmp_path: Path) -> None:
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]
    rows = [
        ["1", "Hi.", "Ross", "neutral", "neutral", "0", "0"],
        ["2", "Hello!", "Rachel", "happy", "positive", "0", "1"],
    ]
    _write_csv(tmp_path / "meld" / "train_sent_emo.csv", header, rows)
    with pytest.raises(ValueError) as error:
        load_split("meld", "train", tmp_path)
    message = str(error.value)
    assert "train_sent_emo.csv, line 3" in message
    assert "'happy'" in message
    assert "neutral, surprise, fear, sadness, joy, disgust, anger" in message


def test_meld_bad_rows_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "meld" / "dev_sent_emo.csv"
    _write_csv(path, ["Utterance", "Speaker", "Emotion", "Dialogue_ID"], [["Hi.", "Ross", "neutral", "0"]])
    with pytest.raises(ValueError, match="missing columns Utterance_ID"):
        load_split("meld", "dev", tmp_path)

    header = ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]
    _write_csv(path, header, [["Hi.", "Ross", "neutral", "0", "0"], ["Hey.", "Joey", "joy", "0", "0"]])
    with pytest.raises(ValueError, match="lines 2 and 3: Utterance_ID 0 occurs twice"):
        load_split("meld", "dev", tmp_path)

    _write_csv(path, header, [["Hi.", "Ross", "neutral", "zero", "0"]])
    with pytest.raises(ValueError, match="line 2: Dialogue_ID is 'zero', expected an integer"):
        load_split("meld", "dev", tmp_path)

    _write_csv(path, header, [["Hi.", "Ross", "neutral", "0"]])
    with pytest.raises(ValueError, match="line 2: the record does not have the header's 5 fields"):
        load_split("meld", "dev", tmp_path)

    _write_csv(path, header, [])
    with pytest.raises(ValueError, match="holds no conversations"):
        load_split("meld", "dev", tmp_path)

    path.write_bytes(b"Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\nCaf\xe9,Ross,neutral,0,0\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_split("meld", "dev", tmp_path)


def test_meld_speaker_whitespace_and_bom(tmp_path: Path) -> None:
    header = ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]
    _write_csv(
        tmp_path / "meld" / "dev_sent_emo.csv",
        header,
        [[" Hi. ", " Ross ", "Neutral", "3", "0"], ["Oh.", "  ", "sadness", "3", "1"]],
        encoding="utf-8-sig",  # a BOM before the first column name, as Excel writes it
    )
    (conversation,) = load_split("meld", "dev", tmp_path)
    assert conversation == Conversation(
        id="meld-dev-3",
        utterances=(Utterance("Ross", " Hi. ", "neutral"), Utterance("unknown", "Oh.", "sadness")),
    )


# --- EmoryNLP (real data) ----------------------------------------------------------------------


def test_emorynlp_sizes(shared_dir: Path, emorynlp_train: list[Conversation]) -> None:
    assert _size(emorynlp_train) == (659, 7551)
    assert _size(load_split("emorynlp", "dev", shared_dir)) == (89, 954)


def test_emorynlp_first_scene_and_order(emorynlp_train: list[Conversation]) -> None:
    first = emorynlp_train[0]
    assert first.id == "emorynlp-train-s1e2c1"
    assert first.utterances[0] == Utterance(
        speaker="Monica Geller",
        text="What you guys don't understand is, for us, kissing is as important as any part of it.",
        label="joyful",
    )
    assert first.utterances[1] == Utterance("Joey Tribbiani", "Yeah, right!.......Y'serious?", "neutral")
    assert emorynlp_train[-1].id == "emorynlp-train-s4e24c17"


def test_emorynlp_multiple_speakers(emorynlp_train: list[Conversation]) -> None:
    scene = next(c for c in emorynlp_train if c.id == "emorynlp-train-s1e4c12")
    assert [u.speaker for u in scene.utterances[:6]] == [
        "Monica Geller",
        "Rachel Green",
        "Monica Geller",
        "Rachel Green",
        "Monica Geller & Phoebe Buffay",
        "Rachel Green",
    ]
    assert scene.utterances[4] == Utterance("Monica Geller & Phoebe Buffay", "Shut up!", "mad")
    speakers = {u.speaker for c in emorynlp_train for u in c.utterances}
    assert "Joey Tribbiani & Monica Geller & Phoebe Buffay" in speakers
    assert not any(s.startswith("[") for s in speakers)


def test_emorynlp_label_counts(emorynlp_train: list[Conversation]) -> None:
    assert label_counts(emorynlp_train, DATASETS["emorynlp"].labels) == {
        "neutral": 2485,
        "joyful": 1677,
        "peaceful": 638,
        "powerful": 551,
        "scared": 941,
        "mad": 785,
        "sad": 474,
    }


def test_emorynlp_speaker_cells(tmp_path: Path) -> None:
    header = ["Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode"]
    rows = [
        ["a", "['Ross Geller']", "Sad", "2", "3", "1", "10"],
        ["b", "[]", "Mad", "2", "1", "1", "10"],
        ["c", "Gunther", "Scared", "2", "2", "1", "10"],
        ["d", "['Ross', 3]", "Powerful", "2", "4", "1", "10"],
        ["e", "[not python", "Peaceful", "2", "5", "1", "10"],
        ["f", "[' Ross ', 'Joey']", "Joyful", "1", "1", "1", "9"],
    ]
    _write_csv(tmp_path / "emorynlp" / "emorynlp_dev_final.csv", header, rows)
    first, second = load_split("emorynlp", "dev", tmp_path)
    assert first == Conversation("emorynlp-dev-s1e9c1", (Utterance("Ross & Joey", "f", "joyful"),))
    assert second.id == "emorynlp-dev-s1e10c2"
    assert second.utterances == (
        Utterance("unknown", "b", "mad"),
        Utterance("Gunther", "c", "scared"),
        Utterance("Ross Geller", "a", "sad"),
        Utterance("['Ross', 3]", "d", "powerful"),
        Utterance("[not python", "e", "peaceful"),
    )


def test_label_sets_are_complete(meld_train: list[Conversation], emorynlp_train: list[Conversation]) -> None:
    for name, conversations in (("meld", meld_train), ("emorynlp", emorynlp_train)):
        seen = {u.label for c in conversations for u in c.utterances}
        assert seen == set(DATASETS[name].labels)


def test_shared_splits_available(shared_dir: Path) -> None:
    assert available_splits("meld", shared_dir) == ["train", "dev"]
    assert available_splits("emorynlp", shared_dir) == ["train", "dev"]


# --- DailyDialog (fixture in the distributed layout) -------------------------------------------


def test_dailydialog_train_fixture() -> None:
    conversations = load_split("dailydialog", "train", FIXTURES)
    assert [c.id for c in conversations] == ["dailydialog-train-0", "dailydialog-train-1", "dailydialog-train-2"]
    assert conversations[1].utterances == (
        Utterance("A", "I failed my driving test again !", "sadness"),
        Utterance("B", "Oh no , what happened ?", "fear"),
        Utterance("A", "I hit the curb while parking . I hate this .", "anger"),
        Utterance("B", "Don't worry , you'll pass next time .", "neutral"),
    )
    assert [u.label for u in conversations[2].utterances] == ["happiness", "surprise"]
    assert label_counts(conversations) == {
        "neutral": 4,
        "anger": 1,
        "fear": 1,
        "happiness": 1,
        "sadness": 1,
        "surprise": 1,
    }


def test_dailydialog_dev_is_validation_and_flat_layout_works() -> None:
    (dev,) = load_split("dailydialog", "dev", FIXTURES)
    assert dev == Conversation(
        "dailydialog-dev-0",
        (
            Utterance("A", "There's a hair in my soup .", "disgust"),
            Utterance("B", "That's disgusting ! I'll get you another bowl .", "disgust"),
        ),
    )
    (test,) = load_split("dailydialog", "test", FIXTURES)  # files directly under dailydialog/
    assert [(u.speaker, u.label) for u in test.utterances] == [("A", "neutral"), ("B", "neutral"), ("A", "happiness")]
    assert available_splits("dailydialog", FIXTURES) == list(SPLITS)


def _dailydialog(tmp_path: Path, dialogues: str, emotions: str) -> Path:
    folder = tmp_path / "dailydialog" / "test"
    folder.mkdir(parents=True)
    (folder / "dialogues_test.txt").write_text(dialogues, encoding="utf-8")
    (folder / "dialogues_emotion_test.txt").write_text(emotions, encoding="utf-8")
    return folder


def test_dailydialog_count_mismatch_names_file_and_line(tmp_path: Path) -> None:
    folder = _dailydialog(tmp_path, "Hi . __eou__ Hello . __eou__\nBye . __eou__ Bye ! __eou__\n", "0 0 \n0 \n")
    with pytest.raises(ValueError) as error:
        load_split("dailydialog", "test", tmp_path)
    message = str(error.value)
    assert f"{folder / 'dialogues_test.txt'}, line 2 has 2 utterances" in message
    assert f"{folder / 'dialogues_emotion_test.txt'}, line 2 has 1 emotion codes" in message


def test_dailydialog_line_count_mismatch_and_bad_code(tmp_path: Path) -> None:
    folder = _dailydialog(tmp_path, "Hi . __eou__\nBye . __eou__\n", "0 \n")
    with pytest.raises(ValueError, match="has 2 dialogue lines but .* has 1 emotion lines"):
        load_split("dailydialog", "test", tmp_path)
    (folder / "dialogues_emotion_test.txt").write_text("0 \n7 \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dialogues_emotion_test.txt, line 2: unknown dailydialog emotion code '7'"):
        load_split("dailydialog", "test", tmp_path)


def test_dailydialog_crlf_and_missing_final_terminator(tmp_path: Path) -> None:
    _dailydialog(tmp_path, "Hi . __eou__ Hello .\r\n", "0 4\r\n")
    (conversation,) = load_split("dailydialog", "test", tmp_path)
    assert conversation.utterances == (Utterance("A", "Hi .", "neutral"), Utterance("B", "Hello .", "happiness"))


# --- IEMOCAP (fixture in the documented JSONL format) ------------------------------------------


def test_iemocap_fixture() -> None:
    train = load_split("iemocap", "train", FIXTURES)
    assert [c.id for c in train] == ["iemocap-train-Ses01F_impro01", "iemocap-train-Ses01M_script01_1"]
    assert train[0].utterances == (
        Utterance("F", "Excuse me.", "neutral"),
        Utterance("M", "Do you have your forms?", "frustrated"),
        Utterance("F", "I've been waiting here for two hours!", "angry"),
    )
    assert train[1].utterances == (
        Utterance("M", "We won the trip!", "excited"),
        Utterance("F", "That's lovely.", "happy"),
        Utterance("M", "But I can't go.", "sad"),
    )
    assert available_splits("iemocap", FIXTURES) == ["train", "dev"]
    (dev,) = load_split("iemocap", "dev", FIXTURES)
    assert [u.label for u in dev.utterances] == ["neutral", "sad"]


def test_iemocap_unknown_label(tmp_path: Path) -> None:
    path = tmp_path / "iemocap" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(
        '{"id": "a", "turns": [{"speaker": "F", "text": "x", "label": "neu"}]}\n'
        '{"id": "b", "turns": [{"speaker": "F", "text": "y", "label": "sur"}]}\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError) as error:
        load_split("iemocap", "test", tmp_path)
    message = str(error.value)
    assert f"{path}, line 2: unknown iemocap label 'sur'" in message
    assert "leave them out when converting" in message


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"id": "a", "turns": [}', r"line 1: not valid JSON"),
        ('["a"]', r"line 1: expected a JSON object"),
        ('{"id": "", "turns": []}', r"line 1: 'id' must be a non-empty string"),
        ('{"id": "a", "turns": []}', r"line 1: 'turns' must be a non-empty list"),
        ('{"id": "a", "turns": [{"speaker": "F", "label": "neu"}]}', r"line 1: turn 0 field 'text' must be a string"),
        (
            '{"id": "a", "turns": [{"speaker": "F", "text": "x", "label": "neu"}]}\n'
            '{"id": "a", "turns": [{"speaker": "F", "text": "x", "label": "neu"}]}',
            r"lines 1 and 2: id 'a' occurs twice",
        ),
    ],
)
def test_iemocap_malformed(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "iemocap" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        load_split("iemocap", "train", tmp_path)


# --- missing data, names, environment ----------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "split", "expected", "source"),
    [
        ("meld", "test", "meld/test_sent_emo.csv", "https://github.com/declare-lab/MELD"),
        ("emorynlp", "dev", "emorynlp/emorynlp_dev_final.csv", "https://github.com/declare-lab/MELD"),
        ("dailydialog", "dev", "dailydialog/validation/dialogues_validation.txt", "http://yanran.li/dailydialog"),
        ("iemocap", "train", "iemocap/train.jsonl", "https://sail.usc.edu/iemocap/"),
    ],
)
def test_missing_split_says_where_and_how(tmp_path: Path, dataset: str, split: str, expected: str, source: str) -> None:
    with pytest.raises(DataNotFoundError) as error:
        load_split(dataset, split, tmp_path)
    message = str(error.value)
    assert str(tmp_path / expected) in message
    assert DATA_DIR_ENV in message
    assert source in message
    assert available_splits(dataset, tmp_path) == []


def test_missing_data_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(DataNotFoundError) as error:
        load_split("meld", "train", None)
    message = str(error.value)
    assert f"the data dir {missing} itself does not exist" in message
    assert f"comes from ${DATA_DIR_ENV}" in message
    assert "data/MELD" in message


def test_dailydialog_half_present_lists_both_layouts(tmp_path: Path) -> None:
    folder = tmp_path / "dailydialog" / "train"
    folder.mkdir(parents=True)
    (folder / "dialogues_train.txt").write_text("Hi . __eou__\n", encoding="utf-8")
    with pytest.raises(DataNotFoundError) as error:
        load_split("dailydialog", "train", tmp_path)
    message = str(error.value)
    assert str(folder / "dialogues_emotion_train.txt") in message
    assert str(tmp_path / "dailydialog" / "dialogues_emotion_train.txt") in message


def test_unknown_names_raise_config_error(tmp_path: Path) -> None:
    valid = "valid names: meld, emorynlp, dailydialog, iemocap"
    with pytest.raises(ConfigError, match=f"dataset: unknown name 'friends'; {valid}"):
        load_split("friends", "train", tmp_path)
    with pytest.raises(ConfigError, match="split: unknown name 'validation'; valid names: train, dev, test"):
        load_split("dailydialog", "validation", FIXTURES)
    with pytest.raises(ConfigError, match="valid names: meld, emorynlp, dailydialog, iemocap"):
        available_splits("MELD", tmp_path)


def test_data_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert data_dir_from_env() == tmp_path
    monkeypatch.setenv(DATA_DIR_ENV, "  ")
    assert data_dir_from_env() == DEFAULT_DATA_DIR == Path("../shared/datasets")
    monkeypatch.delenv(DATA_DIR_ENV)
    assert data_dir_from_env() == Path("../shared/datasets")
    monkeypatch.setenv(DATA_DIR_ENV, "~/erc-data")
    assert data_dir_from_env() == Path(os.path.expanduser("~/erc-data"))


# --- specs and label_counts --------------------------------------------------------------------


def test_specs() -> None:
    assert list(DATASETS) == ["meld", "emorynlp", "dailydialog", "iemocap"]
    assert DATASETS["meld"].labels == ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
    assert DATASETS["emorynlp"].labels == ("neutral", "joyful", "peaceful", "powerful", "scared", "mad", "sad")
    assert DATASETS["dailydialog"].labels == ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")
    assert DATASETS["iemocap"].labels == ("neutral", "frustrated", "angry", "sad", "happy", "excited")
    assert all(spec.name == name and spec.neutral_label == "neutral" for name, spec in DATASETS.items())
    with pytest.raises(ValueError, match="neutral_label: 'calm' is not one of labels"):
        DatasetSpec("x", ("a", "b"), "calm", "https://example.org")
    with pytest.raises(ValueError, match="labels: duplicate names"):
        DatasetSpec("x", ("a", "a"), "a", "https://example.org")


def test_label_counts() -> None:
    conversations = [
        Conversation("c1", (Utterance("A", "x", "joy"), Utterance("B", "y", "neutral"))),
        Conversation("c2", (Utterance("A", "z", "joy"), Utterance("B", "w", "anger"))),
    ]
    assert label_counts(conversations) == {"joy": 2, "anger": 1, "neutral": 1}
    assert list(label_counts(conversations)) == ["joy", "anger", "neutral"]
    assert label_counts(conversations, ("neutral", "joy", "anger", "fear")) == {
        "neutral": 1,
        "joy": 2,
        "anger": 1,
        "fear": 0,
    }
    with pytest.raises(ValueError, match=r"labels \['anger'\] occur in the conversations"):
        label_counts(conversations, ("neutral", "joy"))
    assert label_counts([]) == {}
