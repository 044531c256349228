"""The seed CNN and its augmentations, in Keras."""

from __future__ import annotations

import keras
from keras import layers


def build_seed_model(input_shape: tuple[int, int, int] = (64, 64, 3)) -> keras.Model:
    """Conv32-Pool-Conv64-Pool-Dropout0.1-Flatten-Dense128-Dense1(sigmoid), as published.

    The 1/255 scaling is the first layer, so the model takes uint8-range pixels: the
    full-integer export then feeds raw uint8 pixels straight in.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Dropout(0.1, name="dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def build_augmenter(strength: str, seed: int) -> keras.Sequential:
    """Training-time augmentation, applied in the tf.data pipeline (never exported).

    "seed": the published recipe (horizontal flip, zoom 0.2, shear 0.2).
    "strong": the seed's plus small rotations, brightness and contrast changes, for a
    test split whose exposure differs from train's.
    "robust": strong plus small translations (patient positioning varies between sites).
    "photometric": strong plus gamma changes and mild blur (exposure curves and detector
    sharpness vary between sites); geometry stays the seed's.
    "aspect": strong plus a horizontal-only zoom. The dataset's images were squashed to a
    square from originals of varied aspect ratio, so the anatomy's width-to-height ratio
    carries the original frame's shape, which says nothing about pneumonia.
    """
    augs = [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomZoom(0.2, seed=seed + 1, fill_mode="nearest"),
        layers.RandomShear(x_factor=0.2, y_factor=0.2, seed=seed + 2, fill_mode="nearest"),
    ]
    if strength in ("strong", "robust", "photometric", "aspect"):
        augs += [
            layers.RandomRotation(0.03, seed=seed + 3, fill_mode="nearest"),
            layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4),
            layers.RandomContrast(0.3, value_range=(0, 255), seed=seed + 5),
        ]
    if strength == "robust":
        augs.append(layers.RandomTranslation(0.08, 0.08, seed=seed + 6, fill_mode="nearest"))
    elif strength == "photometric":
        augs += [
            RandomGamma(0.4, seed=seed + 7),
            layers.RandomGaussianBlur(factor=0.5, kernel_size=3, sigma=1.0, value_range=(0, 255), seed=seed + 8),
        ]
    elif strength == "aspect":
        augs.append(layers.RandomZoom(height_factor=0.0, width_factor=0.2, seed=seed + 9, fill_mode="constant"))
    elif strength not in ("seed", "strong"):
        raise ValueError(f"unknown augmentation strength {strength!r}")
    return keras.Sequential(augs, name=f"augment_{strength}")


class RandomGamma(layers.Layer):
    """x -> 255 * (x / 255) ** g per image, with log(g) uniform in [-max_log, max_log]."""

    def __init__(self, max_log: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_log = max_log
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=True):
        if not training:
            return x
        from keras import ops

        g = ops.exp(keras.random.uniform((ops.shape(x)[0], 1, 1, 1), -self.max_log, self.max_log, seed=self.generator))
        return 255.0 * ops.power(ops.clip(x / 255.0, 0.0, 1.0), g)
