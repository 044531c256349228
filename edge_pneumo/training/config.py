"""The training and teacher settings, and the one place their defaults live.

The `train` and `teacher` commands take their option defaults from these dataclasses, so
`run_training(TrainConfig(data, out))` from Python and `edge-pneumo train` with no options train
the same recipe (the one that ships: exported/pneumonia_cnn.record.json). Standard library only:
the CLI imports this module at start-up, before any command runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

ONE_SE = "se"  # threshold tolerance: one standard error of J at its maximum (lab.metrics.best_threshold)
TIEBREAKS = ("half", "shifts")  # among equally good thresholds: the one nearest 0.5, or the most shift-robust
AUGMENTS = ("seed", "strong", "robust", "photometric", "aspect")  # see model.build_augmenter


@dataclass(frozen=True)
class Arch:
    """A trainable architecture: its input size and the layers the device reads (by name).

    `features_layer`: the activations the input guard measures and a site head is fitted on;
    `cam_layer`: the activations Grad-CAM weighs. Export reads both from here (or the user's
    `--features-layer/--cam-layer`), and the manifest records them, so nothing downstream knows
    an architecture by its layer names."""

    name: str
    size: int
    features_layer: str
    cam_layer: str
    description: str


ARCHES = {
    "seed": Arch(
        "seed", 64, "dense", "pool2",
        "the published seed CNN: Conv32-Pool-Conv64-Pool-Dropout0.1-Flatten-Dense128-Dense1, 64 px",
    ),
    "small": Arch(
        "small", 128, "gap", "cam",
        "ResNet-18-shaped CNN, width 32 (32-64-128-256 channels), 128 px, global average pooling, 2.8 M parameters",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how the model is trained; recorded in the run record.
    The defaults are the shipped recipe (rounds 5-11: the whole 50-epoch cosine schedule)."""

    max_epochs: int = 50
    patience: int = 50  # = max_epochs: the shipped recipe runs the whole schedule (rounds 10-11)
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # "constant" or "cosine" decay over max_epochs
    class_weight: bool = True  # weight NORMAL ~3x to balance the 3:1 imbalance
    augment: str = "strong"  # one of AUGMENTS
    label_smoothing: float = 0.0  # targets 0/1 -> eps/2, 1-eps/2: less extreme probabilities
    average_last: int = 0  # average the weights of the best epoch and the N-1 before it (0 or 1: off)
    threshold_tolerance: float | str = ONE_SE  # balanced-accuracy slack when picking the threshold, or "se"
    # With a teacher: target = alpha * label + (1 - alpha) * teacher probability. Without one,
    # run_training records 1.0 for both (labels only), whatever these say.
    distill_alpha: float = 0.5
    teacher_temperature: float = 1.0  # the teacher's probability softened first: sigmoid(logit(p) / T)

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("max_epochs, patience, batch_size and learning_rate must be positive")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be 'constant' or 'cosine'")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(map(repr, AUGMENTS))}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError("label_smoothing must be in [0, 0.5)")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError("distill_alpha must be in [0, 1]")
        if self.teacher_temperature <= 0:
            raise ValueError("teacher_temperature must be positive")
        if self.threshold_tolerance != ONE_SE and (
            isinstance(self.threshold_tolerance, str) or self.threshold_tolerance < 0
        ):
            raise ValueError(f"threshold_tolerance must be a number >= 0 or {ONE_SE!r} (one standard error)")

    def to_dict(self) -> dict:
        return asdict(self)

    def without_teacher(self) -> Recipe:
        """The recipe a run without soft labels records: labels only."""
        return dataclasses.replace(self, distill_alpha=1.0, teacher_temperature=1.0)


@dataclass(frozen=True)
class TrainConfig:
    """One `train` run. The defaults are the shipped run's (see the module docstring)."""

    data: Path
    out: Path = Path("exported")
    arch: str = "seed"  # one of ARCHES: "seed" (the mission's model) or "small" (the stronger tier)
    seed: int = 0
    split_seed: int | None = None  # the patient split's seed; None: the teacher's split seed with --teacher, else seed
    val_fraction: float = 0.15
    # Off in the shipped recipe (rounds 8-11): the validation-run model ships, so its threshold
    # and band are chosen on the very model that runs.
    refit_full: bool = False
    skip_bad: bool = False
    intensity: str = "clahe"
    recipe: Recipe = Recipe()
    evaluate_test: bool = True
    holdout_family: str | None = None  # an acquisition batch held out of the validation run (dataset.selection_split)
    threshold_family: str | None = "NORMAL2"  # the harder batch of validation normals the operating point is chosen on
    teacher: Path | None = None  # soft labels from `edge-pneumo teacher` (distillation)
    rule_out_sensitivity: float = 0.97
    rule_in_specificity: float = 0.95
    threshold_tiebreak: str = "shifts"  # one of TIEBREAKS (the shipped recipe: rounds 10-11)

    def __post_init__(self):
        if self.arch not in ARCHES:
            raise ValueError(f"arch must be one of {', '.join(ARCHES)}, not {self.arch!r}")
        if self.threshold_tiebreak not in TIEBREAKS:
            raise ValueError(
                f"threshold tie-break must be one of {', '.join(TIEBREAKS)}, not {self.threshold_tiebreak!r}"
            )


# The teachers that made exported/teacher_soft_labels.json (their record holds this recipe).
TEACHER_RECIPE = Recipe(max_epochs=14, patience=5, threshold_tolerance=0.01).without_teacher()


@dataclass(frozen=True)
class TeacherConfig:
    """One `teacher` run (`edge-pneumo teacher`)."""

    data: Path
    out: Path = Path("exported/teacher_soft_labels.json")  # the soft-label file (JSON)
    seeds: tuple[int, ...] = (0,)
    size: int = 128
    width: int = 32
    intensity: str = "clahe"
    split_seed: int = 0
    val_fraction: float = 0.15
    holdout_family: str | None = "NORMAL2"
    recipe: Recipe = TEACHER_RECIPE
    save_models: bool = False
    folds: int = 1  # k > 1: out-of-fold soft labels on the fit part (k teachers per seed)


def default(cls: type, name: str):
    """The default of one field of a settings dataclass (for the CLI's option defaults)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    raise KeyError(f"{cls.__name__}.{name} has no default")
