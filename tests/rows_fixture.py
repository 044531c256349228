"""Fingerprints of the folder path's rows on the test split, for tests/test_folder_rows.py.

    EDGE_PNEUMO_DATA=../shared/data/chest_xray python tests/rows_fixture.py   # rewrites tests/data/rows_test_split.json

Each row (`Result.to_dict()`) minus `ms`, with its path made relative to the data folder, as
canonical JSON, hashed: a change in any field of any row changes its fingerprint. Written by the
code before a speed change; the test reruns the folder path and compares. Re-make it (and say why
in the commit) only when rows are meant to change: a new model, new calibration, a new guard score.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "data" / "rows_test_split.json"
ARTIFACTS = ("tflite_int8", "onnx_float32")  # one per runtime; int8 ONNX is being re-made (issue 27 note)


def fingerprint(row: dict, data_root: Path) -> str:
    row = {k: v for k, v in row.items() if k != "ms"}
    row["path"] = Path(row["path"]).relative_to(data_root).as_posix()
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:20]


def folder_rows(artifact: str, data_root: Path) -> dict[str, str]:
    """The rows `infer --dir test` makes (predict_many with infer's thread split), fingerprinted."""
    from edge_pneumo.apps.infer import gather_paths, split_threads
    from edge_pneumo.device.classifier import Classifier
    from edge_pneumo.device.runtime import default_threads

    paths = gather_paths([], data_root / "test")
    model_t, decode_t = split_threads(default_threads(), len(paths))
    clf = Classifier.load(None, artifact=artifact, threads=model_t)
    return {
        Path(r.path).relative_to(data_root).as_posix(): fingerprint(r.to_dict(), data_root)
        for r in clf.predict_many(paths, decode_threads=decode_t)
    }


def model_identity(artifact: str) -> dict:
    """What the rows depend on besides the code: the model, its artifact, and the manifest's
    threshold, calibration, guard, preprocessing, parameter file and view check."""
    from edge_pneumo.device.manifest import default_model_folder, load_manifest

    m = load_manifest(default_model_folder())
    decides = {
        k: m.raw.get(k) for k in ("threshold", "calibration", "guard", "preprocessing", "params_file", "view_check")
    }
    return {
        "model_version": m.raw.get("model_version"),
        "sha256": m.artifacts[artifact].sha256,
        "manifest": hashlib.sha256(json.dumps(decides, sort_keys=True).encode()).hexdigest()[:20],
    }


if __name__ == "__main__":
    root = Path(os.environ.get("EDGE_PNEUMO_DATA", "../shared/data/chest_xray")).resolve()
    out = {a: {**model_identity(a), "rows": folder_rows(a, root)} for a in ARTIFACTS}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    counts = ", ".join(f"{a} {len(v['rows'])} rows" for a, v in out.items())
    print(f"wrote {FIXTURE}: {counts}", file=sys.stderr)
