"""Every option of a run as data: frozen dataclasses, one per concern, each default written once.

A training run is a ``TrainConfig``: the task name and five sections — ``model``, ``data``, ``optim`` (optimiser,
schedule, epochs, batch), ``run`` (where and how this invocation runs) and the task's own section (``classify``,
``detect`` or ``segment``). ``mobilenets eval`` and ``predict`` take an ``EvalConfig`` / ``PredictConfig``.

Each section checks its own values in ``__post_init__`` (one line naming the value), so a bad option stops the
command before any work. The command line is generated from the fields (``Option`` metadata: flag, help,
choices), recipe files (TOML) and ``--set section.field=value`` fill the same fields, and a checkpoint stores
``TrainConfig.to_dict()``; ``eval``, ``predict``, ``export`` and ``--resume`` read it back with ``from_dict``.
Checkpoints written before the config existed stored the flat namespace of the command line; ``from_flat`` reads those
through the same fields (``Option.legacy`` names a key that changed).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from mobilenets.config_fields import (
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    TASKS,
    check_int,
    check_pair,
    check_range,
    check_resolution,
    coerce,
    field_types,
    opt,
    option_of,
)
from mobilenets.errors import ConfigError

CONFIG_VERSION = 1

# Bounds stated once; the messages quote them.
WIDTH_RANGE = (0.05, 4.0)  # the papers use 0.25 … 1.4; below 0.05 every layer rounds to the 8-channel minimum
MAX_CLASSES = 25_000  # ImageNet-21k has 21,841
MAX_EPOCHS = 10_000
MAX_BATCH = 16_384
MAX_THREADS = 1_024
MAX_WORKERS = 256
MAX_TOP_K = 10_000


# -- the optimiser recipe (presets: mobilenets.engine.optim's docstring cites their sources) --------------
@dataclass(frozen=True)
class Recipe:
    """Everything the optimiser and schedule need; ``resolve_recipe`` fills it from a preset and overrides."""

    optimizer: str  # "rmsproptf" | "sgd" | "adamw"
    lr: float
    weight_decay: float
    schedule: str  # "exponential" (× decay_rate per epoch) | "cosine"
    decay_rate: float = 0.98
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA
    momentum: float = 0.9
    rmsprop_decay: float = 0.9
    eps: float = 1.0
    # The batch ``lr`` belongs to: a default lr is scaled by batch / reference_batch (0: never scaled).
    reference_batch: int = 0


# Default learning rates follow the linear scaling rule (Goyal et al. 2017, §2.1: "when the minibatch size is
# multiplied by k, multiply the learning rate by k") from the batch each was published for: V2 §6.1's 0.045 at
# batch 96, and SGD's 0.1 at batch 256 (Goyal et al.'s reference). An unscaled 0.1 at batch 8 diverges on a
# small folder; an explicit --lr is used as given.
PRESETS: dict[str, Recipe] = {
    "paper": Recipe("rmsproptf", lr=0.045, weight_decay=4e-5, schedule="exponential", eps=1.0, reference_batch=96),
    "modern": Recipe(
        "sgd", lr=0.1, weight_decay=4e-5, schedule="cosine", warmup_epochs=1.0, label_smoothing=0.1, ema_decay=0.999,
        reference_batch=256,
    ),
}  # fmt: skip
_ADAMW_DEFAULTS = {"lr": 2e-3, "weight_decay": 0.05, "reference_batch": 0}  # Adam's step is scale-free: unscaled


def resolve_recipe(
    preset: str,
    optimizer: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    warmup_epochs: float | None = None,
    label_smoothing: float | None = None,
    ema_decay: float | None = None,
    batch_size: int | None = None,
) -> Recipe:
    """The preset with every non-None override applied (AdamW brings its own lr / weight-decay defaults).
    Without ``lr``, the preset's is scaled linearly to ``batch_size`` (images per optimiser step of one process)
    from the preset's ``reference_batch``."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    fields = base.__dict__.copy()
    if optimizer is not None:
        if optimizer not in ("rmsproptf", "sgd", "adamw"):
            raise ConfigError(f"unknown optimizer {optimizer!r}; expected rmsproptf, sgd or adamw")
        fields["optimizer"] = optimizer
        if optimizer == "adamw" and base.optimizer != "adamw":
            fields.update(_ADAMW_DEFAULTS)
    overrides = {
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "ema_decay": ema_decay,
    }
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if lr is None and batch_size and fields["reference_batch"]:
        fields["lr"] = fields["lr"] * batch_size / fields["reference_batch"]
    recipe = Recipe(**fields)
    if recipe.lr <= 0 or recipe.weight_decay < 0 or not 0 <= recipe.ema_decay < 1:
        raise ConfigError(f"invalid recipe: lr {recipe.lr}, weight decay {recipe.weight_decay}, EMA {recipe.ema_decay}")
    if not 0 <= recipe.label_smoothing < 1:
        raise ConfigError(f"label smoothing must be in [0, 1), got {recipe.label_smoothing}")
    return recipe


