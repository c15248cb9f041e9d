"""TrainConfig: every setting of one `erc-train fit` run, validated once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erc_stream.config import valid_channel
from erc_stream.errors import ConfigError
from erc_stream.prompt import DEFAULT_TEMPLATE, SPEAKER_MODES, TURN_TEMPLATE
from trainer.datasets import DATASETS
from trainer.dropout import DROPOUT_MASKS
from trainer.encoders import resolve_encoder
from trainer.losses import TRIPLET_MINING
from trainer.turn import SAMPLERS

__all__ = ["ARCHITECTURES", "CLASS_WEIGHTINGS", "QUICK_OVERRIDES", "TrainConfig"]

# --quick: a few-minute run that still exercises every stage and publishes a real artifact.
QUICK_OVERRIDES = dict(epochs=1, stage2_epochs=2, max_train_conversations=80, max_dev_conversations=40)
# Cross-entropy class weights from train label counts n_c (N utterances, C classes):
# none = 1, inverse = N / (C n_c), sqrt_inverse = sqrt(N / (C n_c)).
CLASS_WEIGHTINGS = ("none", "inverse", "sqrt_inverse")
_PATH_FIELDS = ("data_dir", "store", "descriptions", "run_dir", "distill_from")
_PATH_TUPLE_FIELDS = ("init_from",)  # kept as a list of strings in the run config
# window: each prompt holds the last k turns as text (EACL); turn: each turn is encoded once and a
# context transformer reads the window's cached turn vectors (trainer/turn.py).
ARCHITECTURES = ("window", "turn")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Defaults follow the EACL paper scaled to a 2-core CPU."""

    dataset: str = "meld"
    data_dir: Path | None = None
    store: Path = Path("var/models")
    encoder: str = "minilm-l6"  # a name from `erc-train encoders list` or a local HF encoder folder
    context_turns: int = 5
    max_length: int = 256
    template: str = DEFAULT_TEMPLATE
    speakers: str = "names"  # names, or anonymous: "speaker 1" (the current one), "speaker 2", ... by recency
    proj_dim: int = 256
    dropout: float | None = None  # every dropout of encoder and head; None: the encoder's own and 0.1 in the head
    dropout_masks: str = "auto"  # threshold (trainer/dropout.py), bernoulli (PyTorch's), auto: threshold on a CPU
    freeze_layers: int = 0  # window: embeddings and the first N encoder layers fixed, their outputs cached
    # Stage 1
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    lambda1: float = 0.9
    lambda2: float = 0.1
    temperature: float = 0.1
    class_weighting: str = "none"  # CE weights for rare classes: none, inverse, sqrt_inverse
    # Stage 2 (anchor adaptation on frozen representations)
    stage2: bool = True
    stage2_epochs: int = 20
    stage2_lr: float = 1e-2
    # Anchors
    anchors: str = "file"
    descriptions: Path | None = None
    llm_model: str | None = None
    llm_base_url: str | None = None
    embeddings_model: str | None = None
    # Runtime
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 42
    eval_batch_size: int = 64
    max_train_conversations: int | None = None
    max_dev_conversations: int | None = None
    version: str | None = None
    make_current: bool = True
    channel: str = ""  # --make-current moves CURRENT.<channel> instead of CURRENT (one line of models per channel)
    # Architecture; the context_* settings are the turn model's context transformer
    architecture: str = "window"
    context_layers: int = 2
    context_heads: int = 0  # 0: one head per 64 encoder dimensions
    context_ffn_dim: int = 0  # 0: 4 x the encoder width
    context_dropout: float = 0.1
    context_lr: float | None = None  # None: head_lr
    # SentEmoContext options: triplet loss on the representations, class-balanced sampling
    triplet_weight: float = 0.0  # 0: no triplet loss
    triplet_margin: float = 0.3  # in cosine distance (1 - cos)
    triplet_mining: str = "batch_hard"  # batch_hard or semi_hard
    sampler: str = "shuffle"  # shuffle or balanced (by inverse class frequency; turn: whole conversations)
    # Knowledge distillation: a published version folder whose predictions the student also learns
    distill_from: Path | None = None  # None: no teacher
    distill_weight: float = 1.0  # weight of KL(teacher || student) added to the stage-1 loss
    # Starting weights: the mean of these published version folders' encoder and head (trainer/init_weights.py)
    init_from: tuple[Path, ...] = ()  # empty: the encoder's pretrained weights and a fresh head
    # Checkpoints (resume with `erc-train fit --resume RUN_DIR`)
    run_dir: Path | None = None  # None: var/runs/<version>
    checkpoint_every_steps: int = 200  # 0: only at the end of each epoch
    weights_dtype: str = "fp32"  # how the published encoder weights are stored: fp32, fp16, bf16 or int8

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"TrainConfig.dataset has an invalid value: {self.dataset!r}; valid names: {', '.join(DATASETS)}"
            )
        # Settings with a fixed set of values: checked against it, and an error lists it.
        choices = {
            "speakers": SPEAKER_MODES,
            "anchors": ("plain", "llm", "file"),
            "device": ("auto", "cpu", "cuda"),
            "dtype": ("auto", "fp32", "bf16", "fp16"),
            "class_weighting": CLASS_WEIGHTINGS,
            "weights_dtype": ("fp32", "fp16", "bf16", "int8"),
            "architecture": ARCHITECTURES,
            "triplet_mining": TRIPLET_MINING,
            "sampler": SAMPLERS,
            "dropout_masks": DROPOUT_MASKS,
        }
        checks = [
            ("context_turns", self.context_turns >= 0),
            ("max_length", 16 <= self.max_length <= 4096),
            ("speakers", self.speakers in choices["speakers"]),
            ("proj_dim", self.proj_dim >= 2),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1),
            ("dropout_masks", self.dropout_masks in choices["dropout_masks"]),
            ("freeze_layers", self.freeze_layers >= 0),
            ("epochs", self.epochs >= 0),
            ("batch_size", self.batch_size >= 2),
            ("lr", self.lr > 0),
            ("head_lr", self.head_lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1),
            ("max_grad_norm", self.max_grad_norm > 0),
            ("lambda1", 0 <= self.lambda1 <= 1),
            ("lambda2", self.lambda2 >= 0),
            ("temperature", self.temperature > 0),
            ("stage2_epochs", self.stage2_epochs >= 0),
            ("stage2_lr", self.stage2_lr > 0),
            ("anchors", self.anchors in choices["anchors"]),
            ("device", self.device in choices["device"]),
            ("dtype", self.dtype in choices["dtype"]),
            ("eval_batch_size", self.eval_batch_size >= 1),
            ("max_train_conversations", self.max_train_conversations is None or self.max_train_conversations >= 1),
            ("max_dev_conversations", self.max_dev_conversations is None or self.max_dev_conversations >= 1),
            ("class_weighting", self.class_weighting in choices["class_weighting"]),
            ("checkpoint_every_steps", self.checkpoint_every_steps >= 0),
            ("weights_dtype", self.weights_dtype in choices["weights_dtype"]),
            ("architecture", self.architecture in choices["architecture"]),
            ("context_layers", self.context_layers >= 0),
            ("context_heads", self.context_heads >= 0),
            ("context_ffn_dim", self.context_ffn_dim >= 0),
            ("context_dropout", 0 <= self.context_dropout < 1),
            ("context_lr", self.context_lr is None or self.context_lr > 0),
            ("triplet_weight", self.triplet_weight >= 0),
            ("triplet_margin", self.triplet_margin > 0),
            ("triplet_mining", self.triplet_mining in choices["triplet_mining"]),
            ("sampler", self.sampler in choices["sampler"]),
            ("distill_weight", self.distill_weight >= 0),
            ("channel", valid_channel(self.channel)),
        ]
        for name, ok in checks:
            if not ok:
                valid = f"; valid values: {', '.join(choices[name])}" if name in choices else ""
                raise ConfigError(f"TrainConfig.{name} has an invalid value: {getattr(self, name)!r}{valid}")
        if self.freeze_layers and self.architecture != "window":
            raise ConfigError(
                "TrainConfig.freeze_layers caches each window prompt's frozen-layer output: use it with "
                "architecture='window' (a turn model encodes short turns and trains every layer)"
            )
        resolve_encoder(self.encoder)  # a clear error (with the install command) before any work starts
        if self.distill_from is not None and not (Path(self.distill_from) / "manifest.json").is_file():
            raise ConfigError(
                f"distill_from={str(self.distill_from)!r} is not a model version folder (no manifest.json); "
                "pass a version folder of a store, e.g. models/<the version models/CURRENT names>"
            )
        for path in self.init_from:
            if not (Path(path) / "manifest.json").is_file():
                raise ConfigError(
                    f"init_from={str(path)!r} is not a model version folder (no manifest.json); pass version "
                    "folders of a store, e.g. models/<the version models/CURRENT names>"
                )
        if self.init_from and self.architecture != "window":
            raise ConfigError("TrainConfig.init_from starts a window model; a turn model trains from its encoder")
        if self.descriptions is not None and not Path(self.descriptions).is_file():
            raise ConfigError(f"descriptions={str(self.descriptions)!r} does not exist; pass a JSON descriptions file")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def quick(self) -> TrainConfig:
        """The --quick variant: QUICK_OVERRIDES, keeping conversation limits the user set."""
        keep = ("max_train_conversations", "max_dev_conversations")
        return self.replace(**{k: v for k, v in QUICK_OVERRIDES.items() if k not in keep or getattr(self, k) is None})

    @property
    def prompt_template(self) -> str:
        """The template of the prompts: a turn model's default is TURN_TEMPLATE, the turn alone."""
        if self.architecture == "turn" and self.template == DEFAULT_TEMPLATE:
            return TURN_TEMPLATE
        return self.template

    @property
    def encoder_path(self) -> Path:
        return resolve_encoder(self.encoder)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _PATH_TUPLE_FIELDS:
                v = [str(p) for p in v]
            out[f.name] = str(v) if isinstance(v, Path) else v
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of to_json; unknown keys are refused with their names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"run config has settings this version does not know: {', '.join(unknown)}")
        values: dict[str, Any] = {k: (Path(v) if k in _PATH_FIELDS and v is not None else v) for k, v in data.items()}
        for k in _PATH_TUPLE_FIELDS:
            if k in values:
                values[k] = tuple(Path(p) for p in values[k])
        return cls(**values)


# Every setting's default, by name: the CLI's defaults, and what a run published before a setting
# existed ran with (docs/runs/summarize.py). One copy, read off the dataclass.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
