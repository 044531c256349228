"""Dataset discovery and the patient-wise split."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import DatasetError
from edge_pneumo.lab.dataset import discover, find_split, load_images, patient_id, patient_split, stratified_sample


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person1199_bacteria_3149.jpeg", "person1199"),
        ("person1199_virus_2045.jpeg", "person1199"),  # same number, other subtype: grouped (cannot leak)
        ("person12_bacteria_46.jpeg", "person12"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "IM-1427"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("something_else.jpeg", "something_else"),
    ],
)
def test_patient_id(name, patient):
    assert patient_id(name) == patient


def test_discover_labels_by_folder(synthetic_data):
    samples = discover(find_split(synthetic_data, "train"))
    assert Counter(s.label for s in samples) == {0: 40, 1: 40}
    assert all(s.path.parent.name == ("NORMAL", "PNEUMONIA")[s.label] for s in samples)
    assert find_split(synthetic_data / "test", "test") == synthetic_data / "test"  # a split folder itself


def test_patient_split_never_splits_a_patient_and_is_deterministic(synthetic_data):
    samples = discover(find_split(synthetic_data, "train"))
    train, val = patient_split(samples, 0.25, seed=3)
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert len(train) + len(val) == len(samples)
    assert {s.label for s in val} == {0, 1}  # both classes in validation
    assert 0.15 < len(val) / len(samples) < 0.35
    again, _ = patient_split(samples, 0.25, seed=3)
    other, _ = patient_split(samples, 0.25, seed=4)
    assert [s.path for s in again] == [s.path for s in train]
    assert [s.path for s in other] != [s.path for s in train]


def test_stratified_sample_keeps_class_shares(synthetic_data):
    samples = discover(find_split(synthetic_data, "train"))
    picked = stratified_sample(samples, 20, seed=0)
    assert Counter(s.label for s in picked) == {0: 10, 1: 10}


def test_layout_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="data folder not found"):
        find_split(tmp_path / "nowhere", "train")
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "train" / "PNEUMONIA").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "NORMAL" / "IM-0001-0001.jpeg"), np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match="PNEUMONIA: no images"):
        discover(tmp_path / "train")
    with pytest.raises(DatasetError, match="expected test/NORMAL"):
        find_split(tmp_path / "train" / "NORMAL", "test")


def test_bad_file_stops_loading_unless_skipped(tmp_path, synthetic_data):
    samples = discover(find_split(synthetic_data, "test"))[:6]
    bad = tmp_path / "PNEUMONIA" / "person9_bacteria_1.jpeg"
    bad.parent.mkdir()
    bad.write_text("not an image")
    from edge_pneumo.lab.dataset import Sample

    with_bad = [*samples, Sample(bad, 1, "person9")]
    with pytest.raises(DatasetError, match=r"person9_bacteria_1.jpeg.*--skip-bad"):
        load_images(with_bad, Preprocessing())
    loaded = load_images(with_bad, Preprocessing(), skip_bad=True)
    assert loaded.x.shape == (6, 64, 64, 3) and len(loaded.skipped) == 1