# -- sections -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    name: str = opt("mobilenet_v2", "a registered model (mobilenets models)", flag="--model", legacy="model")
    width: float | None = opt(None, f"width multiplier α, {WIDTH_RANGE[0]} to {WIDTH_RANGE[1]} (model default 1.0)")
    resolution: int = opt(224, f"input side in pixels ({MIN_RESOLUTION} to {MAX_RESOLUTION})")
    num_classes: int | None = opt(None, "checked against the data's classes")
    output_stride: int | None = opt(None, "8, 16 or 32", tasks=("classify", "segment"))
    dropout: float | None = opt(None, "dropout before the classifier, in [0, 1)", tasks=("classify", "segment"))
    init: str | None = opt(None, "start from these weights (run folder or .safetensors); new classifier if needed")

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model name is empty")
        check_range("width", self.width, *WIDTH_RANGE)
        check_resolution("resolution", self.resolution)
        check_int("num_classes", self.num_classes, 1, MAX_CLASSES)
        if self.output_stride is not None and self.output_stride not in (8, 16, 32):
            raise ConfigError(f"output stride must be 8, 16 or 32, got {self.output_stride}")
        check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class DataConfig:
    data: str = opt(
        "embedded", "'embedded', 'scene-objects', 'scene-clutter', a Fashion-MNIST IDX folder or an image folder "
        "(detection: a COCO file or scenes folder; segmentation: VOC or train/ + val/ folders)",
    )  # fmt: skip
    val_data: str | None = opt(None, "a separate validation folder or file")
    val_split: float | None = opt(
        None, "hold out this fraction of the training data (stratified), in (0, 1)", tasks=("classify",)
    )

    def __post_init__(self) -> None:
        check_range("val_split", self.val_split, 0.0, 1.0, low_open=True, high_open=True)
        if self.val_split is not None and self.val_data is not None:
            raise ConfigError("give --val-split or --val-data, not both")


@dataclass(frozen=True)
class OptimConfig:
    preset: str = opt("modern", "paper: RMSProp, V2 §6.1; modern: SGD + cosine", choices=tuple(PRESETS))
    optimizer: str | None = opt(None, "override the preset's optimiser", choices=("rmsproptf", "sgd", "adamw"))
    lr: float | None = opt(None, "peak learning rate (default: scaled to the batch B, 0.1·B/256 or 0.045·B/96)")
    weight_decay: float | None = opt(None, "preset default; never on depthwise filters, BatchNorm or biases")
    warmup_epochs: float | None = opt(None, "linear warm-up (preset default)")
    label_smoothing: float | None = opt(None, "classification loss (preset default)", tasks=("classify",))
    ema_decay: float | None = opt(None, "EMA of the weights; 0 disables (preset default)")
    epochs: int = opt(10, f"1 to {MAX_EPOCHS:,}")
    batch_size: int = opt(96, "per process (the paper's 96)")
    accum_steps: int = opt(1, "micro-batches per optimiser step")

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1, MAX_EPOCHS)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        check_int("accum_steps", self.accum_steps, 1, 1024)
        check_range("lr", self.lr, 0.0, 10.0, low_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0, high_open=True)
        check_range("warmup_epochs", self.warmup_epochs, 0.0, MAX_EPOCHS)
        check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True)
        _ = self.recipe  # the preset with its overrides resolves (and is checked) once, here

    @cached_property
    def recipe(self) -> Recipe:
        """The recipe of one process (a run of ``world`` processes: ``recipe_for(world)``)."""
        return self.recipe_for(1)

    def recipe_for(self, world: int) -> Recipe:
        """The recipe when ``world`` processes train together: a default lr scales with the global batch
        (per-process batch × accumulation × processes), so DDP and accumulation over the same images agree."""
        return resolve_recipe(
            self.preset, self.optimizer, self.lr, self.weight_decay, self.warmup_epochs, self.label_smoothing,
            self.ema_decay, batch_size=self.batch_size * self.accum_steps * world,
        )  # fmt: skip


