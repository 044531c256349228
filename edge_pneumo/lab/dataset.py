"""The labelled dataset: discovery, patient ids, a patient-wise split, loading to arrays.

Layout (Kaggle / Mendeley Data): DIR/{train,test[,val]}/{NORMAL,PNEUMONIA}/*.jpeg.
No TensorFlow here: evaluation and `compare` run on the device side too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_pneumo.decoders.decode import IMAGE_SUFFIXES
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import DatasetError, InputImageError

CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # label 1 = PNEUMONIA, the positive class

_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_NORMAL_IM = re.compile(r"IM-(\d+)-", re.IGNORECASE)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient: str


def patient_id(filename: str) -> str:
    """Patient key from a Kermany file name.

    `person1199_bacteria_3149.jpeg` -> "person1199": the personN number alone, since
    bacteria/virus images of one number may be the same patient (over-grouping cannot
    leak). `IM-0115-0001.jpeg` and `NORMAL2-IM-1427-0001.jpeg` -> "IM-0115" / "IM-1427".
    Unknown names are their own patient.
    """
    m = _PERSON.search(filename)
    if m:
        return f"person{int(m.group(1))}"
    m = _NORMAL_IM.search(filename)
    if m:
        return f"IM-{int(m.group(1)):04d}"
    return Path(filename).stem


def find_split(data: str | Path, split: str) -> Path:
    """DIR/<split> if DIR has it, or DIR itself when DIR already is a split folder."""
    root = Path(data)
    if not root.exists():
        raise DatasetError(
            f"{root}: data folder not found; point --data at the chest_xray folder (with train/ and test/)"
        )
    if not root.is_dir():
        raise DatasetError(f"{root}: is a file; --data takes the chest_xray folder")
    if (root / split).is_dir():
        return root / split
    if all((root / c).is_dir() for c in CLASS_NAMES):
        return root
    raise DatasetError(
        f"{root}: expected {split}/NORMAL and {split}/PNEUMONIA (or NORMAL/ and PNEUMONIA/) inside; "
        "download the Kermany chest_xray dataset and point --data at it"
    )


def discover(split_dir: str | Path) -> list[Sample]:
    """All image files of DIR/{NORMAL,PNEUMONIA}, sorted, labelled by folder."""
    split_dir = Path(split_dir)
    samples: list[Sample] = []
    for label, name in enumerate(CLASS_NAMES):
        folder = split_dir / name
        if not folder.is_dir():
            raise DatasetError(f"{folder}: class folder missing; expected {split_dir}/NORMAL and {split_dir}/PNEUMONIA")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{folder}: no images in this class folder; each class needs at least one image")
        samples.extend(Sample(f, label, patient_id(f.name)) for f in files)
    return samples


def patient_split(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, val) by patient, per class, deterministic for a seed.

    Every image of a patient lands on the same side, and each class gives about
    `val_fraction` of its images to val, so val keeps the class balance of train.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    val_patients: set[tuple[int, str]] = set()
    for label in range(len(CLASS_NAMES)):
        counts: dict[str, int] = {}
        for s in samples:
            if s.label == label:
                counts[s.patient] = counts.get(s.patient, 0) + 1
        patients = sorted(counts)
        order = rng.permutation(len(patients))
        target = val_fraction * sum(counts.values())
        taken = 0
        for i in order:
            if taken >= target:
                break
            val_patients.add((label, patients[i]))
            taken += counts[patients[i]]
    train = [s for s in samples if (s.label, s.patient) not in val_patients]
    val = [s for s in samples if (s.label, s.patient) in val_patients]
    if not train or not val:
        raise DatasetError("too few patients to carve a validation split; use more images or --val-fraction")
    return train, val


def patient_folds(samples: Sequence[Sample], k: int, seed: int) -> list[int]:
    """A fold number (0..k-1) per sample: patient-wise, per class, deterministic for a seed.

    Out-of-fold labelling needs every image of a patient in one fold, or a model fitted on
    the other folds has already seen that patient's other images.
    """
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    rng = np.random.default_rng(seed)
    fold_of: dict[tuple[int, str], int] = {}
    for label in range(len(CLASS_NAMES)):
        patients = sorted({s.patient for s in samples if s.label == label})
        for rank, i in enumerate(rng.permutation(len(patients))):
            fold_of[(label, patients[i])] = rank % k
    return [fold_of[(s.label, s.patient)] for s in samples]


def image_family(filename: str) -> str:
    """The file family a Kermany file name belongs to: normals come as `IM-*` and `NORMAL2-IM-*`
    (two batches of the original collection, in train/ and test/ alike); pneumonia as bacteria/virus."""
    name = Path(filename).name
    if name.startswith("NORMAL2-"):
        return "NORMAL2"
    if name.startswith("IM-"):
        return "IM"
    return "virus" if "_virus_" in name else "bacteria"


def selection_split(
    samples: Sequence[Sample], val_fraction: float, seed: int, holdout_family: str | None = "NORMAL2"
) -> tuple[list[Sample], list[Sample]]:
    """(fit, selection): the patient-wise validation split, plus every image of one acquisition
    batch held out of fitting.

    Validation normals are easier than test normals (test/'s are other, lower-numbered patients
    of the same two families; see training/shifts.py), so a threshold chosen on plain validation
    over-calls PNEUMONIA on test. Holding out a whole batch of normals imitates
    an unseen batch inside train/: epochs, thresholds and calibration chosen on `selection`
    have seen a shift like the one they will meet. `holdout_family=None` gives the plain split.
    """
    train, val = patient_split(samples, val_fraction, seed)
    if holdout_family is None:
        return train, val
    held = [s for s in train if image_family(s.path.name) == holdout_family]
    if not held and not any(image_family(s.path.name) == holdout_family for s in val):
        return train, val  # a dataset without that batch (e.g. synthetic): plain validation
    held_set = set(held)
    return [s for s in train if s not in held_set], val + held


def stratified_sample(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """About n samples with the class proportions of `samples`, deterministic for a seed."""
    if n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for label in range(len(CLASS_NAMES)):
        group = [s for s in samples if s.label == label]
        k = max(1, round(n * len(group) / len(samples))) if group else 0
        idx = sorted(rng.choice(len(group), size=min(k, len(group)), replace=False))
        out.extend(group[i] for i in idx)
    return out


@dataclass
class LoadedImages:
    x: np.ndarray  # (n, size, size, channels) uint8
    y: np.ndarray  # (n,) int labels
    samples: list[Sample]
    skipped: list[str]  # one message per file that could not be used


def load_images(
    samples: Sequence[Sample],
    preprocessing: Preprocessing,
    skip_bad: bool = False,
    threads: int = 2,
    progress: Callable[[int], None] | None = None,
) -> LoadedImages:
    """Decode and preprocess samples in parallel (OpenCV releases the GIL).

    A file that cannot be used stops the load with its path in the message, unless
    `skip_bad`, in which case it is listed in `skipped`.
    """

    def one(s: Sample):
        try:
            return preprocessing.load(s.path)[0]
        except InputImageError as e:
            return e

    xs, kept, skipped = [], [], []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for s, r in zip(samples, pool.map(one, samples, chunksize=16)):
            if progress:
                progress(1)
            if isinstance(r, InputImageError):
                if not skip_bad:
                    raise DatasetError(f"{r} (remove the file, or pass --skip-bad to skip such files)")
                skipped.append(str(r))
                continue
            xs.append(r)
            kept.append(s)
    if not kept:
        raise DatasetError("no usable images were found")
    x = np.stack(xs)
    y = np.array([s.label for s in kept], dtype=np.int64)
    return LoadedImages(x, y, kept, skipped)
