"""Training survives interruption: a run stopped anywhere and resumed from its run folder
publishes exactly the weights of the same run left alone (fp32, same machine, same settings).

Real MELD conversations (a handful), the real default encoder, the real trainer; the stop is
either the trainer's own stop flag (what SIGTERM sets) or a real SIGTERM to `erc-train fit`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from erc_stream.errors import DataNotFoundError
from trainer.checkpoint import CHECKPOINT_FILE, STAGE2_REPS_FILE, save_atomic
from trainer.checkpoint import load_file as load_checkpoint
from trainer.config import TrainConfig
from trainer.datasets import load_split
from trainer.train import StopFlag, TrainingInterrupted, fit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

DATA_DIR = Path(os.environ.get("ERC_DATA_DIR") or "/work/shared/datasets")
if not (DATA_DIR / "meld" / "train_sent_emo.csv").is_file():
    pytest.skip(f"MELD CSVs not found under {DATA_DIR}/meld; set ERC_DATA_DIR", allow_module_level=True)

# 4 train conversations (43 utterances) in batches of 4: 11 steps per epoch, 2 epochs.
TINY = dict(dataset="meld", data_dir=DATA_DIR, max_train_conversations=4, max_dev_conversations=2, context_turns=1,
            max_length=128, epochs=2, batch_size=4, stage2_epochs=2, checkpoint_every_steps=4, device="cpu",
            dtype="fp32", make_current=False)  # fmt: skip


def weights(version_dir: Path) -> dict[str, bytes]:
    """Every tensor the artifact serves, as raw bytes: equal means bit-identical."""
    out = {f"head.{k}": v.numpy().tobytes() for k, v in load_file(version_dir / "head.safetensors").items()}
    enc = load_file(version_dir / "encoder" / "model.safetensors")
    out.update({f"encoder.{k}": v.numpy().tobytes() for k, v in enc.items()})
    return out


def digest(w: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode() + w[k])
    return h.hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("straight")
    cfg = TrainConfig(**TINY, store=tmp / "store", run_dir=tmp / "run", version="straight")
    result = fit(cfg, progress=False)
    assert result.best_epoch in (1, 2)
    return weights(result.path)


@pytest.mark.parametrize("stop_after", [6, 11], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, uninterrupted, stop_after):
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="resumed")
    with pytest.raises(TrainingInterrupted, match=f"resume with: erc-train fit --resume {tmp_path / 'run'}"):
        fit(cfg, progress=False, stop=StopFlag(after_steps=stop_after))
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)
    assert ckpt["progress"]["global_step"] == stop_after
    assert not (tmp_path / "store" / "resumed").exists(), "an interrupted run must not publish"

    result = fit(cfg, progress=False, resume=True)
    resumed = weights(result.path)
    assert resumed.keys() == uninterrupted.keys()
    differing = [k for k in resumed if resumed[k] != uninterrupted[k]]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}"
    assert digest(resumed) == digest(uninterrupted)


@pytest.mark.parametrize("kept", ["as written", "by other weights"])
def test_a_run_stopped_in_stage_2_resumes_without_encoding_train_again(tmp_path, uninterrupted, caplog, kept):
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="stage2")
    with pytest.raises(TrainingInterrupted, match=r"stopped in stage 2 after 1 anchor epochs .*resume with: erc-train"):
        fit(cfg, progress=False, stop=StopFlag(after_stage2_epochs=1))
    assert not (tmp_path / "store" / "stage2").exists(), "an interrupted run must not publish"
    reps_file = tmp_path / "run" / STAGE2_REPS_FILE
    reps = load_checkpoint(reps_file)
    n_train, n_dev = (sum(len(c.utterances) for c in load_split("meld", split, DATA_DIR)[:n]) for split, n in
                      (("train", TINY["max_train_conversations"]), ("dev", TINY["max_dev_conversations"])))  # fmt: skip
    assert (reps["train"].shape[0], reps["dev"].shape[0]) == (n_train, n_dev)  # every train and dev utterance
    if kept == "by other weights":
        save_atomic({**reps, "fingerprint": "0" * 64}, reps_file)
    with caplog.at_level(logging.INFO, logger="trainer.train"):
        result = fit(cfg, progress=False, resume=True)
    if kept == "as written":
        assert f"representations read from {reps_file}" in caplog.text
    else:
        assert "was made by other weights or prompts; encoding again" in caplog.text
    assert digest(weights(result.path)) == digest(uninterrupted)  # and stage 2 starting over changes nothing


def test_a_run_resumed_in_another_precision_records_both_and_says_so(tmp_path, caplog):
    """dtype=auto resolves per machine (bf16 where the CPU has it natively, else fp32): a run
    resumed where it resolves differently goes on, warns, and its manifest records each stretch."""
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="mixed")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=6))
    # The same run where the precision resolves to bf16 (as dtype=auto does on an AVX512-BF16 CPU).
    with caplog.at_level("WARNING", logger="trainer.train"):
        result = fit(cfg.replace(dtype="bf16"), progress=False, resume=True)
    assert "this run trained in float32 up to step 6" in caplog.text
    assert "goes on in bfloat16" in caplog.text
    training = json.loads((result.path / "manifest.json").read_text())["training"]
    assert training["precisions"] == [{"dtype": "float32", "from_step": 0}, {"dtype": "bfloat16", "from_step": 6}]
    assert training["dtype"] == "bfloat16"


def test_a_fresh_fit_that_fails_before_training_leaves_no_run_to_resume(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    cfg = TrainConfig(**{**TINY, "data_dir": empty}, store=tmp_path / "store", run_dir=tmp_path / "run", version="v")
    with pytest.raises(DataNotFoundError, match="no-data"):
        fit(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # a queue would otherwise resume the bad settings
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(DataNotFoundError, match="no-data"):
        fit(cfg, progress=False)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]  # only what the run wrote goes


def test_a_fresh_fit_refuses_a_run_folder_that_holds_a_run(tmp_path):
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="first")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=1))
    with pytest.raises(ValueError, match="resume it with `erc-train fit --resume"):
        fit(cfg, progress=False)


def test_sigterm_checkpoints_and_the_cli_resumes_to_the_same_weights(tmp_path, uninterrupted):
    erc_train = str(Path(sys.executable).parent / "erc-train")
    run_dir, store = tmp_path / "run", tmp_path / "store"
    args = [erc_train, "fit", "--dataset", "meld", "--max-train-conversations", "4", "--max-dev-conversations", "2",
            "--context-turns", "1", "--max-length", "128", "--epochs", "2", "--batch-size", "4", "--stage2-epochs", "2",
            "--checkpoint-every-steps", "4", "--device", "cpu", "--dtype", "fp32", "--no-make-current",
            "--store", str(store), "--run-dir", str(run_dir), "--version", "cli"]  # fmt: skip
    # The run starts on a copy of the data that is gone when it resumes (a new machine, a moved
    # folder): the resume reads the data where ERC_DATA_DIR says now, not where the run recorded it.
    first_data = tmp_path / "data-first"
    shutil.copytree(DATA_DIR / "meld", first_data / "meld")
    env = {**os.environ, "ERC_DATA_DIR": str(first_data), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not (run_dir / CHECKPOINT_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before its first checkpoint: " + (
        proc.stdout.read() if proc.stdout else ""
    )
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 75, out[-3000:]
    assert f"erc-train fit --resume {run_dir}" in out.replace("\n", "")

    assert json.loads((run_dir / "config.json").read_text())["data_dir"] == str(first_data)
    shutil.rmtree(first_data)
    env["ERC_DATA_DIR"] = str(DATA_DIR)
    resumed = subprocess.run([erc_train, "fit", "--resume", str(run_dir)], env=env, capture_output=True, text=True,
                             timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    assert digest(weights(store / "cli")) == digest(uninterrupted)


def test_resume_of_a_folder_without_a_run_says_what_to_pass(tmp_path):
    erc_train = str(Path(sys.executable).parent / "erc-train")
    proc = subprocess.run([erc_train, "fit", "--resume", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "is not a training run folder" in " ".join(proc.stderr.split())


def test_a_balanced_window_run_resumes_mid_epoch_to_the_same_weights(tmp_path):
    """--sampler balanced draws an epoch's prompts with replacement: the checkpoint keeps the draws."""
    straight = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "a", version="a", sampler="balanced")
    first = fit(straight, progress=False)
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["losses"]["sampler"] == "balanced"
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "b", version="b", sampler="balanced")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=6))
    resumed = fit(cfg, progress=False, resume=True)
    assert digest(weights(resumed.path)) == digest(weights(first.path))
    assert manifest["metrics"] == json.loads((resumed.path / "manifest.json").read_text())["metrics"]