# Fields of ``run`` (and ``optim.epochs``) that describe this invocation, not the run: ``--resume`` takes them
# from the command line; every other option comes from the checkpoint.
RESUMABLE = ("run.out", "run.resume", "run.workers", "run.threads", "run.device", "run.progress", "run.log_every",
             "run.max_steps", "run.overwrite", "optim.epochs")  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    out: str | None = opt(None, "run folder: checkpoints, metrics.csv, tb/, curves.png, best.safetensors")
    resume: str | None = opt(None, "continue the run in this folder exactly where its last checkpoint left it")
    overwrite: bool = opt(False, "start a new run in an --out folder that already holds one (its files are replaced)")
    seed: int = opt(0, "seeds the data order, augmentation and initialisation")
    workers: int = opt(2, "DataLoader worker processes (decoding happens there)")
    threads: int | None = opt(None, f"torch CPU threads, 1 to {MAX_THREADS}")
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    bf16: bool = opt(False, "bfloat16 autocast")
    channels_last: bool = opt(False, "channels-last memory format")
    checkpoint_every: int = opt(0, "also checkpoint every N steps (0: per epoch)")
    eval_every: int = opt(1, "evaluate every N epochs (and after the last)")
    max_steps: int = opt(0, "stop after N optimiser steps (0: no limit)")
    log_every: int = opt(50, "TensorBoard step scalars every N steps")
    progress: bool = opt(True, "no progress bars", legacy="no_progress", invert=True)

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_int("workers", self.workers, 0, MAX_WORKERS)
        check_int("threads", self.threads, 1, MAX_THREADS)
        check_int("checkpoint_every", self.checkpoint_every, 0, 2**31)
        check_int("eval_every", self.eval_every, 1, MAX_EPOCHS)
        check_int("max_steps", self.max_steps, 0, 2**31)
        check_int("log_every", self.log_every, 0, 2**31)


