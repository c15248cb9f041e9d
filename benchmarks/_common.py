"""Shared pieces of the benchmark scripts: the model under test, MELD dev prompts,
machine facts, FLOP counting and writing results (JSON + markdown) into docs/benchmarks/.

Every script records the machine it ran on (CPU model, ISA flags that matter for bf16/int8,
torch version and threads, load average before and after) next to its numbers, because on
a shared 2-core machine the load average decides how far a figure can be trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Same default as the Makefile: the datasets folder next to the checkout.
os.environ.setdefault("ERC_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))

__all__ = [
    "ROOT",
    "DOCS_DIR",
    "BENCH_STORE",
    "EncoderShape",
    "MINILM_L6",
    "encoder_flops_per_token",
    "encoder_pass_flops",
    "add_mask_rows_option",
    "mask_rows_modes",
    "machine_info",
    "resolve_model",
    "meld_dev_examples",
    "write_results",
    "md_table",
    "command_line",
    "machine_md",
]

DOCS_DIR = ROOT / "docs" / "benchmarks"
BENCH_STORE = ROOT / "var" / "bench" / "store"
# Where a trained model is looked for when --store is not given, in this order.
_DEFAULT_STORES = (ROOT / "var" / "models", ROOT / "var" / "runs" / "store")


@dataclass(frozen=True)
class EncoderShape:
    """The dimensions that set an encoder's cost."""

    layers: int
    hidden: int
    intermediate: int


MINILM_L6 = EncoderShape(layers=6, hidden=384, intermediate=1536)


def encoder_shape(version_dir: Path) -> EncoderShape:
    """The shape of a published version's encoder, read from its ``encoder/config.json``."""
    config = json.loads((Path(version_dir) / "encoder" / "config.json").read_text(encoding="utf-8"))
    return EncoderShape(
        layers=int(config["num_hidden_layers"]),
        hidden=int(config["hidden_size"]),
        intermediate=int(config["intermediate_size"]),
    )


def encoder_flops_per_token(seq_len: int, shape: EncoderShape = MINILM_L6) -> int:
    """Forward FLOPs per token of a BERT-style encoder over a sequence of ``seq_len`` tokens.

    Per layer and token (a multiply-add counts 2):
      Q, K, V and output projections   4 * 2*H*H  = 8*H^2
      feed-forward (H->I->H)           2 * 2*H*I  = 4*H*I
      attention scores Q.K^T and A.V   2 * 2*T*H  = 4*T*H
    Embeddings, layer norms, softmax, GELU and the projection head are left out
    (under 1% at these sizes).
    """
    h, i = shape.hidden, shape.intermediate
    return shape.layers * (8 * h * h + 4 * h * i + 4 * seq_len * h)


def encoder_pass_flops(prompts: int, width: int, shape: EncoderShape = MINILM_L6, *, mask_rows: bool = True) -> int:
    """Forward FLOPs of one encoder pass over ``prompts`` prompts padded to ``width`` tokens.

    ``mask_rows``: the last layer's feed-forward runs on each prompt's mask token alone
    (``erc_stream.model.mask_hidden``, as the served model and training do), not on all ``width``.
    """
    flops = prompts * width * encoder_flops_per_token(width, shape)
    if mask_rows:
        flops -= prompts * (width - 1) * 4 * shape.hidden * shape.intermediate
    return flops


def add_mask_rows_option(ap: argparse.ArgumentParser) -> None:
    """``--mask-rows on|off|both``; read the parsed value with ``mask_rows_modes``."""
    ap.add_argument(
        "--mask-rows",
        choices=("on", "off", "both"),
        default="on",
        help="the last layer's feed-forward on the mask rows only (on, as served and trained), on every token "
        "(off), or both, each batch both ways back to back (order alternating)",
    )


def add_adamw_option(ap: argparse.ArgumentParser) -> None:
    """``--adamw fused|loop``: the trainer's AdamW (``trainer.train.adamw``) fused, as it trains, or as
    PyTorch's per-tensor loop (every run before session 35); read it with ``adamw_fused``."""
    ap.add_argument(
        "--adamw",
        choices=("fused", "loop"),
        default="fused",
        help="AdamW fused (as the trainer runs it on a CPU or GPU) or PyTorch's per-tensor loop",
    )


def adamw_fused(value: str) -> bool:
    return value == "fused"


TRAIN_DTYPES = ("fp32", "bf16")  # what a training benchmark runs on a CPU: fp32, or bf16 autocast


def train_dtypes(ap: argparse.ArgumentParser, value: str) -> list[str]:
    """A ``--dtypes`` comma list of ``TRAIN_DTYPES``; anything else stops the script with a message."""
    dtypes = value.split(",")
    if unknown := sorted(set(dtypes) - set(TRAIN_DTYPES)):
        ap.error(f"--dtypes: unknown {', '.join(unknown)}; use fp32 and/or bf16")
    return dtypes


