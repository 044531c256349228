"""Fit the view check: a tiny CNN that says whether an image is a frontal chest radiograph.

Independent of the pneumonia model's weights (the feature check moves with every refit).
Fitted and validated with the source as the unit: each dev-set repository, Kermany patient
and adult film sits in one of K folds, a model fitted on the other folds scores it, and the
refusal limit comes from those held-out scores by `LIMIT_RULE`, written before any fit.
The shipped model is then fitted on everything with the same recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_pneumo.training.view_data import ViewImage

FOLDS = 5
EPOCHS = 10
BATCH = 128
# Augmented copies per image: one variant of each of the 5,216 Kermany images; the image as it
# is plus many variants of each of the 8 adult films and the ~225 dev-set images.
COPIES = {"kermany": 1, "adult": 100, "negative": 25, "hemithorax (synthetic)": 1}
HEMITHORACES = 600  # synthetic negatives cut from Kermany films (view_data.hemithorax)
LIMIT_QUANTILE, LIMIT_MARGIN = 0.5, 1.0  # percent, logits
LIMIT_RULE = (
    f"refuse when the view logit is below the {LIMIT_QUANTILE}th percentile of the source-held-out "
    f"logits of the positives (Kermany train/ images and adult films, as they are) minus {LIMIT_MARGIN}; "
    "the held-out logits come from models fitted without the image's fold (folds by Kermany patient, "
    "adult film and dev-set repository)"
)


def build_model(size: int, seed: int = 0):
    """The input averaged down to half its side (a body part or a view shows at 32 px; 4x less
    work), four 3x3 conv blocks and a small dense head on one grey channel; the output is a logit."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 1), name="image")
    x = layers.Rescaling(1 / 255.0)(inp)
    x = layers.AveragePooling2D(2, name="half")(x)
    for i, filters in enumerate((8, 16, 32, 32)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(16, activation="relu", name="dense")(x)
    out = layers.Dense(1, name="frontal_chest_logit")(x)
    return keras.Model(inp, out, name="view_cnn")


def fit_model(x: np.ndarray, y: np.ndarray, w: np.ndarray, seed: int, epochs: int = EPOCHS, log=None):
    """x (n, s, s) uint8, y 1 = frontal chest, w sample weights."""
    import keras

    model = build_model(x.shape[1], seed)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    model.fit(
        x[order, :, :, None].astype(np.float32),
        y[order].astype(np.float32),
        sample_weight=w[order].astype(np.float32),
        epochs=epochs,
        batch_size=BATCH,
        verbose=0,
        callbacks=[_EpochLog(log)] if log else [],
    )
    return model


def _EpochLog(log):
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            log(f"  epoch {epoch + 1}: loss {logs['loss']:.4f}")

    return EpochLog()


def weights(images: Sequence[ViewImage], idx: np.ndarray) -> np.ndarray:
    """Positives and negatives weigh the same in total; within negatives each category weighs
    the same (a lone skull counts as much as 20 dental films), within positives Kermany and
    adults half each."""
    y = np.array([images[i].positive for i in idx])
    cat = np.array([images[i].category for i in idx])
    w = np.zeros(len(idx))
    for side in (True, False):
        cats = sorted(set(cat[y == side]))
        for c in cats:
            m = (y == side) & (cat == c)
            w[m] = 1.0 / (len(cats) * m.sum())
    return w * len(idx) / w.sum()


def fold_of(images: Sequence[ViewImage], k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """One fold per group (repository, patient, film); dev-set repositories are dealt out
    largest first to the fold with the fewest dev images, so each fold holds some of them."""
    rng = np.random.default_rng(seed)
    groups = sorted({v.group for v in images})
    size = {g: 0 for g in groups}
    for v in images:
        size[v.group] += 1
    fold: dict[str, int] = {}
    load = np.zeros(k)
    dev = sorted((g for g in groups if g.startswith("repo:")), key=lambda g: (-size[g], g))
    for g in dev:
        f = int(np.argmin(load + rng.random(k) * 1e-3))
        fold[g] = f
        load[f] += size[g]
    rest = [g for g in groups if g not in fold]
    for i, j in enumerate(rng.permutation(len(rest))):
        fold[rest[j]] = i % k
    return np.array([fold[v.group] for v in images])


@dataclass
class Pools:
    """The augmented inputs of every image: x (n, s, s), src (image index per input), clean (first copy)."""

    x: np.ndarray
    src: np.ndarray
    clean: np.ndarray  # (n_images, s, s): each image as it is


def limit_from(held_out_positive_logits: np.ndarray) -> float:
    return float(np.percentile(held_out_positive_logits, LIMIT_QUANTILE) - LIMIT_MARGIN)


def cross_validate(
    images: Sequence[ViewImage],
    pools: Pools,
    k: int = FOLDS,
    seed: int = 0,
    log: Callable[[str], None] = print,
    epochs: int = EPOCHS,
) -> np.ndarray:
    """Held-out logit of every image (as it is), from the model fitted on the other folds."""
    folds = fold_of(images, k, seed)
    y_img = np.array([v.positive for v in images])
    out = np.full(len(images), np.nan, np.float32)
    for f in range(k):
        train = folds[pools.src] != f
        idx = pools.src[train]
        log(f"fold {f + 1}/{k}: fit on {train.sum()} inputs, score {(folds == f).sum()} images")
        model = fit_model(pools.x[train], y_img[idx], weights(images, idx), seed + f, epochs)
        test = np.flatnonzero(folds == f)
        out[test] = predict_logits(model, pools.clean[test])
    return out


def predict_logits(model, x: np.ndarray) -> np.ndarray:
    return model.predict(x[..., None].astype(np.float32), batch_size=512, verbose=0).reshape(-1)
