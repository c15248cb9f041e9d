"""erc-train end to end, as a user runs it: real CLI subprocesses, real MELD files, the real
default encoder, a real OpenAI-compatible HTTP server on loopback for `--anchors llm`.

Each fit is kept tiny (a dozen conversations or fewer) and pinned to CPU/fp32 so that the
dev metrics recorded at publish time can be reproduced exactly by `erc-train evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from erc_stream.artifact import read_current, verify_version
from tests.openai_loopback import OpenAILoopback, default_chat_reply
from tests.train_cli import ERC_TRAIN, cli_env, skip_without_meld

# A fit takes ~30-60 s of CPU on a quiet 2-core machine, several minutes on a busy one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
SHIPPED_MELD = REPO / "trainer" / "descriptions" / "meld.json"
HEADLINE = ("weighted_f1", "macro_f1", "accuracy", "mcc", "per_class_f1", "micro_f1_no_neutral",
            "macro_f1_no_neutral", "support")  # fmt: skip
PIN = ["--device", "cpu", "--dtype", "fp32"]

skip_without_meld()


def erc_train(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout_s: int = 1000):
    return subprocess.run([str(ERC_TRAIN), *args], env=env or cli_env(), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def only_version(store: Path) -> Path:
    versions = [p for p in store.iterdir() if p.is_dir()]
    assert len(versions) == 1, versions
    return versions[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One quick fit on 12 train / 6 dev MELD conversations with the shipped descriptions.

    Two context turns instead of five keep prompts short, which halves the CPU time.
    """
    store = tmp_path_factory.mktemp("store")
    proc = erc_train("fit", "--dataset", "meld", "--quick", "--max-train-conversations", "12",
                     "--max-dev-conversations", "6", "--context-turns", "2", "--store", str(store),
                     "--anchors", "file", *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    vdir = only_version(store)
    return proc, store, vdir, json.loads((vdir / "manifest.json").read_text())


def test_fit_publishes_and_sets_current(fitted):
    proc, store, vdir, manifest = fitted
    assert re.fullmatch(r"meld-\d{8}T\d{6}Z-[0-9a-f]{6}", vdir.name)
    assert read_current(store) == vdir.name == manifest["version"]
    assert sorted(p.name for p in store.iterdir()) == ["CURRENT", vdir.name]  # no temporary leftovers
    assert f"published {vdir.name}" in " ".join(proc.stderr.split())
    assert "weighted_f1" in proc.stdout


def test_fit_manifest_is_complete(fitted):
    _, _, vdir, m = fitted
    assert m["format_version"] == 1
    assert m["created_at"]
    assert m["dataset"] == "meld"
    assert m["labels"] == MELD_LABELS
    assert m["prompt"] == {"template": "For utterance {utterance}, {speaker} feels {mask}", "context_turns": 2,
                           "max_length": 256, "normalization": "erc_stream.prompt.normalize_text v1",
                           "speakers": "names"}  # fmt: skip
    assert m["temperature"] == 0.1
    assert m["encoder"]["weights_sha256"] == {
        "encoder/model.safetensors": sha256(vdir / "encoder" / "model.safetensors")
    }
    # Anchors: mode file, the shipped descriptions, and where they came from.
    shipped = json.loads(SHIPPED_MELD.read_text())
    anchors = m["anchors"]
    assert anchors["mode"] == "file"
    assert anchors["descriptions"] == {k: " ".join(v.split()) for k, v in shipped["descriptions"].items()}
    assert anchors["file"] == str(SHIPPED_MELD)
    assert anchors["sha256"] == sha256(SHIPPED_MELD)
    assert anchors["file_provenance"] == shipped.get("provenance", {})
    # Metrics and training record.
    dev = m["metrics"]["dev"]
    assert set(HEADLINE) <= set(dev)
    assert 0.0 <= dev["weighted_f1"] <= 1.0
    assert set(dev["per_class_f1"]) == set(MELD_LABELS)
    t = m["training"]
    assert t["config"]["epochs"] == 1 and t["config"]["stage2_epochs"] == 2  # --quick
    assert t["config"]["max_train_conversations"] == 12 and t["config"]["max_dev_conversations"] == 6
    assert t["device"] == "cpu" and t["dtype"] == "float32"
    assert [h["epoch"] for h in t["history"]] == [1]
    assert {"dev_weighted_f1", "dev_macro_f1", "train_s", "loss_loss"} <= set(t["history"][0])
    assert t["best_epoch"] == 1
    assert t["stage2"]["enabled"] is True and t["stage2"]["epochs"] == 2
    assert t["train_utterances"] > 50 and t["dev_utterances"] == sum(dev["support"].values())


def test_fit_every_file_checksum_matches(fitted):
    _, _, vdir, m = fitted
    present = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == present
    for rel, digest in m["files"].items():
        assert sha256(vdir / rel) == digest, rel
    assert verify_version(vdir)["version"] == vdir.name


def test_fit_report(fitted):
    _, _, vdir, m = fitted
    report = vdir / "report"
    for name in (
        "metrics.json",
        "confusion_dev.png",
        "anchors_cosine.png",
        "training_curve.png",
        "reliability.png",
        "alerts_dev.png",
    ):
        assert (report / name).is_file(), name
    for name in ("confusion_dev.png", "anchors_cosine.png", "reliability.png", "alerts_dev.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((report / "metrics.json").read_text())
    assert payload["splits"]["dev"]["weighted_f1"] == m["metrics"]["dev"]["weighted_f1"]
    assert len(payload["anchor_cosine"]["before"]) == len(payload["anchor_cosine"]["after"]) == 7
    cal = m["calibration"]
    assert cal["temperature"] > 0 and cal["training_temperature"] == m["temperature"] and cal["fitted_on"] == "dev"
    assert (
        0 <= cal["ece_after"] <= 1
        and 0 <= cal["ece_before"] <= 1
        and cal["utterances"] == m["training"]["dev_utterances"]
    )
    assert m["training"]["adamw"] == "fused"  # a CPU fit steps the fused AdamW (trainer.train.adamw)
    assert m["training"]["dropout_masks"] == "threshold"  # a CPU fit draws threshold masks (trainer/dropout.py)
    assert m["training"]["attention"] == "erc_train"  # MiniLM's fused attention trained as train_attention
    assert "erc_train" not in (vdir / "encoder" / "config.json").read_text()  # the worker loads it with its own


def test_evaluate_reproduces_the_published_dev_metrics(fitted, tmp_path):
    _, store, vdir, manifest = fitted
    out, preds = tmp_path / "out", tmp_path / "P.jsonl"
    proc = erc_train("evaluate", "--store", str(store), "--split", "dev", "--max-conversations", "6",
                     "--out", str(out), "--predictions", str(preds), *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for word in ("weighted_f1", "macro_f1", "accuracy", "mcc", "per-class F1", "confusion matrix", *MELD_LABELS):
        assert word in proc.stdout, word
    assert (out / "confusion_dev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The anchor heatmap before/after training (EACL Figure 7) comes from the artifact's own report.
    version_dir = store / (store / "CURRENT").read_text().strip()
    assert (out / "anchors_cosine.png").read_bytes() == (version_dir / "report" / "anchors_cosine.png").read_bytes()
    m = json.loads((out / "metrics.json").read_text())["splits"]["dev"]
    # Same conversations, same code path, same weights: the same numbers, exactly.
    assert m["weighted_f1"] == manifest["metrics"]["dev"]["weighted_f1"]
    assert {k: m[k] for k in HEADLINE} == manifest["metrics"]["dev"]
    assert f"{m['weighted_f1']:.4f}" in proc.stdout
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == m["n"] == manifest["training"]["dev_utterances"]
    assert {r["emotion"] for r in rows} <= set(MELD_LABELS)
    assert all(len(r["scores"]) == 7 for r in rows)
    correct = sum(r["emotion"] == r["gold"] for r in rows)
    assert correct / len(rows) == pytest.approx(m["accuracy"], abs=1e-12)
    # Alerting on one emotion: the table in metrics.json counts what the predictions file shows.
    assert (out / "alerts_dev.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alerting on one emotion" in proc.stdout
    assert set(m["alerts"]) == set(MELD_LABELS)
    for label, table in m["alerts"].items():
        for row in table:
            fired = [r for r in rows if r["emotion"] == label and r["confidence"] >= row["threshold"]]
            assert row["alerts"] == len(fired)
            assert row["correct"] == sum(r["gold"] == label for r in fired)
            assert row["support"] == m["support"][label]


def test_anonymous_speakers_reach_the_manifest_and_the_loaded_model(tmp_path):
    """`--speakers anonymous`: the manifest records it, the loader (the worker's) builds its prompts
    that way, and `erc-train evaluate` reproduces the dev figures fit recorded."""
    from erc_stream.model import Predictor

    store = tmp_path / "store"
    proc = erc_train("fit", "--dataset", "meld", "--speakers", "anonymous", "--epochs", "0", "--no-stage2",
                     "--max-train-conversations", "2", "--max-dev-conversations", "3", "--context-turns", "2",
                     "--store", str(store), *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    vdir = only_version(store)
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["prompt"]["speakers"] == "anonymous"
    predictor = Predictor.load(vdir, device="cpu", dtype="fp32")
    assert predictor.builder.speakers == "anonymous"
    assert predictor.with_context_turns(1).builder.speakers == "anonymous"
    b = predictor.builder
    prompt = b.build(b.encode_turns(["Rachel"], ["Hi."]), b.encode_turn("Ross", "Hey."))
    assert "ross" not in b.tokenizer.convert_ids_to_tokens(list(prompt.input_ids))

    proc = erc_train("evaluate", "--store", str(store), "--split", "dev", "--max-conversations", "3",
                     "--out", str(tmp_path / "out"), *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())["splits"]["dev"]
    assert {k: m[k] for k in HEADLINE} == manifest["metrics"]["dev"]


def test_class_weighting_reaches_stage_2(tmp_path, fitted):
    """A class-weighted run's manifest says its stage 2 was weighted too, an unweighted run's does
    not (that the weights move the anchors: tests/unit/test_stage2_weights.py)."""
    store = tmp_path / "store"
    proc = erc_train("fit", "--dataset", "meld", "--class-weighting", "inverse", "--epochs", "0",
                     "--stage2-epochs", "2", "--max-train-conversations", "3", "--max-dev-conversations", "2",
                     "--context-turns", "1", "--store", str(store), *PIN)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage2 = json.loads((only_version(store) / "manifest.json").read_text())["training"]["stage2"]
    assert stage2["enabled"] and stage2["epochs"] == 2
    assert stage2["class_weighting"] == "inverse"
    assert "class_weighting" not in fitted[3]["training"]["stage2"]


def test_bad_speakers_flag_names_the_valid_ones(tmp_path):
    proc = erc_train("fit", "--dataset", "meld", "--speakers", "pseudonyms", "--store", str(tmp_path / "s"))
    assert proc.returncode != 0
    assert "TrainConfig.speakers has an invalid value: 'pseudonyms'; valid values: names, anonymous" in proc.stderr


# ---------------------------------------------------------------------------- errors


def test_unknown_dataset_names_the_valid_ones(tmp_path):
    proc = erc_train("fit", "--dataset", "nope", "--store", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "'nope'" in err and "meld, emorynlp, dailydialog, iemocap" in err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()


def test_missing_encoder_folder(tmp_path):
    proc = erc_train("fit", "--dataset", "meld", "--encoder", "/nonexistent", "--store", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "encoder='/nonexistent' is neither a known name" in err and "nothing is downloaded" in err
    assert "Traceback" not in proc.stderr


def test_uninstalled_encoder_names_the_install_command(tmp_path):
    cache = tmp_path / "empty-cache"
    proc = erc_train("fit", "--dataset", "meld", "--encoder", "mpnet-base", "--store", str(tmp_path / "s"),
                     env=cli_env(ERC_ENCODER_CACHE=str(cache)))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "encoder 'mpnet-base' is not installed" in err and "erc-train encoders install mpnet-base" in err
    assert "Traceback" not in proc.stderr


def test_missing_data_dir_says_where_to_get_it(tmp_path):
    missing = tmp_path / "no-data"
    proc = erc_train("fit", "--dataset", "meld", "--store", str(tmp_path / "s"), env=cli_env(ERC_DATA_DIR=str(missing)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "meld split 'train' not found" in err
    assert f"the data dir {missing} itself does not exist" in err
    assert "set ERC_DATA_DIR" in err
    assert "https://github.com/declare-lab/MELD" in err
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- LLM anchors


def test_llm_anchors_end_to_end(tmp_path):
    """`--anchors llm` through the real openai client to a loopback server; the manifest records it."""
    store = tmp_path / "store"
    key, model = "sk-loopback-train-42", "loopback-llm-1"
    with OpenAILoopback(api_key=key) as server:
        env = cli_env(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY=key, OPENAI_MODEL=model)
        # cwd=tmp_path: the description cache (.cache/erc-anchors) starts empty, so every label is asked.
        proc = erc_train("fit", "--dataset", "meld", "--anchors", "llm", "--epochs", "0", "--no-stage2",
                         "--max-train-conversations", "2", "--max-dev-conversations", "2",
                         "--store", str(store), *PIN, env=env, cwd=tmp_path)  # fmt: skip
        chats = server.requests_to("/v1/chat/completions")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    asked = [
        re.search(r"emotion '([^']+)'", " ".join(msg["content"] for msg in r.body["messages"])).group(1) for r in chats
    ]
    assert sorted(asked) == sorted(MELD_LABELS)
    assert all(r.body["model"] == model and r.authorization == f"Bearer {key}" for r in chats)

    vdir = only_version(store)
    verify_version(vdir)
    manifest_text = (vdir / "manifest.json").read_text()
    anchors = json.loads(manifest_text)["anchors"]
    assert anchors["mode"] == "llm"
    assert anchors["llm_model"] == model
    assert anchors["base_url_host"] == "127.0.0.1"
    assert anchors["requests"] == 7 and anchors["cache_hits"] == 0
    assert anchors["descriptions"] == {label: default_chat_reply(label, {}) for label in MELD_LABELS}
    assert key not in manifest_text  # the API key never reaches the artifact
    assert len(list((tmp_path / ".cache" / "erc-anchors").glob("*.json"))) == 7