@dataclass(frozen=True)
class ClassifyOptions:
    crop_scale: tuple[float, float] | None = opt(
        None, "random-resized-crop area range (default 0.08 1 for image folders, 0.6 1 for Fashion-MNIST)",
        metavar=("MIN", "MAX"),
    )  # fmt: skip
    crop_pct: float | None = opt(
        None, "eval: resize to resolution/crop_pct, centre crop (default 0.875 for image folders, 1.0 for "
        "Fashion-MNIST)",
    )  # fmt: skip
    hflip: bool = opt(True, "no random horizontal flips", legacy="no_hflip", invert=True)
    project_act: str | None = opt(None, "V2 Figure 6a ablation", choices=("linear", "relu6"))
    shortcut: str | None = opt(None, "V2 Figure 6b ablation", choices=("bottleneck", "expansion", "none"))

    def __post_init__(self) -> None:
        check_pair("crop_scale", self.crop_scale, 0.0, 1.0)
        check_range("crop_pct", self.crop_pct, 0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class DetectOptions:
    backbone_init: str | None = opt(None, "classification checkpoint (same backbone and width) for the backbone")
    zoom_out: float = opt(2.0, "max zoom-out ratio, 1 to 16 (SSD: 4; 1 disables)")
    photometric: bool = opt(True, "no photometric distortion", legacy="no_photometric", invert=True)
    full_lowest_layer: bool = opt(False, "six anchors per location on the stride-16 map instead of TF's three")
    images: str | None = opt(None, "image folder of --data's annotations (default: COCO's train2017/ or beside it)")
    val_images: str | None = opt(None, "image folder of --val-data's annotations")

    def __post_init__(self) -> None:
        check_range("zoom_out", self.zoom_out, 1.0, 16.0)


@dataclass(frozen=True)
class SegmentOptions:
    aspp: bool | None = opt(None, "DeepLabv3: full ASPP (--aspp) or the reduced head of V2 Table 7 (--no-aspp)")
    scale_range: tuple[float, float] = opt(
        (0.5, 2.0), "random scale jitter before the crop (DeepLab: 0.5 2.0)", metavar=("MIN", "MAX")
    )
    hflip: bool = opt(True, "no random left-right flips", legacy="no_hflip", invert=True)
    context: int | None = opt(
        None, "LR-ASPP: a K×K depthwise-separable block on the 1/16 branch (odd K; not in the paper)",
        flag="--head-context", metavar="K",
    )  # fmt: skip
    naming_pool: int | None = opt(
        None, "LR-ASPP: a branch naming object classes from K×K-pooled 1/16 features, started from --init's "
        "classifier when its classes match (odd K; not in the paper)", metavar="K",
    )  # fmt: skip
    top_k_pixels: float = opt(
        1.0, "average the loss over the hardest fraction F of labelled pixels (DeepLab's top_k_percent_pixels; "
        "1 = every pixel)", metavar="F",
    )  # fmt: skip
    classes: str | None = opt(None, "class names, line i for mask value i (default: DATA/classes.txt or VOC's)")
    scenes: tuple[int, int] = opt((2000, 200), "embedded data: generated scenes per split", metavar=("TRAIN", "VAL"))
    scene_size: int = opt(128, "embedded data: scene side in pixels")

    def __post_init__(self) -> None:
        check_pair("scale_range", self.scale_range, 0.0, 16.0)
        for name in ("context", "naming_pool"):
            k = getattr(self, name)
            check_int(name, k, 1, 63)
            if k is not None and k % 2 == 0:
                raise ConfigError(f"{name} must be odd, got {k}")
        check_range("top_k_pixels", self.top_k_pixels, 0.0, 1.0, low_open=True)
        for n in self.scenes:
            check_int("scenes", n, 1, 1_000_000)
        check_int("scene_size", self.scene_size, MIN_RESOLUTION, MAX_RESOLUTION)


TASK_OPTIONS: dict[str, type] = {"classify": ClassifyOptions, "detect": DetectOptions, "segment": SegmentOptions}
SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}
# classifiers and detectors downsample by 32 and need whole feature maps; a segmenter's output is upsampled to
# its input, so DeepLab's 513-pixel crops are fine
RESOLUTION_MULTIPLE = {"classify": 32, "detect": 32, "segment": 1}


