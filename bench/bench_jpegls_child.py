"""What decoding JPEG-LS in a child process costs (issue 25): `read_grey` on valid JPEG-LS DICOMs, with
the frame decoded in this process by CharLS (the path before the child, restored by a monkeypatch)
and in the child (`edge_pneumo/decoders/isolated.py`), warm; and the child's start-up, paid by the
first JPEG-LS file of a process, measured in fresh processes.

    PYTHONPATH=. .venv/bin/python bench/bench_jpegls_child.py [--repeats 9]

Prints a markdown table (medians; this is a shared 2-core machine, so the spread is printed too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _in_process(ds, name):
    """The decode before the child: CharLS (pyjpegls) in this process."""
    ds.pixel_array_options(decoding_plugin="pyjpegls")
    return ds.pixel_array


def _files(folder: Path) -> dict[str, Path]:
    import hostile_files as hf
    from pydicom.data import get_testdata_file

    mr = "MR_small_jpeg_ls_lossless.dcm"
    out = {f"{mr} (64 x 64, pydicom's)": Path(get_testdata_file(mr))}
    rng = np.random.default_rng(0)
    for side in (2000, 4300):
        smooth = np.kron(rng.integers(0, 3800, (side // 100 + 1, side // 100 + 1)), np.ones((100, 100)))[:side, :side]
        pixels = (smooth + rng.integers(0, 200, (side, side))).astype(np.uint16)
        p = folder / f"cr_{side}.dcm"
        p.write_bytes(hf.dicom_jpeg_ls(pixels, bits_stored=12))
        out[f"CR {side} x {side} 12-bit lossless ({side * side / 1e6:.1f} MP, {p.stat().st_size / 1e6:.1f} MB)"] = p
    return out


def _times(path: Path, repeats: int) -> tuple[list[float], list[float]]:
    """ms per read_grey, in process and in the child, alternated so that the machine's load hits both alike."""
    from edge_pneumo.decoders import dicom
    from edge_pneumo.decoders.decode import read_grey

    original, out = dicom._pixel_array, ([], [])
    try:
        for i in range(2 * repeats + 2):
            dicom._pixel_array = original if i % 2 else _in_process
            t = time.perf_counter()
            read_grey(path)
            if i >= 2:  # the first of each: imports, and the child started
                out[i % 2].append(1000 * (time.perf_counter() - t))
        return out
    finally:
        dicom._pixel_array = original


FIRST = """
import sys, time
from edge_pneumo.decoders import dicom
from edge_pneumo.decoders.decode import read_grey
sys.path.insert(0, sys.argv[2])
import bench_jpegls_child as b
read_grey(sys.argv[3])  # pydicom and the decoders imported, in this process, by an uncompressed DICOM
t = time.perf_counter()
if sys.argv[1] == "in":
    dicom._pixel_array = b._in_process
read_grey(sys.argv[4])
print(1000 * (time.perf_counter() - t))
"""


def _first_file(path: Path, plain: Path, child: bool) -> float:
    args = [sys.executable, "-c", FIRST, "child" if child else "in", str(REPO / "bench"), str(plain), str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=env, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()
    from pydicom.data import get_testdata_file

    plain = Path(get_testdata_file("CT_small.dcm"))
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(Path(tmp))
        print("| file | in process (before) | in the child, warm | added | spread (child) |")
        print("|---|---|---|---|---|")
        for label, path in files.items():
            before, after = _times(path, a.repeats)
            b, c = statistics.median(before), statistics.median(after)
            print(f"| {label} | {b:.1f} ms | {c:.1f} ms | {c - b:+.1f} ms | {min(after):.1f}-{max(after):.1f} ms |")
        small = next(iter(files.values()))
        firsts_in = [_first_file(small, plain, False) for _ in range(3)]
        firsts_child = [_first_file(small, plain, True) for _ in range(3)]
        print()
        print(
            f"First JPEG-LS file of a process (MR_small, pydicom already imported; median of 3 fresh processes): "
            f"{statistics.median(firsts_in):.0f} ms in process, {statistics.median(firsts_child):.0f} ms with the "
            f"child's start-up ({statistics.median(firsts_child) - statistics.median(firsts_in):+.0f} ms)."
        )


if __name__ == "__main__":
    main()
