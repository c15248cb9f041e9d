"""16-bit storage of a version's encoder: half the bytes, same predictions, refused when it costs F1."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

from erc_stream.artifact import verify_version
from erc_stream.errors import ArtifactError
from tests.fixtures_model import publish_test_model
from tests.train_cli import ERC_TRAIN, cli_env
from trainer.repack import repack

DATA_DIR = Path(os.environ.get("ERC_DATA_DIR") or "/work/shared/datasets")
if not (DATA_DIR / "meld" / "dev_sent_emo.csv").is_file():
    pytest.skip(f"MELD CSVs not found under {DATA_DIR}/meld; set ERC_DATA_DIR", allow_module_level=True)


def test_fp16_repack_halves_the_encoder_and_keeps_predictions(tmp_path):
    publish_test_model(tmp_path / "store", "v1")
    r = repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-fp16", data_dir=DATA_DIR,
               max_conversations=3)  # fmt: skip
    manifest = verify_version(r.path)  # every checksum of the new version holds
    assert manifest["encoder"]["weights_dtype"] == "fp16"
    with safe_open(str(r.path / "encoder" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert str(dtypes) == "{torch.float16}", dtypes
    assert r.bytes_after < 0.6 * r.bytes_before
    assert r.agreement >= 0.9 and r.max_score_diff < 1e-2
    assert abs(r.drop_points) <= 0.1
    src = json.loads((tmp_path / "store" / "v1" / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("labels", "prompt", "temperature")} == {
        k: src[k] for k in ("labels", "prompt", "temperature")
    }


def test_a_repack_that_costs_more_than_allowed_is_removed(tmp_path):
    publish_test_model(tmp_path / "store", "v1")
    with pytest.raises(ArtifactError, match="the repacked version was removed"):
        repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-bf16", weights_dtype="bf16",
               max_drop_points=-1.0, data_dir=DATA_DIR, max_conversations=2)  # fmt: skip
    assert not (tmp_path / "out" / "v1-bf16").exists()


def test_a_kept_repack_reports_the_metrics_of_its_own_weights(tmp_path):
    """On a whole dev split (the small IEMOCAP fixture), the repacked manifest's metrics.dev is what
    its 16-bit weights score, so `erc-train evaluate` of the repacked version reproduces it."""
    from erc_stream.model import load_predictor
    from trainer.datasets import DATASETS, load_split
    from trainer.evaluate import compute_metrics, predict_conversations

    data_dir = Path(__file__).resolve().parents[1] / "data" / "datasets"
    labels = DATASETS["iemocap"].labels
    src = publish_test_model(tmp_path / "store", "v1", labels=labels, dataset="iemocap")
    meta = json.loads((src / "manifest.json").read_text())
    meta["metrics"] = {"dev": {"weighted_f1": 0.123}}  # what training reported, in fp32
    (src / "manifest.json").write_text(json.dumps(meta))
    r = repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-fp16", data_dir=data_dir,
               max_drop_points=100.0)  # fmt: skip
    manifest = verify_version(r.path)
    assert manifest["metrics"]["dev_before_repack"] == {"weighted_f1": 0.123}
    assert manifest["repacked_from"] == {"version": "v1", "weights_dtype": "fp16", "dev_same_emotion": r.agreement}
    predictor = load_predictor(r.path, device="cpu", dtype="fp32")
    res = predict_conversations(predictor, load_split("iemocap", "dev", data_dir))
    again = compute_metrics(res.gold, res.predictions.label_ids.tolist(), predictor.labels, "neutral")
    assert manifest["metrics"]["dev"] == json.loads(json.dumps(again))
    assert manifest["metrics"]["dev"]["weighted_f1"] == r.weighted_f1_after


def test_int8_repack_quarters_the_encoder_and_serves_through_the_predictor(tmp_path):
    """8-bit storage through the same repack path: measured on dev, recorded, loadable by the worker's loader."""
    from erc_stream.artifact import INT8_WEIGHTS_FILE
    from erc_stream.model import load_predictor

    publish_test_model(tmp_path / "store", "v1")
    r = repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-int8", weights_dtype="int8",
               data_dir=DATA_DIR, max_conversations=3, max_drop_points=100.0)  # fmt: skip
    manifest = verify_version(r.path)
    assert manifest["encoder"]["weights_dtype"] == "int8"
    assert (r.path / "encoder" / INT8_WEIGHTS_FILE).is_file()
    assert r.bytes_after < 0.35 * r.bytes_before
    assert 0.0 <= r.agreement <= 1.0 and r.max_score_diff < 0.1
    predictor = load_predictor(r.path, device="cpu", dtype="fp32")
    assert list(predictor.labels) == manifest["labels"]


def test_a_device_that_is_not_there_stops_the_repack_before_anything_is_published(tmp_path):
    """`--device cuda` scores on the GPU machine it was meant for; elsewhere it says so up front."""
    import torch

    from erc_stream.errors import ConfigError

    publish_test_model(tmp_path / "store", "v1")
    bad = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        with pytest.raises(ConfigError, match="device"):
            repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-fp16", data_dir=DATA_DIR,
                   max_conversations=2, device=device)  # fmt: skip
        assert not (tmp_path / "out").exists()