class _StealingHost:
    """/proc/stat as a VM under a busy host shows it: every reading, 100 more busy ticks, of which
    ``share`` were withheld by the hypervisor (steal). The real file cannot be made to steal on demand."""

    def __init__(self, share: float) -> None:
        self.share, self.calls, self.busy, self.steal = share, 0, 0, 0

    def __call__(self):
        from erc_stream.hoststat import CpuTicks

        self.calls += 1
        self.busy += 100
        self.steal += round(100 * self.share)
        return CpuTicks(busy=self.busy, steal=self.steal, total=self.busy + 50 * self.calls)


def test_each_epoch_records_the_cpu_time_the_hypervisor_withheld_across_a_resume(tmp_path, caplog, monkeypatch):
    """The share of the training steps' CPU time lost to steal is kept in the checkpoint, so a stopped
    and resumed epoch reports it over all its steps; an epoch over 5% is flagged in the log."""
    host = _StealingHost(0.5)
    monkeypatch.setattr("trainer.train.read_cpu_ticks", host)
    cfg = TrainConfig(**TINY, store=tmp_path / "store", run_dir=tmp_path / "run", version="stolen")
    with pytest.raises(TrainingInterrupted):
        fit(cfg, progress=False, stop=StopFlag(after_steps=6))
    # two readings around each of the 6 steps, and only the ticks inside the steps count (600 of 1,100)
    assert host.calls == 12
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_FILE)["progress"]["epoch_cpu_steal_ticks"] == 300
    host.share = 0.1  # the host calmed down while the run was stopped
    with caplog.at_level("WARNING", logger="trainer.train"):
        result = fit(cfg, progress=False, resume=True)
    history = json.loads((result.path / "manifest.json").read_text())["training"]["history"]
    per_epoch = (6 + (host.calls - 12) // 2) // 2  # the two epochs have the same number of steps
    # epoch 1: 6 steps at 50% before the stop, the rest at 10% after it; a resume that lost the
    # checkpointed ticks would report 10%
    assert history[0]["cpu_steal"] == pytest.approx((6 * 50 + (per_epoch - 6) * 10) / (per_epoch * 100), abs=1e-4)
    assert history[1]["cpu_steal"] == pytest.approx(0.1)
    assert "epoch 1: the hypervisor withheld 3" in caplog.text and "epoch 2: the hypervisor withheld 10%" in caplog.text


def test_on_this_machine_the_epoch_records_a_steal_share_from_proc_stat(tmp_path):
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat here: the trainer records cpu_steal as null")
    cfg = TrainConfig(**{**TINY, "epochs": 1}, store=tmp_path / "store", run_dir=tmp_path / "run", version="host")
    history = json.loads((fit(cfg, progress=False).path / "manifest.json").read_text())["training"]["history"]
    assert isinstance(history[0]["cpu_steal"], float) and 0.0 <= history[0]["cpu_steal"] <= 1.0
