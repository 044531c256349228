"""Images that are not chest X-rays, for the input guard's tests.

Two sources: synthetic images made here (blank, black, noise, colour shapes, gradients,
checkerboards, a document-like page), and the sample images that install with
scikit-image, scikit-learn and matplotlib, and pydicom's test DICOMs (CT, MR, US, NM...).
Nothing is downloaded; a package or file that is missing raises, so the suite fails instead of
testing fewer inputs.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import cv2
import numpy as np


def synthetic(folder: Path, size: int = 256) -> dict[str, Path]:
    """Write synthetic non-X-ray images into folder; {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:size, 0:size]
    images: dict[str, np.ndarray] = {
        "blank_white.png": np.full((size, size), 255, np.uint8),
        "black.png": np.zeros((size, size), np.uint8),
        "grey_constant.jpg": np.full((size, size), 128, np.uint8),
        "noise_grey.png": rng.integers(0, 256, (size, size), dtype=np.uint8),
        "noise_colour.png": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "checkerboard.png": (((yy // 32 + xx // 32) % 2) * 255).astype(np.uint8),
        "checkerboard_fine.png": (((yy // 8 + xx // 8) % 2) * 255).astype(np.uint8),
        "gradient_grey.png": (xx * 255 // (size - 1)).astype(np.uint8),
    }
    circle = np.full((size, size, 3), 255, np.uint8)
    cv2.circle(circle, (size // 2, size // 2), size // 3, (30, 60, 220), -1)
    images["colour_circle.png"] = circle
    grad = np.zeros((size, size, 3), np.uint8)
    grad[..., 0] = xx * 255 // (size - 1)
    grad[..., 1] = yy * 255 // (size - 1)
    grad[..., 2] = 128
    images["colour_gradient.jpg"] = grad
    page = np.full((size * 2, int(size * 1.4)), 245, np.uint8)  # an invoice-like page: lines of text
    for i, y in enumerate(range(30, size * 2 - 30, 22)):
        cv2.putText(
            page, f"Item {i:02d}  qty 1  price {17 * i % 97}.00 EUR", (20, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 20, 1
        )
    images["invoice_page.png"] = page
    out = {}
    for name, img in images.items():
        path = folder / name
        cv2.imwrite(str(path), img)
        out[name] = path
    return out


# The sample images the suite uses, by name: one that cannot be found fails the suite (it never shrinks).
SKIMAGE_IMAGES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_RGB.png",
    "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
    "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "multipage_rgb.tif", "page.png", "phantom.png", "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")


def _existing(paths: dict[str, Path]) -> dict[str, Path]:
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"guard test inputs missing (install the test extra): {', '.join(missing)}")
    return paths


def package_images(folder: Path) -> dict[str, Path]:
    """Sample images that install with scikit-image, scikit-learn and matplotlib; {name: path}.

    Copied (or converted: matplotlib's raw 16-bit MRI becomes a 16-bit PNG) into folder. A
    package or file that is missing raises: the guard suite must not quietly test fewer inputs.
    """
    import matplotlib
    import skimage
    import sklearn

    folder.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.__file__).parent / "data"
    out = {f"skimage_{n}": data / n for n in SKIMAGE_IMAGES}
    images = Path(sklearn.__file__).parent / "datasets" / "images"
    out.update({f"sklearn_{n}": images / n for n in SKLEARN_IMAGES})
    sample = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    out["mpl_grace_hopper.jpg"] = sample / "grace_hopper.jpg"
    _existing(out | {"s1045": sample / "s1045.ima.gz"})
    mri = np.frombuffer(gzip.open(sample / "s1045.ima.gz").read(), "<u2").reshape(256, 256)  # 16-bit head MRI
    path = folder / "mpl_head_mri_16bit.png"
    cv2.imwrite(str(path), mri)
    out["mpl_head_mri_16bit.png"] = path
    return out


# pydicom test files that hold a single image a reader could classify (not SR, RT plans...)
PYDICOM_IMAGES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "examples_palette.dcm",
    "examples_overlay.dcm",
    "ExplVR_BigEnd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "image_dfl.dcm",
    "J2K_pixelrep_mismatch.dcm",
    "liver_1frame.dcm",
)


def pydicom_files() -> dict[str, Path]:
    import pydicom

    base = Path(pydicom.__file__).parent / "data" / "test_files"
    return _existing({f"pydicom_{n}": base / n for n in PYDICOM_IMAGES})


def all_ood(folder: Path) -> dict[str, Path]:
    return {**synthetic(folder / "synthetic"), **package_images(folder / "packages"), **pydicom_files()}


if __name__ == "__main__":  # write them somewhere to look at: python tests/ood_images.py DIR
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "ood")
    for name, path in all_ood(target).items():
        print(name, os.fspath(path))