@dataclass(frozen=True)
class TrainConfig:
    """The whole configuration of a training run (what its checkpoints store)."""

    task: str = "classify"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    options: Any = None  # the task's section: ClassifyOptions | DetectOptions | SegmentOptions

    def __post_init__(self) -> None:
        if self.task not in TASK_OPTIONS:
            raise ConfigError(f"unknown task {self.task!r}; expected one of {list(TASKS)}")
        if self.options is None:
            object.__setattr__(self, "options", TASK_OPTIONS[self.task]())
        elif not isinstance(self.options, TASK_OPTIONS[self.task]):
            raise ConfigError(f"{type(self.options).__name__} is not the options of task {self.task!r}")
        check_resolution("resolution", self.model.resolution, RESOLUTION_MULTIPLE[self.task])
        for name in SECTIONS:  # an option another task's training reads would be silently ignored: refuse it
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                if self.task not in option_of(f).tasks and getattr(section, f.name) != f.default:
                    raise ConfigError(f"{name}.{f.name} does not apply to task {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"version", "task", "model": {...}, "data", "optim", "run", "<task>": {...}}``."""
        out: dict[str, Any] = {"version": CONFIG_VERSION, "task": self.task}
        for name in SECTIONS:
            out[name] = _section_dict(getattr(self, name))
        out[self.task] = _section_dict(self.options)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> TrainConfig:
        """The inverse of ``to_dict``; missing sections and fields take their defaults, unknown ones are an
        error naming them."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: a config must be a table/object, got {type(d).__name__}")
        task = d.get("task", "classify")
        if task not in TASK_OPTIONS:
            raise ConfigError(f"{source}: unknown task {task!r}; expected one of {list(TASKS)}")
        unknown = set(d) - {"version", "task", *SECTIONS, task}
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)} for task {task!r}")
        parts = {name: _build(sec, d.get(name, {}), f"{source}: [{name}]") for name, sec in SECTIONS.items()}
        options = _build(TASK_OPTIONS[task], d.get(task, {}), f"{source}: [{task}]")
        return cls(task=task, options=options, **parts)

    @classmethod
    def from_flat(cls, args: dict[str, Any], task: str | None = None) -> TrainConfig:
        """A pre-config checkpoint's stored command-line namespace, read through the same fields."""
        task = task or args.get("task") or "classify"
        nested: dict[str, dict[str, Any]] = {}
        for name, sec in [*SECTIONS.items(), (task, TASK_OPTIONS.get(task, ClassifyOptions))]:
            for f in dataclasses.fields(sec):
                o = option_of(f)
                key = o.legacy or f.name
                if key in args and args[key] is not None:
                    value = args[key]
                    nested.setdefault(name, {})[f.name] = (not value) if o.invert else value
        return cls.from_dict({"task": task, **nested}, "stored train arguments")

    def replace(self, changes: dict[str, dict[str, Any]]) -> TrainConfig:
        """A copy with ``{section: {field: value}}`` applied (section ``options`` or the task's name for the
        task's own)."""
        return TrainConfig.from_dict(merge(self.to_dict(), changes), "overrides")

    def flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` of every field (to compare two configs)."""
        d = self.to_dict()
        return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}

    @property
    def recipe(self) -> Recipe:
        return self.optim.recipe


def _section_dict(section: Any) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
            for f in dataclasses.fields(section)}  # fmt: skip


def _build(cls: type, values: Any, source: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must be a table, got {values!r}")
    types = field_types(cls)
    unknown = set(values) - set(types)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {sorted(unknown)}; expected some of {sorted(types)}")
    return cls(**{k: coerce(types[k], v, k) for k, v in values.items()})


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged, ``top`` winning."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(items: list[str], task: str) -> dict[str, dict[str, Any]]:
    """``["optim.lr=1e-3", "classify.hflip=false"]`` → ``{"optim": {"lr": 1e-3}, ...}``, typed by the fields."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set takes SECTION.FIELD=VALUE (e.g. optim.lr=1e-3), got {item!r}")
        cls = SECTIONS.get(section) or (TASK_OPTIONS[task] if section == task else None)
        if cls is None:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; expected one of {[*SECTIONS, task]}")
        types = field_types(cls)
        if name not in types:
            raise ConfigError(f"--set {item!r}: {section} has no option {name!r}; expected one of {sorted(types)}")
        out.setdefault(section, {})[name] = coerce(types[name], value.strip(), key)
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file: TOML with the ``TrainConfig.to_dict()`` layout (``task`` and the sections it sets)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    try:
        recipe = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {p} is not valid TOML: {e}") from None
    TrainConfig.from_dict(recipe, f"recipe {p}")  # every name and value checked now, not after the data loads
    return recipe


def changed_on_resume(stored: TrainConfig, asked: dict[str, dict[str, Any]]) -> list[str]:
    """The options ``asked`` on a ``--resume`` command line that differ from the run's and may not change."""
    current = stored.flat()
    wanted = stored.replace(asked).flat()
    return sorted(k for k, v in wanted.items() if v != current[k] and k not in RESUMABLE)


# -- eval and predict ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferenceConfig:
    """What ``eval`` and ``predict`` share: the checkpoint, where it runs, and the inference path."""

    checkpoint: str = opt("", "run folder, last.json or .safetensors")
    device: str = opt("auto", "where to run", choices=("auto", "cpu", "cuda"))
    threads: int | None = opt(None, "torch CPU threads")
    flip: bool = opt(False, "also average the left-right mirrored input", tasks=("classify", "segment"))
    scales: tuple[float, ...] = opt((1.0,), "input scales (MF: 0.5 0.75 ... 1.75)", tasks=("segment",))
    mf: bool = opt(False, "DeepLab's MF: scales 0.5 … 1.75 + flips", tasks=("segment",))
    engine: str = opt("pytorch", "pytorch, or the fused C++ engine in fp32, int8 or bf16 (CPU; bf16 with "
                      "AVX512-BF16 or AMX; V1/V2/V3; a detector's or segmenter's backbone, its heads in PyTorch)",
                      choices=("pytorch", "fused", "fused-int8", "fused-bf16"))  # fmt: skip
    calibration: str | None = opt(None, "fused-int8: calibration images ('embedded', an IDX or image folder; a "
                                  "detector's or segmenter's training data)")  # fmt: skip
    calibration_count: int = opt(512, "fused-int8: calibration images used")

    def __post_init__(self) -> None:
        check_int("threads", self.threads, 1, MAX_THREADS)
        check_int("calibration_count", self.calibration_count, 1, 1_000_000)
        for s in self.scales:
            check_range("scales", s, 0.0, 8.0, low_open=True)


@dataclass(frozen=True)
class EvalConfig(InferenceConfig):
    """``mobilenets eval``: what to measure and how (data defaults to the run's own validation set)."""

    data: str | None = opt(None, "evaluation data (default: the run's own validation data, --val-split's held-out "
                           "part included)")  # fmt: skip
    batch_size: int = opt(256, "images per batch")
    workers: int = opt(2, "DataLoader worker processes")
    progress: bool = opt(True, "no progress bars")
    out: str | None = opt(None, "folder for plots (default: beside the checkpoint)")
    per_class: bool = opt(False, "print every class's accuracy / IoU", tasks=("classify", "segment"))
    class_agnostic: bool = opt(False, "also score boxes alone: every class merged into one", tasks=("detect",))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        check_int("workers", self.workers, 0, MAX_WORKERS)


@dataclass(frozen=True)
class PredictConfig(InferenceConfig):
    """``mobilenets predict``: how many answers per image and where drawn outputs go."""

    top_k: int = opt(5, f"classes per image, 1 to {MAX_TOP_K:,}", tasks=("classify",))
    score_threshold: float = opt(0.3, "report detections scoring at least this", tasks=("detect",))
    max_detections: int | None = opt(None, "at most this many per image (default: the model's own limit)",
                                     tasks=("detect",))  # fmt: skip
    out: str = opt("predictions", "folder for the drawn boxes / masks", tasks=("detect", "segment"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("top_k", self.top_k, 1, MAX_TOP_K)
        check_range("score_threshold", self.score_threshold, 0.0, 1.0)
        check_int("max_detections", self.max_detections, 1, 100_000)


def stored_config(train_meta: dict[str, Any], task: str, model_name: str, source: str) -> TrainConfig:
    """The config a checkpoint was trained with: its stored ``config``; a pre-config checkpoint's ``args`` read
    through the same fields; for a plain weight file (no training metadata) the task's defaults with its model."""
    if "config" in train_meta:
        return TrainConfig.from_dict(train_meta["config"], f"{source}: stored config")
    if "args" in train_meta:
        try:
            return TrainConfig.from_flat(train_meta["args"], task)
        except ConfigError as e:
            raise ConfigError(
                f"{source}: its stored train arguments do not convert to a config ({e}); retrain, or save the "
                "weights alone with mobilenets.checkpoint.save_weights and evaluate that file"
            ) from None
    return TrainConfig(task=task, model=ModelConfig(name=model_name))


def legacy_args(config: TrainConfig) -> dict[str, Any]:
    """The flat ``{flag_dest: value}`` view older code read from ``Trained.args``."""
    out: dict[str, Any] = {"task": config.task}
    for section in [*(getattr(config, name) for name in SECTIONS), config.options]:
        for f in dataclasses.fields(section):
            o = option_of(f)
            value = getattr(section, f.name)
            out[o.legacy or f.name] = (not value) if o.invert else value
    return out
