"""Issue 11's every-layer mpnet-base recipe (queue section 4, meld-mpnet-w3) on a lent GPU.

The lent machine takes 64 MiB a call and hands back 64 MiB a call, and it is lent for 15 minutes,
start, transfers and idle waits included. So the work is cut into calls, each `python3
docs/runs/gpu_mpnet.py MODE` run in the tree's root there, with the pieces under `.gpu/` (ignored
by git, named in the call's carry); state between calls lives in /tmp/erc-gpu there:

    recv                 take this call's encoder pieces (docs/runs/gpu_carry.py pack), and on the first
                         call install the carried wheels and datasets and print what the machine is
    smoke                a short fit of a randomly initialised encoder of the same shape on part of MELD,
                         the int8 repack and the split: the whole path, and a step rate, in about a minute
    train                put the encoder together, fit one run per seed side by side on the GPU (a
                         watchdog stops the highest seeds when the budget would not hold all), pick the
                         best final dev weighted F1, repack it in int8, cut it into pieces, and hand back
                         the first pieces and a summary of every seed
    send FIRST           hand back pieces FIRST.. (4 a call)

Here, `python docs/runs/gpu_carry.py join PIECES DEST` puts the model together again.
Environment: DATASET (meld or emorynlp, default meld), GPU_CARRY (the carried folder, default .gpu),
SEEDS (default "42 43 44"), MAX_DROP (repack's --max-drop-points, default 0.1), FIT_BUDGET_S
(seconds for the fits, default 330), TAIL_S (a fit's time after its last stage-1 step, default 45),
FIT_ARGS (extra fit flags).
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
W = Path("/tmp/erc-gpu")
CARRY = ROOT / os.environ.get("GPU_CARRY", ".gpu")
OUT = Path(os.environ.get("OUT", "/tmp/erc-gpu/out-local"))
PY = sys.executable
DATASET = os.environ.get("DATASET", "meld")
RECIPE = ["--dataset", DATASET, "--architecture", "window", "--epochs", "3", "--lr", "2e-5"]
PER_CALL = 4
STEP_RE = re.compile(r"stage 1 epoch (\d+)/(\d+):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def env() -> dict[str, str]:
    e = dict(os.environ)
    site = W / "site"
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(site) if site.is_dir() else "") if p)
    e.update(ERC_DATA_DIR=str(W / "datasets"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
             PYTHONUNBUFFERED="1")  # fmt: skip
    return e


def sh(cmd: list[str], **kw) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env(), **kw)


def recv() -> None:
    (W / "parts").mkdir(parents=True, exist_ok=True)
    for f in sorted(CARRY.glob("encoder.*")):
        shutil.copy2(f, W / "parts" / f.name)
        print(f"received {f.name} ({f.stat().st_size / 1e6:.1f} MB)")
    if (CARRY / "datasets").is_dir() and not (W / "datasets").is_dir():
        shutil.copytree(CARRY / "datasets", W / "datasets")
    wheels = sorted((CARRY / "wheels").glob("*.whl")) if (CARRY / "wheels").is_dir() else []
    if wheels and not (W / "site").is_dir():
        sh([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--target", str(W / "site"), *map(str, wheels)])  # fmt: skip
    if not (W / "machine.txt").is_file():
        import torch

        info = [f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}"]
        if torch.cuda.is_available():
            info.append(f"gpu {torch.cuda.get_device_name(0)}")
        info.append(subprocess.run(["bash", "-c", "lscpu | sed -n 's/^Model name: *//p'; nproc"],
                                   capture_output=True, text=True).stdout.strip())  # fmt: skip
        (W / "machine.txt").write_text("\n".join(info) + "\n")
    print((W / "machine.txt").read_text(), end="")
    print("parts here:", sorted(p.name for p in (W / "parts").iterdir()))


def _random_encoder() -> Path:
    """An encoder folder of the carried config and tokenizer with random weights (for `smoke`)."""
    from gpu_carry import read_header, write_small_files  # beside this script
    from transformers import AutoConfig, AutoModel

    dest = W / "random-encoder"
    if (dest / "model.safetensors").is_file():
        return dest
    part1 = W / "parts" / "encoder.part1"
    write_small_files(read_header(part1.read_bytes(), part1)[0], dest)
    AutoModel.from_config(AutoConfig.from_pretrained(dest)).save_pretrained(dest)
    return dest


def _progress(log: Path) -> tuple[int, int] | None:
    """(stage-1 steps done, stage-1 steps in all) from a fit's log, or None before its first step."""
    if not log.is_file():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 20000))
        tail = f.read().decode("utf-8", "replace")
    hits = STEP_RE.findall(tail)
    if not hits:
        return None
    epoch, epochs, done, per = map(int, hits[-1])
    return (epoch - 1) * per + done, epochs * per


