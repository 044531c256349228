"""Rows before the pixel budget: what `tests/test_hostile.py` compares today's rows against.

`python tests/rows_baseline.py` wrote `tests/data/rows_before_hostile.json`, with the commit and
the manifest's sha256. First on main before the budget existed (1d96eb1, then 97f5dfe); after the
issue-22 refit changed the manifest, remade (session 10) in a checkout of 743e67c, the last commit
before that session's decoder changes (the JPEG-LS child process, the folder-speed work), with the
budget turned off: `EDGE_PNEUMO_MAX_PIXELS=1000000000000 python tests/rows_baseline.py`. So the
test compares today's rows, budget on, with rows made by older decoders and no budget.
Re-running it on code with the budget would only compare the code with itself: when the model
or guard changes, run it in a checkout of a commit without the budget (or of the last commit
before a deliberate decoder change) and say so in the commit. The rows cover the 624-image test
split, the adult films, and two films of just under 60 MP made from an adult film (PNG and
JPEG, made the same way by `big_films`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "rows_before_hostile.json"
ARTIFACT = "onnx_int8"
BIG_SIDE = 7745  # 7745 x 7745 = 59,985,025 px: just under the 60 MP default
FIELDS = ("status", "label", "probability", "raw_probability", "confidence", "reason", "warnings")


def data_dirs() -> tuple[Path, Path]:
    data = Path(os.environ.get("EDGE_PNEUMO_DATA", REPO.parent / "shared" / "data" / "chest_xray"))
    return data, data.parent / "adult_cxr"


def inputs(data: Path, adult: Path) -> list[Path]:
    test = sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    films = sorted(p for p in adult.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
    return test + films


def big_films(adult: Path, out: Path) -> list[Path]:
    """An adult film scaled up to just under 60 MP, as an 8-bit PNG and a JPEG (quality 90)."""
    grey = cv2.imread(str(adult / "00000001_000.png"), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, (BIG_SIDE, BIG_SIDE), interpolation=cv2.INTER_LINEAR)
    png, jpg = out / "big_59mp.png", out / "big_59mp.jpg"
    cv2.imwrite(str(png), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(jpg), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return [png, jpg]


def manifest_sha256() -> str:
    """The shipped model's identity: its manifest names every artifact's and parameter file's sha256."""
    return hashlib.sha256((REPO / "exported" / "manifest.json").read_bytes()).hexdigest()


def rows(paths: list[Path], root: Path) -> dict:
    from edge_pneumo.device.classifier import Classifier

    clf = Classifier.load(REPO / "exported", artifact=ARTIFACT)
    out = {}
    for p, r in zip(paths, clf.predict_many(paths, batch_size=32, decode_threads=1)):
        d = r.to_dict()
        key = os.path.relpath(p, root)
        out[key] = {k: d.get(k) for k in FIELDS}
        out[key]["file_sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main() -> None:
    import tempfile

    data, adult = data_dirs()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        big = big_films(adult, Path(tmp))
        record = {
            "commit": commit,
            "artifact": ARTIFACT,
            "manifest_sha256": manifest_sha256(),
            "cv2": cv2.__version__,
            "rows": rows(inputs(data, adult), data.parent),
            "big_films": rows(big, Path(tmp)),
        }
    OUT.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{len(record['rows'])} + {len(record['big_films'])} rows -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
