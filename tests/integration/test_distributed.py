"""Training in two processes (torchrun, DistributedDataParallel, gloo on CPU) equals training in one.

A tiny BERT (2 layers, width 32, random weights, the real MiniLM tokenizer) on a few MELD
conversations, fp32, dropout off. Batch size 7 is the global batch: the two ranks run 4 and 3
examples (plus one filler row on rank 1), so the uneven-share path runs at every step.

Tolerance: the per-step loss parts and every weight after the steps agree within
``TOL = 1e-5`` (absolute). What remains is float32 rounding: the two ranks pad their shares to
other widths than the one-process batch, and DDP averages gradients in another order; measured
differences are near 1e-7. SupCon over the local batch only changes the loss by tenths and the
weights by ~1e-4 and more, so the test fails then (checked by breaking the gather).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erc_stream.artifact import read_current, verify_version
from erc_stream.devtools.broker import free_port
from tests.train_cli import DATA_DIR, ERC_TRAIN, cli_env, skip_without_meld
from trainer.checkpoint import STAGE2_REPS_FILE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5
STEPS = 6

skip_without_meld()


def _env(**extra: str) -> dict[str, str]:
    return cli_env(OMP_NUM_THREADS="1", **extra)  # one thread a rank: two ranks on two cores


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]


def _run(cmd: list[str], timeout_s: int = 400, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, width-32 BERT with seeded random weights and the MiniLM tokenizer: ~1M parameters."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from erc_stream.model import default_encoder_path

    path = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _settings(encoder: Path, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "dataset": "meld", "data_dir": str(DATA_DIR), "encoder": str(encoder), "dropout": 0.0, "device": "cpu",
        "dtype": "fp32", "epochs": 1, "stage2": False, "max_train_conversations": 6, "max_dev_conversations": 2,
        "context_turns": 1, "max_length": 128, "batch_size": 7, "proj_dim": 16, "anchors": "plain", "lr": 1e-3,
    }  # fmt: skip
    base.update(changes)
    return base


def _steps(settings: dict[str, object], out: Path, processes: int) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg = json.dumps({**settings, "run_dir": str(out / "run"), "store": str(out / "store"), "version": "v"})
    args = ["-m", "tests.integration.ddp_harness", "steps", cfg, str(out), str(STEPS)]
    proc = _run(_torchrun(*args) if processes == 2 else [sys.executable, *args])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((out / "losses.json").read_text()), load_file(str(out / "weights.safetensors"))


def test_two_processes_take_the_steps_of_one_process(tiny_encoder: Path, tmp_path: Path) -> None:
    settings = _settings(tiny_encoder)
    one, w1 = _steps(settings, tmp_path / "one", 1)
    two, w2 = _steps(settings, tmp_path / "two", 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["batches"] == one["batches"] and len(one["batches"]) == STEPS
    # Each global batch is split into contiguous shares (4 + 3 for a full one); when it is odd, rank 1 runs a
    # filler row (the batch's first example) so that both ranks run the same number of rows.
    for batch, (rank0, rank1) in zip(two["batches"], zip(*two["shards"], strict=True), strict=True):
        n = len(batch)
        assert rank0["sizes"] == rank1["sizes"] == [n - n // 2, n // 2]
        assert rank0["indices"] + rank1["indices"][: n // 2] == batch
        assert rank1["indices"][n // 2 :] == batch[:1] * (n % 2)
    assert any(len(b) % 2 for b in two["batches"]), "no batch exercised the filler row"
    loss_diff = max(abs(a[k] - b[k]) for a, b in zip(one["losses"], two["losses"], strict=True) for k in a)
    assert w1.keys() == w2.keys()
    weight_diff = max((w1[k].double() - w2[k].double()).abs().max().item() for k in w1)
    initial = load_file(str(tiny_encoder / "model.safetensors"))  # the encoder's own names: no "model.encoder."
    layers = [k for k in w1 if k.startswith("model.encoder.encoder.layer.")]
    moved = max(
        (w1[k].double() - initial[k.removeprefix("model.encoder.")].double()).abs().max().item() for k in layers
    )
    print(f"\nmax |loss diff| {loss_diff:.3g}, max |weight diff| {weight_diff:.3g} (tolerance {TOL}); "
          f"encoder weights moved by up to {moved:.3g}")  # fmt: skip
    assert moved > 100 * TOL, "the steps did not train the encoder: nothing to compare"
    assert loss_diff <= TOL, (one["losses"], two["losses"])
    assert weight_diff <= TOL


def test_erc_train_fit_nproc_per_node_2_trains_and_publishes(tiny_encoder: Path, tmp_path: Path) -> None:
    """`erc-train fit --nproc-per-node 2` launches torchrun; rank 0 publishes what one process would."""
    flags = ["fit", "--dataset", "meld", "--encoder", str(tiny_encoder), "--dropout", "0", "--device", "cpu",
             "--dtype", "fp32", "--epochs", "1", "--stage2-epochs", "2", "--max-train-conversations", "6",
             "--max-dev-conversations", "2", "--context-turns", "1", "--max-length", "128", "--batch-size", "7",
             "--proj-dim", "16", "--anchors", "plain", "--version", "tiny-v1"]  # fmt: skip
    two = _run([str(ERC_TRAIN), *flags, "--nproc-per-node", "2", "--store", str(tmp_path / "s2"),
                "--run-dir", str(tmp_path / "r2")])  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-5000:]
    assert "launching: " in two.stderr and "torch.distributed.run" in two.stderr
    assert two.stdout.count("published tiny-v1") + two.stderr.count("published tiny-v1") == 1  # rank 0 reports
    store = tmp_path / "s2"
    assert read_current(store) == "tiny-v1"
    assert sorted(p.name for p in store.iterdir()) == ["CURRENT", "tiny-v1"]
    manifest = verify_version(store / "tiny-v1")
    training = manifest["training"]
    assert (training["processes"], training["backend"]) == (2, "gloo")
    assert training["stage2"]["enabled"] is True and [h["epoch"] for h in training["history"]] == [1]
    assert {p.name for p in (tmp_path / "r2").iterdir()} == {
        "config.json",
        "checkpoint.pt",
        "best.pt",
        STAGE2_REPS_FILE,
    }

    one = _run([str(ERC_TRAIN), *flags, "--store", str(tmp_path / "s1"), "--run-dir", str(tmp_path / "r1")])
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-5000:]
    single = verify_version(tmp_path / "s1" / "tiny-v1")
    assert (single["training"]["processes"], single["training"]["backend"]) == (1, None)
    for name in ("encoder/model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "s1" / "tiny-v1" / name)), load_file(str(store / "tiny-v1" / name))
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        assert diff <= TOL, f"{name}: published weights differ by {diff}"
    for key in ("loss_loss", "loss_sup", "loss_ce", "loss_angle"):  # rounded to 4 decimals in the history
        assert abs(training["history"][0][key] - single["training"]["history"][0][key]) <= 1e-4 + TOL


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_an_error_on_one_rank_ends_every_rank_under_torchrun(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = _run(_torchrun("-m", "tests.integration.ddp_harness", "crash", str(tmp_path)), timeout_s=110)
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stderr
    pids = [int((tmp_path / f"rank{r}.pid").read_text()) for r in (0, 1)]
    assert all(_dead(p) for p in pids), pids
    assert took < 100, f"took {took:.0f} s: rank 0 waited for the barrier's timeout instead of ending with rank 1"


def test_an_error_on_one_rank_ends_the_other_without_torchrun(tmp_path: Path) -> None:
    """No agent to stop rank 0: it must notice on its own that rank 1 is gone, well before the timeout."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.ddp_harness", "crash", str(tmp_path)],
            cwd=REPO,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    t0 = time.monotonic()
    try:
        outs = [p.communicate(timeout=110) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    took = time.monotonic() - t0
    assert [p.returncode != 0 for p in procs] == [True, True], outs
    assert "rank 1 fails on purpose" in outs[1][1]
    assert took < 100, f"took {took:.0f} s"


def test_sigterm_stops_every_rank_with_a_checkpoint_and_resume_finishes_the_run(
    tiny_encoder: Path, tmp_path: Path
) -> None:
    """SIGTERM to `erc-train fit --nproc-per-node 2` (torchrun passes it to both ranks): the ranks agree on
    one step, rank 0 checkpoints, nothing is published; `--resume` on 2 processes ends with the weights of
    an uninterrupted one-process run."""
    flags = ["fit", "--dataset", "meld", "--encoder", str(tiny_encoder), "--dropout", "0", "--device", "cpu",
             "--dtype", "fp32", "--epochs", "2", "--no-stage2", "--max-train-conversations", "12",
             "--max-dev-conversations", "2", "--context-turns", "1", "--max-length", "128", "--batch-size", "7",
             "--proj-dim", "16", "--anchors", "plain", "--lr", "1e-3", "--version", "tiny-v1",
             "--checkpoint-every-steps", "1"]  # fmt: skip
    run_dir, store = tmp_path / "r2", tmp_path / "s2"
    proc = subprocess.Popen(
        [str(ERC_TRAIN), *flags, "--nproc-per-node", "2", "--store", str(store), "--run-dir", str(run_dir)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)  # erc-train exec'd into torchrun: this is torchrun's agent
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-2000:] + err[-4000:]
    assert "interrupted:" in err and "resume with: erc-train fit --resume" in " ".join(err.split())
    assert read_current(store) is None  # nothing published
    from trainer.checkpoint import load_file as load_checkpoint

    stopped_at = load_checkpoint(run_dir / "checkpoint.pt")["progress"]["global_step"]
    assert stopped_at >= 1

    resumed = _run([str(ERC_TRAIN), "fit", "--resume", str(run_dir), "--nproc-per-node", "2"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    one = _run([str(ERC_TRAIN), *flags, "--store", str(tmp_path / "s1"), "--run-dir", str(tmp_path / "r1")])
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-5000:]
    finished = verify_version(store / "tiny-v1")["training"]
    assert finished["processes"] == 2 and finished["best_epoch"] >= 1
    for name in ("encoder/model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "s1" / "tiny-v1" / name)), load_file(str(store / "tiny-v1" / name))
        diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
        print(f"\n{name}: stopped at step {stopped_at}, resumed on 2 processes; max |diff| vs 1 process {diff:.3g}")
        assert diff <= TOL, f"{name}: resumed 2-process weights differ from the 1-process run by {diff}"