_LINES = [
    ("A", "I can't believe you did that again.", "angry"),
    ("B", "It was an accident, I swear.", "frustrated"),
    ("A", "That's what you said last time.", "angry"),
    ("B", "Okay, okay. Let's just get lunch.", "neutral"),
    ("A", "Fine. I'm starving anyway.", "happy"),
    ("B", "We got the tickets! We're going!", "excited"),
    ("A", "I miss her so much.", "sad"),
]


def _iemocap_dev(root: Path, conversations: int = 6) -> Path:
    """A small IEMOCAP-format dev split: enough conversations to cross-fit the temperature."""
    (root / "iemocap").mkdir(parents=True)
    with open(root / "iemocap" / "dev.jsonl", "w", encoding="utf-8") as f:
        for c in range(conversations):
            lines = [_LINES[(c + i) % len(_LINES)] for i in range(5)]
            turns = [{"speaker": s, "text": t, "label": label} for s, t, label in lines]
            f.write(json.dumps({"id": f"c{c}", "turns": turns}) + "\n")
    return root


def test_a_calibrated_version_is_recalibrated_on_its_stored_weights(tmp_path):
    """The served temperature and its ECEs describe the stored weights: refitted on their dev scores,
    the source's kept as calibration_before_repack; the report's plots are redrawn and checksummed."""
    from erc_stream.artifact import sha256_file
    from erc_stream.model import load_predictor
    from trainer.calibration import calibrate, top_confidence
    from trainer.datasets import DATASETS, load_split
    from trainer.evaluate import predict_conversations

    data_dir = _iemocap_dev(tmp_path / "data")
    src = publish_test_model(tmp_path / "store", "v1", labels=DATASETS["iemocap"].labels, dataset="iemocap")
    meta = json.loads((src / "manifest.json").read_text())
    meta["calibration"] = {"temperature": 0.25, "ece_before": 0.5, "note": "the fit's, on its 32-bit weights"}
    (src / "report").mkdir()
    for name in ("reliability.png", "alerts_dev.png"):  # placeholders where a fit's report has its plots
        (src / "report" / name).write_bytes(b"drawn by the fit")
        meta["files"][f"report/{name}"] = sha256_file(src / "report" / name)
    (src / "manifest.json").write_text(json.dumps(meta))
    verify_version(src)

    out = subprocess.run(  # through the CLI, which says what changed
        [str(ERC_TRAIN), "repack", "--store", str(tmp_path / "store"), "--version", "v1", "--out-store",
         str(tmp_path / "out"), "--out-version", "v1-int8", "--weights-dtype", "int8", "--max-drop-points", "100",
         "--data-dir", str(data_dir)],
        env=cli_env(COLUMNS="300"), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    path = tmp_path / "out" / "v1-int8"
    manifest = verify_version(path)  # the redrawn plots' checksums hold
    assert manifest["calibration_before_repack"] == meta["calibration"]
    after, said = manifest["calibration"], out.stdout + out.stderr  # the console writes to stderr
    assert f"confidence temperature refitted on the stored weights: 0.25 -> {after['temperature']}" in said
    assert f"{after['ece_after']:.4f} cross-fitted (was None); report plots redrawn" in said
    predictor = load_predictor(path, device="cpu", dtype="fp32")
    convs = load_split("iemocap", "dev", data_dir)
    res = predict_conversations(predictor, convs)
    groups = [conv for conv, _ in res.keys]
    expected = calibrate(res.predictions.scores, res.gold, groups, meta["temperature"]).to_manifest()
    assert manifest["calibration"] == expected and expected["utterances"] == 30
    assert manifest["calibration"]["temperature"] != 0.25
    # the version now serves the refitted temperature
    served = top_confidence(res.predictions.scores, manifest["calibration"]["temperature"])
    assert res.predictions.confidence.max(axis=1) == pytest.approx(served, abs=1e-5)
    for name in ("reliability.png", "alerts_dev.png"):
        assert (path / "report" / name).read_bytes().startswith(b"\x89PNG"), name
    assert (src / "report" / "reliability.png").read_bytes() == b"drawn by the fit"  # the source is untouched


def test_an_uncalibrated_version_stays_uncalibrated(tmp_path):
    """Without a fitted temperature the source serves tau; the repack must not start calibrating it."""
    from trainer.datasets import DATASETS

    data_dir = _iemocap_dev(tmp_path / "data", conversations=2)
    publish_test_model(tmp_path / "store", "v1", labels=DATASETS["iemocap"].labels, dataset="iemocap")
    r = repack(tmp_path / "store", "v1", out_store=tmp_path / "out", out_version="v1-fp16", data_dir=data_dir,
               max_drop_points=100.0)  # fmt: skip
    manifest = verify_version(r.path)
    assert "calibration" not in manifest and "calibration_before_repack" not in manifest
    assert not any(name.startswith("report/") for name in manifest["files"])
