"""The one preprocessing: every kind of input becomes the same (64, 64, 3) uint8 contract."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_pneumo.decoders.decode import jpeg_size, read_grey
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import InputImageError

PRE = Preprocessing()


def _grey(h=120, w=100, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (12, 10), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return base


def test_grey_jpeg_becomes_three_identical_channels(tmp_path):
    p = tmp_path / "a.jpeg"
    cv2.imwrite(str(p), _grey())
    x, warnings = PRE.load(p)
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
    assert warnings == []


def test_png_8bit_16bit_bgr_bgra_agree(tmp_path):
    g = _grey()
    g[0, 0], g[-1, -1] = 0, 255  # full range, so the 16-bit stretch maps back exactly
    cv2.imwrite(str(tmp_path / "g8.png"), g)
    cv2.imwrite(str(tmp_path / "g16.png"), g.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "bgr.png"), cv2.merge([g, g, g]))
    cv2.imwrite(str(tmp_path / "bgra.png"), cv2.merge([g, g, g, np.full_like(g, 255)]))
    ref, _ = PRE.load(tmp_path / "g8.png")
    for name in ("g16.png", "bgr.png", "bgra.png"):
        x, _ = PRE.load(tmp_path / name)
        assert np.abs(x.astype(int) - ref.astype(int)).max() <= 1, name


def test_sixteen_bit_uses_its_own_range(tmp_path):
    """A 12-bit X-ray in a 16-bit PNG is stretched, not left nearly black."""
    g = _grey().astype(np.uint16) * 16  # values up to 4080
    cv2.imwrite(str(tmp_path / "x12.png"), g)
    x, _ = PRE.load(tmp_path / "x12.png")
    assert x.max() >= 250


def test_colour_is_converted_to_grey(tmp_path):
    img = np.zeros((80, 80, 3), np.uint8)
    img[..., 2] = 200  # pure red in BGR
    cv2.imwrite(str(tmp_path / "red.png"), img)
    x, _ = PRE.load(tmp_path / "red.png")
    assert np.all(x == round(0.299 * 200))


def test_equalize_changes_intensity_but_not_shape(tmp_path):
    p = tmp_path / "a.png"
    cv2.imwrite(str(p), (_grey() // 4 + 60).astype(np.uint8))
    plain, _ = PRE.load(p)
    eq, _ = Preprocessing(intensity="equalize").load(p)
    assert eq.shape == plain.shape and eq.max() == 255 and plain.max() < 130


def test_big_jpeg_reduced_decode_matches_full_decode(tmp_path):
    g = cv2.resize(_grey(), (2000, 2400), interpolation=cv2.INTER_CUBIC)
    p = tmp_path / "big.jpeg"
    cv2.imwrite(str(p), g, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert jpeg_size(np.fromfile(p, np.uint8)) == (2000, 2400)
    fast, _ = PRE.load(p)
    full, _ = Preprocessing(reduced_jpeg_decode=False).load(p)
    diff = np.abs(fast.astype(int) - full.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 6


def test_truncated_jpeg_is_classified_with_one_warning(tmp_path, capfd):
    p = tmp_path / "cut.jpeg"
    cv2.imwrite(str(p), _grey(300, 300))
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.95)])
    x, warnings = PRE.load(p)
    assert x.shape == (64, 64, 3)
    assert len(warnings) == 1 and "damaged JPEG" in warnings[0]
    assert "Corrupt JPEG" not in capfd.readouterr().err  # libjpeg's own noise stays off the terminal


def test_jpeg_cut_far_too_short_is_refused(tmp_path):
    p = tmp_path / "cut.jpeg"
    cv2.imwrite(str(p), _grey(300, 300))
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(InputImageError, match="of the image is missing"):
        PRE.load(p)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jpeg", b"", "file is empty"),
        ("notes.jpeg", b"patient notes, not an image\n", "a text file"),
        ("short.jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "cannot be decoded"),
        ("image.gif", b"GIF89a", "unsupported file type"),
        ("random.png", bytes(range(256)) * 4, "not an image"),
    ],
)
def test_bad_files_raise_a_clear_error(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(InputImageError, match=message) as e:
        PRE.load(p)
    assert str(p) in str(e.value)


def test_tiny_and_missing_images_are_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((1, 1), np.uint8))
    with pytest.raises(InputImageError, match="too small"):
        read_grey(tmp_path / "one.png")
    with pytest.raises(InputImageError, match="no such file"):
        read_grey(tmp_path / "missing.jpeg")
    with pytest.raises(InputImageError, match="is a directory"):
        read_grey(tmp_path)


def test_contract_round_trips_through_a_dict():
    pre = Preprocessing(intensity="equalize")
    d = pre.to_dict()
    assert d["size"] == 64 and d["channels"] == 3 and d["interpolation"] == "area" and d["dtype"] == "uint8"
    assert Preprocessing.from_dict(d) == pre
    with pytest.raises(ValueError):
        Preprocessing(intensity="clahe-typo")


def test_clahe_contract_is_recorded_and_round_trips():
    from edge_pneumo.device.preprocess import Preprocessing

    pp = Preprocessing(intensity="clahe")
    d = pp.to_dict()
    assert d["clahe"] == {"clip_limit": 2.0, "tile_grid": [4, 4]}
    assert Preprocessing.from_dict(d) == pp
    ramp = np.tile(np.linspace(60, 120, 200).astype(np.uint8), (200, 1))
    x = pp.apply(ramp)
    assert x.shape == (64, 64, 3) and x.dtype == np.uint8
    assert np.ptp(x) > np.ptp(Preprocessing().apply(ramp))  # local contrast is stretched


def test_a_manifest_with_other_clahe_settings_is_refused():
    """The runtime applies its own CLAHE constants, so a contract that records others cannot be honoured."""
    from edge_pneumo.device.preprocess import Preprocessing

    d = Preprocessing(intensity="clahe").to_dict()
    d["clahe"] = {"clip_limit": 3.0, "tile_grid": [8, 8]}
    with pytest.raises(ValueError, match="CLAHE"):
        Preprocessing.from_dict(d)