def fit_seeds(encoder: Path, seeds: list[int], budget_s: float, tail_s: float, extra: list[str]) -> dict:
    store = W / "store"
    procs: dict[int, subprocess.Popen] = {}
    t0 = time.time()
    threads = str(max(1, (os.cpu_count() or 4) // max(1, len(seeds))))
    for s in seeds:
        name = f"{DATASET}-mpnet-w3-gpu-s{s}"
        cmd = [PY, "-m", "trainer", "fit", *RECIPE, "--encoder", str(encoder), "--seed", str(s),
               "--device", "cuda" if _cuda() else "cpu", "--dtype", "auto", "--checkpoint-every-steps", "0",
               "--weights-dtype", "fp16", "--store", str(store), "--run-dir", str(W / f"run-s{s}"),
               "--version", name, "--no-make-current", *extra]  # fmt: skip
        print("+", " ".join(cmd), flush=True)
        log = open(W / f"s{s}.log", "w")
        procs[s] = subprocess.Popen(cmd, env={**env(), "OMP_NUM_THREADS": threads}, stdout=log, stderr=log)
    history: dict[int, list[tuple[float, int]]] = {s: [] for s in seeds}
    stopped: dict[int, str] = {}
    last_cut = t0
    hard = t0 + budget_s + 20
    while any(p.poll() is None for p in procs.values()):
        time.sleep(5)
        now = time.time()
        alive = [s for s, p in procs.items() if p.poll() is None and s not in stopped]
        ends = {}
        for s in alive:
            pr = _progress(W / f"s{s}.log")
            if pr is None:
                continue
            history[s].append((now, pr[0]))
            old = [h for h in history[s] if h[0] >= now - 40]
            if len(history[s]) >= 2 and now - history[s][0][0] >= 30 and old[-1][1] > old[0][1]:
                rate = (old[-1][1] - old[0][1]) / (old[-1][0] - old[0][0])
                ends[s] = now + (pr[1] - pr[0]) / rate + tail_s
        status = " ".join(f"s{s}:{history[s][-1][1] if history[s] else 0}" for s in alive)
        print(f"[{now - t0:5.0f}s] {status} projected end "
              f"{' '.join(f's{s}:{e - t0:.0f}s' for s, e in ends.items())}", flush=True)  # fmt: skip
        if len(alive) > 1 and len(ends) == len(alive) and now - last_cut >= 45:
            if max(ends.values()) > t0 + budget_s:
                victim = max(alive)
                print(f"budget {budget_s:.0f}s would not hold {len(alive)} runs: stopping seed {victim}", flush=True)
                procs[victim].send_signal(signal.SIGTERM)
                stopped[victim] = "stopped to keep the budget"
                last_cut = now
        if now > hard:
            for s in alive:
                print(f"hard limit: stopping seed {s}", flush=True)
                procs[s].send_signal(signal.SIGTERM)
                stopped[s] = "stopped at the hard limit"
            hard = float("inf")
            kill_at = now + 40
            while any(p.poll() is None for p in procs.values()) and time.time() < kill_at:
                time.sleep(1)
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
    results = {}
    for s, p in procs.items():
        name = f"{DATASET}-mpnet-w3-gpu-s{s}"
        man = store / name / "manifest.json"
        entry: dict = {"rc": p.returncode, "stopped": stopped.get(s)}
        if man.is_file():
            m = json.loads(man.read_text())
            entry.update(version=name, dev=m["metrics"]["dev"], training=m.get("training"),
                         calibration=m.get("calibration"))  # fmt: skip
        results[s] = entry
    print(f"fits done in {time.time() - t0:.0f}s:",
          {s: (r.get("dev", {}).get("weighted_f1"), r["rc"]) for s, r in results.items()}, flush=True)  # fmt: skip
    return results


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def finish(results: dict, tag: str, hand_back: bool = True) -> None:
    """Repack the best seed in int8, cut it into pieces, hand back the first ones and the summary."""
    done = {s: r for s, r in results.items() if "dev" in r}
    summary: dict = {"tag": tag, "seeds": results, "machine": (W / "machine.txt").read_text()}
    if done:
        best = max(done, key=lambda s: done[s]["dev"]["weighted_f1"])
        summary["best_seed"] = best
        ship = W / "ship"
        shutil.rmtree(ship, ignore_errors=True)
        t = time.time()
        shipped = f"{DATASET}-mpnet-w3-s{best}"
        rc = sh([PY, "-m", "trainer", "repack", "--store", str(W / "store"), "--version", done[best]["version"],
                 "--out-store", str(ship), "--out-version", shipped, "--weights-dtype", "int8",
                 "--max-drop-points", os.environ.get("MAX_DROP", "0.1"),
                 "--device", "cuda" if _cuda() else "cpu"])  # fmt: skip
        summary["repack_rc"], summary["repack_s"] = rc, round(time.time() - t, 1)
        if rc == 0:
            man = json.loads((ship / shipped / "manifest.json").read_text())
            summary["shipped_dev"] = man["metrics"]["dev"]
            summary["repacked_from"] = man.get("repacked_from")
            pieces = W / "pieces"
            shutil.rmtree(pieces, ignore_errors=True)
            sh([PY, str(ROOT / "docs/runs/gpu_carry.py"), "split", str(ship / shipped), str(pieces)])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with lzma.open(OUT / "logs.tar.xz", "w") as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for f in sorted(W.glob("s*.log")) + [W / "machine.txt"]:
            tar.add(f, arcname=f.name)
    if hand_back:
        send(0)


def send(first: int) -> None:
    pieces = W / "pieces"
    OUT.mkdir(parents=True, exist_ok=True)
    if not (pieces / "pieces.json").is_file():
        print("no pieces to send")
        return
    meta = json.loads((pieces / "pieces.json").read_text())
    if first == 0:
        shutil.copy2(pieces / "pieces.json", OUT / "pieces.json")
    for i in range(first, min(first + PER_CALL, meta["count"])):
        shutil.copy2(pieces / f"piece.{i:03d}", OUT / f"piece.{i:03d}")
    print(f"sent pieces {first}..{min(first + PER_CALL, meta['count']) - 1} of {meta['count']}")


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else ""
    seeds = [int(s) for s in os.environ.get("SEEDS", "42 43 44").split()]
    budget = float(os.environ.get("FIT_BUDGET_S", "330"))
    tail = float(os.environ.get("TAIL_S", "45"))
    extra = os.environ.get("FIT_ARGS", "").split()
    if mode == "recv":
        recv()
    elif mode == "smoke":
        recv()
        enc = _random_encoder()
        shutil.rmtree(W / "store", ignore_errors=True)
        res = fit_seeds(enc, seeds, budget, tail,
                        ["--max-train-conversations", "100", "--max-dev-conversations", "40", "--epochs", "1",
                         "--stage2-epochs", "2", *extra])  # fmt: skip
        finish(res, "smoke (random weights, part of MELD)", hand_back=False)
        shutil.rmtree(W / "store", ignore_errors=True)
        for s in seeds:
            shutil.rmtree(W / f"run-s{s}", ignore_errors=True)
    elif mode == "train":
        recv()
        enc = W / "mpnet"
        if not (enc / "model.safetensors").is_file():
            sh([PY, str(ROOT / "docs/runs/gpu_carry.py"), "unpack", str(W / "parts"), str(enc)])
        finish(fit_seeds(enc, seeds, budget, tail, extra), "train")
    elif mode == "send":
        send(int(argv[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