def mask_rows_modes(value: str) -> list[bool]:
    """The ``EmotionModel.mask_rows_only`` settings a ``--mask-rows`` value runs, in order."""
    return {"on": [True], "off": [False], "both": [True, False]}[value]


def timed_update(loss, opt, params: list, max_grad_norm: float) -> float:
    """The trainer's update after a stage-1 loss (zero the gradients, backward, clip, AdamW step);
    returns the seconds the optimizer's step took."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    t0 = time.perf_counter()
    opt.step()
    return time.perf_counter() - t0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_seconds() -> dict | None:
    """CPU seconds so far: the whole machine's busy (steal included), stolen and total time (/proc/stat),
    and this process's own (with its children that have been waited for). None where /proc/stat cannot
    be read."""
    from erc_stream.hoststat import read_cpu_ticks

    ticks = read_cpu_ticks()
    if ticks is None:
        return None
    machine = ticks.seconds()
    own = os.times()
    return {
        "machine_busy_s": round(machine["busy_s"], 2),
        "machine_steal_s": round(machine["steal_s"], 2),
        "machine_total_s": round(machine["total_s"], 2),
        "own_s": round(own.user + own.system + own.children_user + own.children_system, 2),
    }


def others_cpu_share(before: dict, after: dict) -> float | None:
    """The share of all CPUs that other processes used between two machine_info() calls (0-1). Time the
    hypervisor withheld (steal) is not counted as theirs: host_steal_share says it."""
    a, b = before.get("cpu_seconds"), after.get("cpu_seconds")
    if not a or not b or b["machine_total_s"] <= a["machine_total_s"]:
        return None
    busy = b["machine_busy_s"] - a["machine_busy_s"]
    steal = b.get("machine_steal_s", 0.0) - a.get("machine_steal_s", 0.0)
    own = b["own_s"] - a["own_s"]
    return min(1.0, max(0.0, (busy - steal - own) / (b["machine_total_s"] - a["machine_total_s"])))


def host_steal_share(before: dict, after: dict) -> float | None:
    """The share of the CPU time this machine asked for between two machine_info() calls that the
    hypervisor withheld (steal; erc_stream/hoststat.py). None without /proc/stat."""
    from erc_stream.hoststat import steal_share

    a, b = before.get("cpu_seconds"), after.get("cpu_seconds")
    if not a or not b or "machine_steal_s" not in a or "machine_steal_s" not in b:
        return None
    return steal_share(b["machine_busy_s"] - a["machine_busy_s"], b["machine_steal_s"] - a["machine_steal_s"])


def machine_info() -> dict:
    """What the numbers were measured on; call at the start and again at the end of a run."""
    import torch

    from erc_stream.model import cpu_has_native_bf16

    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpu_seconds": _cpu_seconds(),
        "git": _git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def resolve_model(store: Path | None) -> Path:
    """Folder of the model version to benchmark.

    ``store`` given: its CURRENT version. Otherwise the first of var/models and
    var/runs/store with a CURRENT; failing that, a benchmark model is published once into
    var/bench/store: the packaged all-MiniLM-L6-v2 with a seeded random head and the
    training defaults' prompt (5 context turns, 256 tokens). Speed depends on the
    architecture and prompt settings, not on trained weights, so it times the same work.
    """
    from erc_stream.artifact import read_current, version_path

    candidates = [Path(store)] if store is not None else [*_DEFAULT_STORES, BENCH_STORE]
    for s in candidates:
        version = read_current(s) if s.is_dir() else None
        if version:
            return version_path(s, version)
    if store is not None:
        raise SystemExit(
            f"model store {store} has no CURRENT version; publish one with `erc-train fit --store {store}`"
        )
    return publish_bench_model(BENCH_STORE)


WINDOW_BENCH_VERSION = "bench-untrained-v1"
TURN_BENCH_VERSION = "bench-untrained-turn-v1"


def publish_bench_model(store: Path, architecture: str = "window") -> Path:
    """An untrained version with the training defaults and the packaged encoder: same shapes and
    prompts as a trained one, so the same work. ``window`` becomes the store's CURRENT; ``turn``
    (k=5, 2 context layers) is published beside it once and not made current."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from erc_stream.artifact import publish_version, version_path
    from erc_stream.context import ContextModel, ContextSettings
    from erc_stream.devtools.untrained import untrained_manifest
    from erc_stream.model import ProjectionHead, default_encoder_path
    from trainer.config import TrainConfig
    from trainer.datasets import DATASETS

    turn = architecture == "turn"
    version = TURN_BENCH_VERSION if turn else WINDOW_BENCH_VERSION
    if turn and (store / version).is_dir():
        return version_path(store, version)
    cfg = TrainConfig(architecture=architecture)
    path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True).eval()
    labels = list(DATASETS["meld"].labels)
    hidden = encoder.config.hidden_size
    settings = (
        ContextSettings(hidden_size=hidden, context_turns=cfg.context_turns, layers=cfg.context_layers)
        if turn
        else None
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = ProjectionHead(hidden, cfg.proj_dim)
        context = ContextModel(settings) if settings else None
        anchors = torch.randn(len(labels), cfg.proj_dim)  # (C, D)
    manifest = untrained_manifest(
        dataset="meld",
        labels=labels,
        template=cfg.prompt_template,
        context_turns=cfg.context_turns,
        max_length=cfg.max_length,
        temperature=cfg.temperature,
        encoder_path=path,
        proj_dim=cfg.proj_dim,
        seed=0,
        note="untrained benchmark model (benchmarks/_common.py): times the work, predicts nothing useful",
        context_model=settings.to_manifest() if settings else None,
    )
    return publish_version(
        store,
        version=version,
        encoder=encoder,
        tokenizer=tokenizer,
        head_state=head.state_dict(),
        anchors=anchors,
        manifest=manifest,
        context_state=context.state_dict() if context is not None else None,
        make_current=not turn,
    )


def meld_dev_examples(builder, labels, limit: int | None = None):
    """(prompt, label id) for every MELD dev utterance in conversation order, built exactly as
    the evaluator and the worker build them; also returns the conversations."""
    from trainer.datasets import load_split
    from trainer.evaluate import build_examples

    convs = load_split("meld", "dev")
    if limit is not None:
        convs = convs[:limit]
    return build_examples(builder, convs, {label: i for i, label in enumerate(labels)}), convs


def command_line() -> str:
    """The exact command that produced a result, for the markdown."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


# In a results page, what follows this line is written by hand (quality tables, readings) and
# survives a re-run of the benchmark, which rewrites only what comes before it.
KEEP_MARKER = "<!-- written by hand below: kept when the benchmark re-runs -->"


def write_results(name: str, payload: dict, markdown: str, out_dir: Path = DOCS_DIR) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (keeping its hand-written tail) and print the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jpath.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    old = mpath.read_text(encoding="utf-8") if mpath.exists() else ""
    tail = old[old.index(KEEP_MARKER) :] if KEEP_MARKER in old else ""
    mpath.write_text(markdown.rstrip() + "\n" + ("\n" + tail.rstrip() + "\n" if tail else ""), encoding="utf-8")
    print(markdown)
    print(f"\nwrote {jpath.relative_to(ROOT) if jpath.is_relative_to(ROOT) else jpath} and {mpath.name}")
    return jpath, mpath


# Above this share of all CPUs used by other processes during a run, its figures are flagged.
OTHERS_SHARE_UNDER_LOAD = 0.10


def machine_md(before: dict, after: dict) -> str:
    """One paragraph on the machine and whether other processes shared its cores during the run.

    The CPU time other processes used between the two snapshots says it (the benchmark's own time,
    children included, is subtracted). The load average does not: it lags by minutes, so it is
    high after any earlier job, and after the run it counts the benchmark's own threads.
    """
    share, steal = others_cpu_share(before, after), host_steal_share(before, after)
    if share is not None:
        others = f" Other processes used {share:.0%} of the CPUs during the run."
        loaded = share > OTHERS_SHARE_UNDER_LOAD
        why = f"other processes used {share:.0%} of the CPUs during the run"
        if steal is not None:
            others += f" The hypervisor withheld {steal:.0%} of the CPU time the machine asked for (steal)."
            if steal > OTHERS_SHARE_UNDER_LOAD:
                loaded, why = True, f"{why}, and the hypervisor withheld {steal:.0%} of the CPU time asked for"
    else:  # no /proc/stat: the load average before the run is all there is
        others, loaded = "", before["loadavg_1_5_15"][0] > 0.5 * (before["logical_cpus"] or 1)
        why = f"1-minute load average {before['loadavg_1_5_15'][0]} before the run"
    load_note = (
        f" **Measured under load**: {why} on {before['logical_cpus']} logical CPUs, so absolute figures are "
        "low and noisy."
        if loaded
        else ""
    )
    return (
        f"Machine: {before['cpu_model']}, {before['logical_cpus']} logical CPUs, flags "
        f"{', '.join(before['cpu_flags']) or 'none of interest'} (native bf16: {before['cpu_native_bf16']}); "
        f"torch {before['torch']} ({before['torch_cpu_capability']}), {before['torch_threads']} threads; "
        f"git {before['git']}; {before['time_utc']}. Load average (1/5/15 min) before "
        f"{before['loadavg_1_5_15']}, after {after['loadavg_1_5_15']} (the benchmark's own work included)."
        f"{others}{load_note}"
    )
