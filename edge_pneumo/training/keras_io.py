"""Saving and loading the float Keras model with its run record (the model's contract)."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import ModelFileError

MODEL_NAME = "pneumonia_cnn.keras"


def record_path(model_path: Path) -> Path:
    """`x.keras` -> `x.record.json`: the run record that states the model's preprocessing and threshold."""
    return model_path.with_suffix(".record.json")


def save_model(model, path: Path, arch: str = "seed") -> None:
    """Save weights and architecture only (no optimizer state), atomically."""
    from edge_pneumo.training.model import build_model

    clean = build_model(arch, tuple(model.input_shape[1:]))
    clean.set_weights(model.get_weights())
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    clean.save(tmp)
    os.replace(tmp, path)


@dataclass
class KerasModel:
    model: object
    path: Path
    record: dict
    preprocessing: Preprocessing
    threshold: float
    derived: bool = False  # no run record: export derives the threshold and band (`export --keras`)


def load_keras(path: str | os.PathLike, record_optional: bool = False, intensity: str = "none") -> KerasModel:
    """Load a .keras model and its record; ModelFileError (no traceback) when either is unusable.

    `record_optional` (a user's own classifier): without a record beside it, the input contract comes
    from the model's input shape and `intensity`, and the threshold is left for export to derive."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_NAME
    if not path.is_file():
        raise ModelFileError(f"{path}: Keras model not found; train one with `edge-pneumo train`")
    if path.suffix != ".keras":
        raise ModelFileError(f"{path}: not a .keras model file")
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file
        raise ModelFileError(f"{path}: not a loadable Keras model ({type(e).__name__}: {str(e)[:120]})") from None
    rp = record_path(path)
    if record_optional and not rp.is_file():
        return _unrecorded(model, path, intensity)
    try:
        record = json.loads(rp.read_text())
        pre = Preprocessing.from_dict(record["preprocessing"])
        threshold = float(record["threshold"])
    except FileNotFoundError:
        raise ModelFileError(
            f"{rp}: the model's run record is missing; it states the preprocessing and threshold"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{rp}: unreadable run record ({e})") from None
    shape = tuple(model.input_shape[1:])
    if shape != pre.input_shape or model.output_shape[-1] != 1:
        raise ModelFileError(
            f"{path}: input {shape} / output {model.output_shape} do not fit the record's contract {pre.input_shape} "
            "-> 1"
        )
    return KerasModel(model, path, record, pre, threshold)


def _unrecorded(model, path: Path, intensity: str) -> KerasModel:
    """A classifier without a run record: square uint8-range images in, one probability out."""
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3 or shape[0] != shape[1] or shape[0] is None or shape[2] not in (1, 3):
        raise ModelFileError(f"{path}: input {shape}; export needs square images of a fixed size, 1 or 3 channels")
    if model.output_shape != (None, 1):
        raise ModelFileError(f"{path}: output {model.output_shape}; export needs one probability, (batch, 1)")
    pre = Preprocessing(size=int(shape[0]), channels=int(shape[2]), intensity=intensity)
    return KerasModel(model, path, {}, pre, float("nan"), derived=True)


def versions() -> dict:
    """The versions a run record states (training side: imports TensorFlow)."""
    import cv2
    import keras
    import tensorflow as tf

    from edge_pneumo import __version__

    return {
        "edge_pneumo": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
