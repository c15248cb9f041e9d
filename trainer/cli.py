"""erc-train: `fit` trains and publishes a model version; `evaluate` scores one on a split."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from erc_stream.cli import configure_process
from erc_stream.errors import ErcError

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
    for k in ("weighted_f1", "macro_f1", "accuracy", "mcc", "micro_f1_no_neutral", "macro_f1_no_neutral"):
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
    for label, row in zip(m["labels"], m["confusion_matrix"]):
        cm.add_row(label, *[str(v) for v in row])
    Console().print(cm)


@app.command()
def fit(
    dataset: str = typer.Option("meld", help="meld, emorynlp, dailydialog or iemocap"),
    data_dir: Optional[Path] = typer.Option(None, envvar="ERC_DATA_DIR", help="folder holding the dataset folders"),
    store: Path = typer.Option(Path("var/models"), envvar="ERC_MODEL_STORE", help="model store to publish into"),
    encoder: Optional[Path] = typer.Option(None, help="local HF encoder folder (default: packaged all-MiniLM-L6-v2)"),
    context_turns: int = typer.Option(5, help="past turns in each prompt"),
    max_length: int = typer.Option(256, help="max tokens per prompt"),
    epochs: int = typer.Option(3, help="stage-1 epochs"),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(5e-5, help="encoder learning rate"),
    head_lr: float = typer.Option(1e-3, help="projection head learning rate"),
    lambda1: float = typer.Option(0.9, help="weight of SupCon+angle vs cross-entropy"),
    lambda2: float = typer.Option(0.1, help="weight of the anchor-angle loss"),
    temperature: float = typer.Option(0.1, help="tau of the cosine logits"),
    stage2: bool = typer.Option(True, "--stage2/--no-stage2", help="anchor adaptation after stage 1"),
    stage2_epochs: int = typer.Option(20),
    anchors: str = typer.Option(
        "file", help="plain (label words), llm (OpenAI-compatible LLM) or file (descriptions JSON)"
    ),
    descriptions: Optional[Path] = typer.Option(
        None, help="descriptions JSON for --anchors file (default: the shipped one)"
    ),
    llm_model: Optional[str] = typer.Option(None, help="LLM model for --anchors llm (else OPENAI_MODEL)"),
    llm_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (else OPENAI_BASE_URL)"),
    embeddings_model: Optional[str] = typer.Option(None, help="embed descriptions with this embeddings endpoint model"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    dtype: str = typer.Option("auto", help="auto, fp32, bf16 or fp16"),
    seed: int = typer.Option(42),
    max_train_conversations: Optional[int] = typer.Option(None, help="use only the first N train conversations"),
    max_dev_conversations: Optional[int] = typer.Option(None, help="use only the first N dev conversations"),
    version: Optional[str] = typer.Option(None, help="version name (default: dataset-timestamp-random)"),
    make_current: bool = typer.Option(
        True, "--make-current/--no-make-current", help="point CURRENT at the new version"
    ),
    quick: bool = typer.Option(False, "--quick", help="a few-minute run: 1 epoch on 80 train / 40 dev conversations"),
) -> None:
    """Train with EACL (stage 1 + anchor adaptation), select on dev, publish to the store."""
    _setup()
    from trainer.config import QUICK_OVERRIDES, TrainConfig
    from trainer.train import fit as run_fit

    try:
        cfg = TrainConfig(
            dataset=dataset,
            data_dir=data_dir,
            store=store,
            encoder=encoder,
            context_turns=context_turns,
            max_length=max_length,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            head_lr=head_lr,
            lambda1=lambda1,
            lambda2=lambda2,
            temperature=temperature,
            stage2=stage2,
            stage2_epochs=stage2_epochs,
            anchors=anchors,
            descriptions=descriptions,
            llm_model=llm_model,
            llm_base_url=llm_base_url,
            embeddings_model=embeddings_model,
            device=device,
            dtype=dtype,
            seed=seed,
            max_train_conversations=max_train_conversations,
            max_dev_conversations=max_dev_conversations,
            version=version,
            make_current=make_current,
        )
        if quick:
            cfg = cfg.replace(
                **{
                    k: v
                    for k, v in QUICK_OVERRIDES.items()
                    if k not in ("max_train_conversations", "max_dev_conversations") or getattr(cfg, k) is None
                }
            )
        result = run_fit(cfg)
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    print_metrics(result.metrics, f"dev metrics of {result.version}")
    console.print(
        f"published [bold]{result.version}[/] to {result.path} in {result.wall_s:.0f} s (best epoch {result.best_epoch})"
    )


@app.command()
def evaluate(
    store: Path = typer.Option(Path("var/models"), envvar="ERC_MODEL_STORE", help="model store"),
    version: Optional[str] = typer.Option(None, help="version to evaluate (default: CURRENT)"),
    split: str = typer.Option("dev", help="train, dev or test"),
    dataset: Optional[str] = typer.Option(None, help="dataset (default: the one the model was trained on)"),
    data_dir: Optional[Path] = typer.Option(None, envvar="ERC_DATA_DIR"),
    out: Optional[Path] = typer.Option(None, help="report folder (default: reports/<version>/<split>)"),
    predictions: Optional[Path] = typer.Option(None, help="also write per-utterance predictions as JSONL"),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("auto"),
    batch_size: int = typer.Option(64),
    max_conversations: Optional[int] = typer.Option(None),
) -> None:
    """Score a published version on a split: metrics table, metrics.json and plots."""
    _setup()
    from erc_stream.artifact import read_current, version_path
    from erc_stream.model import Predictor
    from trainer.datasets import DATASETS, load_split
    from trainer.evaluate import compute_metrics, predict_conversations, write_report

    try:
        version = version or read_current(store)
        if version is None:
            raise ErcError(
                f"model store {store} has no CURRENT version; train one with `erc-train fit` or pass --version"
            )
        predictor = Predictor.load(version_path(store, version), device=device, dtype=dtype)
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
        out = out or Path("reports") / version / split
        write_report(out, {split: m}, predictor.labels, title=f"{ds} {version}")
        # Anchors before/after training are a fact of the training run: its heatmap is in the artifact.
        trained = version_path(store, version) / "report" / "anchors_cosine.png"
        if trained.is_file():
            shutil.copyfile(trained, out / "anchors_cosine.png")
        if predictions:
            predictions.parent.mkdir(parents=True, exist_ok=True)
            with open(predictions, "w", encoding="utf-8") as f:
                for (cid, i), g, lid, sc in zip(res.keys, res.gold, res.predictions.label_ids, res.predictions.scores):
                    f.write(
                        json.dumps(
                            {
                                "conversation_id": cid,
                                "index": i,
                                "gold": predictor.labels[g],
                                "emotion": predictor.labels[int(lid)],
                                "scores": [round(float(s), 6) for s in sc],
                            }
                        )
                        + "\n"
                    )
    except (ErcError, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    print_metrics(m, f"{ds} {split}: {version}")
    console.print(f"report written to {out}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
