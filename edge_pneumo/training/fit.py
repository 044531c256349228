"""Fitting the seed CNN (its recipe: config.Recipe): tf.data pipeline, early stopping, full-train refit."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge_pneumo.lab.metrics import apply_temperature, best_threshold, binary_report
from edge_pneumo.training.config import Recipe


def set_determinism(seed: int) -> None:
    """Same seed, same weights: seeded RNGs and deterministic TensorFlow kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def class_weights(y: np.ndarray) -> dict[int, float]:
    counts = np.bincount(y.astype(int), minlength=2)
    return {c: float(len(y) / (2.0 * counts[c])) for c in range(2)}


def targets(y: np.ndarray, recipe: Recipe, teacher: np.ndarray | None) -> np.ndarray:
    """Training targets: the labels, or (distillation) labels mixed with the teacher's
    probabilities. For a sigmoid output the cross-entropy is linear in its target, so this
    mix is exactly alpha * BCE(label) + (1 - alpha) * BCE(teacher). A teacher temperature T > 1
    softens its probabilities first (Hinton et al. 2015): a teacher that is nearly certain on the
    images it was fitted on otherwise hands the student little more than the labels."""
    y = y.astype(np.float32)
    if teacher is None or recipe.distill_alpha >= 1.0:
        return y
    soft = np.asarray(teacher, np.float64)
    if recipe.teacher_temperature != 1.0:
        soft = apply_temperature(soft, recipe.teacher_temperature)
    return (recipe.distill_alpha * y + (1.0 - recipe.distill_alpha) * soft).astype(np.float32)


def _dataset(
    x: np.ndarray,
    y: np.ndarray,
    recipe: Recipe,
    seed: int,
    weights: dict[int, float] | None,
    teacher: np.ndarray | None = None,
):
    import tensorflow as tf

    from edge_pneumo.training.model import build_augmenter

    augment = build_augmenter(recipe.augment, seed)
    sw = np.array([weights[int(c)] for c in y], np.float32) if weights else np.ones(len(y), np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, targets(y, recipe, teacher), sw))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(recipe.batch_size)

    def aug(xb, yb, wb):
        xb = tf.clip_by_value(augment(tf.cast(xb, tf.float32), training=True), 0.0, 255.0)
        return xb, yb, wb

    return ds.map(aug, num_parallel_calls=1, deterministic=True).prefetch(2)


def _compile(model, recipe: Recipe, steps_per_epoch: int, epochs: int) -> None:
    import keras

    if recipe.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            recipe.learning_rate, decay_steps=steps_per_epoch * epochs, alpha=0.05
        )
    else:
        lr = recipe.learning_rate
    loss = keras.losses.BinaryCrossentropy(label_smoothing=recipe.label_smoothing)
    # Accuracy against the rounded target: with soft (distillation) targets plain "accuracy" compares
    # probabilities with 0.6 or 0.3 and reads 0.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=[_hard_accuracy])


def _hard_accuracy(y_true, y_pred):
    from keras import ops

    y_true = ops.reshape(y_true, ops.shape(y_pred))
    return ops.mean(ops.cast(ops.equal(y_true >= 0.5, y_pred >= 0.5), "float32"))


def predict(model, x: np.ndarray, batch_size: int = 256, tta: bool = False) -> np.ndarray:
    """Probabilities of PNEUMONIA for uint8 inputs (the model rescales itself); with `tta`, the
    runner's flip TTA (the same `tta` functions the Classifier calls)."""
    if tta:
        from edge_pneumo.device import tta as flip_tta

        return flip_tta.predict(lambda b: predict(model, b, batch_size), x)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(np.asarray(model(x[i : i + batch_size].astype(np.float32), training=False)).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass
class FitResult:
    model: object
    history: list[dict]
    best_epoch: int  # 1-based
    threshold: float
    val_metrics: dict | None


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    recipe: Recipe,
    seed: int,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    epochs: int | None = None,
    threshold: float | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    teacher: np.ndarray | None = None,
    build: Callable | None = None,
    threshold_on: np.ndarray | None = None,
) -> FitResult:
    """Train the seed CNN.

    With validation data: train up to `recipe.max_epochs`, keep the epoch with the best
    validation AUC (early stopping with `recipe.patience`), and choose the decision
    threshold on validation (only on the images `threshold_on` marks, when given). Without:
    train exactly `epochs` (chosen earlier on validation) and keep the given `threshold`.
    `teacher`: the teacher's probability for each training image (distillation);
    `build`: the model builder (default: the seed CNN).
    """
    from edge_pneumo.training.model import build_seed_model

    build = build or build_seed_model
    set_determinism(seed)
    has_val = x_val is not None and y_val is not None
    n_epochs = recipe.max_epochs if has_val else int(epochs or recipe.max_epochs)
    weights = class_weights(y_train) if recipe.class_weight else None
    ds = _dataset(x_train, y_train, recipe, seed, weights, teacher)
    model = build(tuple(x_train.shape[1:]))
    _compile(model, recipe, math.ceil(len(x_train) / recipe.batch_size), n_epochs)

    history: list[dict] = []
    snapshots: list[list[np.ndarray]] = []
    best_auc, best_epoch, stale = -1.0, n_epochs, 0
    for epoch in range(1, n_epochs + 1):
        h = model.fit(ds, epochs=1, verbose=0)
        row = {"epoch": epoch, "loss": float(h.history["loss"][0]), "accuracy": float(h.history["_hard_accuracy"][0])}
        snapshots.append([w.copy() for w in model.get_weights()])
        if len(snapshots) > max(1, recipe.average_last) + recipe.patience + 1:
            snapshots.pop(0)
        if has_val:
            p = predict(model, x_val)
            r = binary_report(y_val, p, 0.5)
            row.update(val_auc=r["auc"], val_accuracy=r["accuracy"], val_loss=_bce(y_val, p))
            if r["auc"] > best_auc + 1e-4:
                best_auc, best_epoch, stale = r["auc"], epoch, 0
            else:
                stale += 1
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if has_val and stale >= recipe.patience:
            break

    # Keep the best epoch (with validation) or the last one, optionally averaged with the ones before it.
    keep = best_epoch if has_val else n_epochs
    first_kept = epoch - len(snapshots) + 1
    k = max(1, recipe.average_last)
    chosen = [snapshots[e - first_kept] for e in range(max(first_kept, keep - k + 1), keep + 1)]
    model.set_weights([np.mean([s[i] for s in chosen], axis=0) for i in range(len(chosen[0]))])

    val_metrics = None
    if has_val:
        p = predict(model, x_val)
        on = np.ones(len(y_val), bool) if threshold_on is None else np.asarray(threshold_on, bool)
        threshold = best_threshold(y_val[on], p[on], recipe.threshold_tolerance)
        val_metrics = binary_report(y_val, p, threshold)
    return FitResult(model, history, keep, float(threshold if threshold is not None else 0.5), val_metrics)


def _bce(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
