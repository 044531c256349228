"""Shared fixtures: small synthetic X-ray-like datasets made in the test, and the real data if present."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# verify writes this device's fastest artifact into a profile: the tests keep theirs private.
os.environ.setdefault(
    "EDGE_PNEUMO_PROFILE", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-pneumo-test-profile-{os.getpid()}.json")
)


def real_data_dir() -> Path | None:
    """EDGE_PNEUMO_DATA, or ../shared/data/chest_xray beside the checkout."""
    env = os.environ.get("EDGE_PNEUMO_DATA")
    d = Path(env) if env else REPO.parent / "shared" / "data" / "chest_xray"
    return d if (d / "test" / "NORMAL").is_dir() else None


def synthetic_xray(rng: np.random.Generator, label: int, size: int = 96) -> np.ndarray:
    """A grey image whose class is learnable: PNEUMONIA has bright blotches in the 'lungs'."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 90 + 60 * np.exp(-((xx - 0.5) ** 2) / 0.02) + rng.normal(0, 12, (size, size))
    if label == 1:
        for _ in range(3):
            cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.75)
            img += 90 * np.exp(-(((xx - cx) ** 2) + ((yy - cy) ** 2)) / 0.01)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root: Path, n_train: int = 40, n_test: int = 16, seed: int = 0, size: int = 96) -> Path:
    """root/{train,test}/{NORMAL,PNEUMONIA}/ with Kermany-style names (2 images per patient)."""
    rng = np.random.default_rng(seed)
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 5000)):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                patient = offset + i // 2
                name = f"IM-{patient:04d}-{i % 2 + 1:04d}.jpeg" if label == 0 else f"person{patient}_bacteria_{i}.jpeg"
                grey = synthetic_xray(rng, label, size)
                cv2.imwrite(str(d / name), cv2.merge([grey, grey, grey]))
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("chest_xray"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    d = real_data_dir()
    if d is None:
        pytest.skip("real chest X-ray dataset not found (set EDGE_PNEUMO_DATA)")
    return d


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, synthetic_data) -> Path:
    """A seed CNN trained briefly on synthetic images and exported to every format.

    Session-scoped: training and export take about a minute, and many tests share them.
    """
    pytest.importorskip("tensorflow")
    from edge_pneumo.device.artifact_formats import resolve_formats
    from edge_pneumo.training.config import Recipe
    from edge_pneumo.training.export import ExportConfig, export_all
    from edge_pneumo.training.keras_io import MODEL_NAME, load_keras
    from edge_pneumo.training.train import TrainConfig, run_training

    out = tmp_path_factory.mktemp("exported")
    run_training(
        TrainConfig(
            data=synthetic_data,
            out=out,
            intensity="none",
            # a quick recipe, not the shipped one: 3 epochs, refit, the plain tie-break
            recipe=Recipe(max_epochs=3, patience=2, batch_size=16, threshold_tolerance=0.01),
            refit_full=True,
            threshold_tiebreak="half",
        ),
        log=lambda m: None,
    )
    km = load_keras(out / MODEL_NAME)
    export_all(
        km,
        ExportConfig(
            data=synthetic_data,
            out=out,
            formats=tuple(resolve_formats(["all"])),
            calibration_images=40,
            validation_images=40,
        ),
        log=lambda m: None,
    )
    return out


@pytest.fixture()
def exported_copy(tiny_export, tmp_path) -> Path:
    """A private copy of the tiny export that a test may tamper with."""
    import shutil

    dst = tmp_path / "exported"
    shutil.copytree(tiny_export, dst)
    return dst
