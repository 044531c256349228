"""One source for the training defaults: the `train`/`teacher` options read the dataclasses, and
`TrainConfig(data)` is the shipped run's recipe (its record: exported/pneumonia_cnn.record.json)."""

from __future__ import annotations

import json
from pathlib import Path

import typer.main

from edge_pneumo.apps.cli import app
from edge_pneumo.training.config import TEACHER_RECIPE, Recipe, TeacherConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
# Fields whose value in the shipped record came from the teacher file or its own command line.
FROM_THE_TEACHER_RUN = {"distill_alpha", "teacher_temperature"}


def _option_defaults(command: str) -> dict:
    cmd = typer.main.get_command(app).commands[command]
    return {p.name: p.default for p in cmd.params}


def test_train_options_are_the_dataclass_defaults():
    opts, cfg, recipe = _option_defaults("train"), TrainConfig(data=Path(".")), Recipe()
    none = lambda v: "none" if v is None else v
    assert opts["out"] == cfg.out and opts["seed"] == cfg.seed and opts["split_seed"] == cfg.split_seed
    assert opts["val_fraction"] == cfg.val_fraction and opts["refit"] == cfg.refit_full
    assert opts["intensity"] == cfg.intensity and opts["skip_bad"] == cfg.skip_bad
    assert opts["threshold_family"] == none(cfg.threshold_family)
    assert opts["holdout_family"] == none(cfg.holdout_family)
    assert opts["threshold_tiebreak"] == cfg.threshold_tiebreak
    assert opts["epochs"] == recipe.max_epochs and opts["patience"] == recipe.patience
    assert opts["class_weight"] == recipe.class_weight and opts["augment"] == recipe.augment
    assert opts["label_smoothing"] == recipe.label_smoothing
    assert opts["threshold_tolerance"] == str(recipe.threshold_tolerance)
    assert opts["distill_alpha"] == recipe.distill_alpha
    assert opts["teacher_temperature"] == recipe.teacher_temperature


def test_teacher_options_are_the_dataclass_defaults():
    opts, cfg = _option_defaults("teacher"), TeacherConfig(data=Path("."))
    assert opts["out"] == cfg.out and tuple(opts["seeds"]) == cfg.seeds
    assert (opts["size"], opts["width"], opts["folds"]) == (cfg.size, cfg.width, cfg.folds)
    assert opts["epochs"] == cfg.recipe.max_epochs and opts["holdout_family"] == cfg.holdout_family
    assert opts["save_models"] == cfg.save_models


def test_the_python_default_is_the_shipped_recipe():
    """What `run_training(TrainConfig(data))` trains is what the shipped model was trained with."""
    shipped = json.loads((REPO / "exported" / "pneumonia_cnn.record.json").read_text())
    cfg = TrainConfig(data=Path("."))
    ours = cfg.recipe.to_dict()
    for name, value in shipped["recipe"].items():
        if name not in FROM_THE_TEACHER_RUN:
            assert ours[name] == value, name
    assert cfg.refit_full == shipped["refit_on_full_train"]
    assert cfg.intensity == shipped["preprocessing"]["intensity"]
    assert cfg.val_fraction == shipped["split"]["val_fraction"]
    assert cfg.holdout_family == shipped["split"]["holdout_family"]
    assert cfg.threshold_family == shipped["split"]["threshold_family"]
    # the shifts tie-break leaves its robustness figures in the record; "half" leaves None
    assert (cfg.threshold_tiebreak == "shifts") == (shipped["threshold_robustness"] is not None)


def test_without_a_teacher_the_record_says_labels_only():
    assert Recipe().without_teacher().distill_alpha == 1.0
    assert Recipe().without_teacher().teacher_temperature == 1.0


def test_the_teacher_default_is_the_recipe_the_shipped_teachers_recorded():
    shipped = json.loads((REPO / "exported" / "teacher_soft_labels.json").read_text())["record"]["recipe"]
    ours = TEACHER_RECIPE.to_dict()
    assert all(ours[name] == value for name, value in shipped.items())


def test_one_standard_error_is_one_token():
    from edge_pneumo.lab import metrics
    from edge_pneumo.training import config

    assert config.ONE_SE == metrics.ONE_SE
