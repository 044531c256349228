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


def build_model(arch: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """The model of one `config.ARCHES` entry, untrained."""
    if arch == "seed":
        return build_seed_model(input_shape)
    if arch == "small":
        return build_teacher_model(input_shape, 32, name="small_resnet")
    raise ValueError(f"unknown architecture {arch!r}")


def build_teacher_model(
    input_shape: tuple[int, int, int] = (128, 128, 3), width: int = 32, name: str = "teacher_resnet"
) -> keras.Model:
    """A ResNet-18-shaped CNN at half width: the distillation teacher, and the `small` tier.

    Trained from scratch (no downloaded weights): stem conv + max-pool, four stages of two
    residual blocks (width, 2w, 4w, 8w channels), global average pooling, a sigmoid unit.
    At 128 px that is ~2.8 M parameters and ~0.15 GMAC per image: a few minutes an epoch on
    two CPU cores, where a full ResNet-18 would take an hour. The device reads two named layers:
    "cam" (the last block's output, Grad-CAM) and "gap" (its global average, the guard's features);
    the head is one linear unit on "gap", so the map is exactly CAM (Zhou et al. 2016).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(width, 5, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, mult in enumerate((1, 2, 4, 8)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            last = stage == 3 and block == 1
            x = _residual_block(x, width * mult, stride, f"s{stage}b{block}", out_name="cam" if last else None)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name=name)


def _residual_block(x, channels: int, stride: int, name: str, out_name: str | None = None):
    shortcut = x
    y = layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_c1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"{name}_c2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != channels:
        shortcut = layers.Conv2D(channels, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_projbn")(shortcut)
    return layers.ReLU(name=out_name)(layers.Add()([y, shortcut]))


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
