"""Throughput at scale (issue 14): `batch` on a Dask LocalCluster against `infer --dir`, and
what decoding full-resolution DICOMs costs, with and without the reduced JPEG-frame decoding.

    python bench/bench_batch.py --data ../shared/data/chest_xray --models exported --out bench/results_batch.json

1. The 5,216 train images: `edge-pneumo batch train/ --cluster local:2` and `edge-pneumo infer --dir train/`,
   whole processes; the batch's own figure once its cluster is up (its log line), cluster start-up
   apart; the labels of the two compared image by image.
2. DICOM-sized inputs: the 624 test images upscaled to 1024 px and stored as JPEG-baseline DICOMs
   (CR, MONOCHROME2). Decode + preprocess ms/image through the package (the encapsulated frame
   decoded as a JPEG at 1/8 scale) against pydicom + pylibjpeg at full size; labels, max |dp| and
   AUC both ways; then `batch --cluster local:2` against `infer --dir` on them.
Writes results JSON and a Markdown table beside it (RESULTS_batch.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _benchlib as bl  # noqa: E402


def run(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{cmd[1]} exited {p.returncode}: {p.stderr[-800:]}")
    return time.perf_counter() - t0, p.stderr


def rows_of(path: Path) -> dict[str, dict]:
    return {json.loads(line)["path"]: json.loads(line) for line in path.read_text().splitlines() if line.strip()}


def compare_rows(a: dict, b: dict) -> dict:
    common = sorted(a.keys() & b.keys())
    same = sum((a[k]["status"], a[k]["label"]) == (b[k]["status"], b[k]["label"]) for k in common)
    dp = [
        abs(a[k]["raw_probability"] - b[k]["raw_probability"])
        for k in common
        if a[k].get("raw_probability") is not None and b[k].get("raw_probability") is not None
    ]
    return {
        "n": len(common),
        "same_label": same,
        "max_abs_dp": max(dp) if dp else None,
        "missing": len(a.keys() ^ b.keys()),
    }


def batch_vs_infer(cli: str, src: Path, models: Path, tmp: Path, workers: int) -> dict:
    out_b, out_i = tmp / "batch.jsonl", tmp / "infer.jsonl"
    for f in tmp.glob("batch.jsonl*"):
        f.unlink()
    wall_b, log_b = run(
        [cli, "batch", str(src), "-o", str(out_b), "--cluster", f"local:{workers}", "--model", str(models)]
    )
    wall_i, _ = run([cli, "infer", "--dir", str(src), "--model", str(models), "-f", "json", "-o", str(out_i)])
    up = re.search(r"ready in ([0-9.]+) s", log_b)
    rate = re.search(r"\(([0-9]+) images/s once the cluster was up\)", log_b)
    rb, ri = rows_of(out_b), rows_of(out_i)
    return {
        "images": len(ri),
        "batch_wall_s": wall_b,
        "batch_cluster_start_s": float(up.group(1)) if up else None,
        "batch_images_per_s_cluster_up": float(rate.group(1)) if rate else None,
        "batch_images_per_s_whole_process": len(rb) / wall_b,
        "infer_wall_s": wall_i,
        "infer_images_per_s_whole_process": len(ri) / wall_i,
        "ratio_cluster_up_vs_infer": (float(rate.group(1)) / (len(ri) / wall_i)) if rate else None,
        "agreement": compare_rows(rb, ri),
    }


def make_dicoms(data: Path, folder: Path, size: int) -> list[tuple[Path, int]]:
    import cv2
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    CR = "1.2.840.10008.5.1.4.1.1.1"
    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        for p in sorted((data / "test" / cls).glob("*.jpeg")):
            g = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (size, size), interpolation=cv2.INTER_CUBIC)
            ok, jpg = cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 92])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR, generate_uid()
            meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds = FileDataset(p.stem, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = CR, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8
            ds.HighBit, ds.PixelRepresentation = 7, 0
            ds.PixelData = encapsulate([jpg.tobytes()])
            ds["PixelData"].is_undefined_length = True
            dst = folder / f"{cls}_{p.stem}.dcm"
            ds.save_as(str(dst), enforce_file_format=True)
            out.append((dst, label))
    return out


def dicom_decode(files: list[tuple[Path, int]], models: Path) -> dict:
    import edge_pneumo.decoders.dicom as dicom_mod
    from edge_pneumo import Classifier
    from edge_pneumo.lab.metrics import roc_auc

    clf = Classifier.load(models)
    pre = clf.preprocessing
    from edge_pneumo.decoders.decode import read_grey

    res = {}
    fast = dicom_mod._jpeg_frame_fast
    for mode in ("reduced_frame", "pydicom_full"):
        dicom_mod._jpeg_frame_fast = fast if mode == "reduced_frame" else (lambda ds, hint: None)
        xs, t0 = [], time.perf_counter()
        for f, _ in files:
            xs.append(pre.apply(read_grey(f, pre.min_side_hint).pixels))
        ms = 1000 * (time.perf_counter() - t0) / len(files)
        probs = clf.predict_array(np.stack(xs))
        res[mode] = {"decode_preprocess_ms_per_image": ms, "probs": probs}
    dicom_mod._jpeg_frame_fast = fast
    y = np.array([lab for _, lab in files])
    a, b = res["reduced_frame"]["probs"], res["pydicom_full"]["probs"]
    thr = clf.threshold
    return {
        "images": len(files),
        "artifact": clf.entry.name,
        "ms_reduced_frame": res["reduced_frame"]["decode_preprocess_ms_per_image"],
        "ms_pydicom_full": res["pydicom_full"]["decode_preprocess_ms_per_image"],
        "speedup": res["pydicom_full"]["decode_preprocess_ms_per_image"]
        / res["reduced_frame"]["decode_preprocess_ms_per_image"],
        "labels_same": int(((a >= thr) == (b >= thr)).sum()),
        "max_abs_dp": float(np.abs(a - b).max()),
        "accuracy_reduced": float(((a >= thr) == y).mean()),
        "accuracy_full": float(((b >= thr) == y).mean()),
        "auc_reduced": roc_auc(y, a),
        "auc_full": roc_auc(y, b),
    }


def markdown(r: dict) -> str:
    t, d, db = r["train"], r["dicom_decode"], r["dicom_batch"]
    L = [
        "# `batch` on Dask against `infer --dir`, and DICOM decoding (bench/bench_batch.py)",
        "",
        f"- date (UTC): {r['record']['date_utc']}; machine: {r['record']['machine']['cpu_model']}, "
        f"{r['record']['machine']['cores_usable']} cores; load {r['record']['loadavg_start']} -> {r['loadavg_end']}",
        f"- command: `{r['record']['command']}`",
        "",
        "| input | images | `batch --cluster local:2`, once the cluster is up | cluster start-up | batch, whole "
        "process | `infer --dir`, whole process | ratio (cluster up / infer) | same labels | max abs dp |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, x in (("train/ (224 px JPEG)", t), ("test/ as 1024 px JPEG-baseline DICOM", db)):
        a = x["agreement"]
        L.append(
            f"| {name} | {x['images']} | {bl.fmt(x['batch_images_per_s_cluster_up'], 0)} images/s | "
            f"{bl.fmt(x['batch_cluster_start_s'], 1)} s | {bl.fmt(x['batch_images_per_s_whole_process'], 0)} images/s "
            "| "
            f"{bl.fmt(x['infer_images_per_s_whole_process'], 0)} images/s | "
            f"{bl.fmt(x['ratio_cluster_up_vs_infer'], 2)} | "
            f"{a['same_label']} / {a['n']} | {bl.fmt(a['max_abs_dp'], 6)} |"
        )
    L += [
        "",
        "## Decoding a 1024 px JPEG-baseline DICOM",
        "",
        "| decode + preprocess | ms/image | accuracy | AUC |",
        "|---|---|---|---|",
        f"| the encapsulated frame as a JPEG, reduced to 1/8 (the package) | {d['ms_reduced_frame']:.2f} | "
        f"{d['accuracy_reduced']:.4f} | {d['auc_reduced']:.4f} |",
        f"| pydicom + pylibjpeg, full size | {d['ms_pydicom_full']:.2f} | {d['accuracy_full']:.4f} | "
        f"{d['auc_full']:.4f} |",
        "",
        f"{d['speedup']:.1f}x faster; labels agree on {d['labels_same']} of {d['images']} images, max |dp| "
        f"{d['max_abs_dp']:.4f} "
        f"({d['artifact']}).",
        "",
    ]
    per_core = db["batch_images_per_s_cluster_up"] / 2 if db.get("batch_images_per_s_cluster_up") else None
    if per_core:
        mimic, tb = 377_000, 4.7e12
        mb = tb / mimic / 1e6
        L += [
            "## Scaling on paper (from the figures above)",
            "",
            f"- Per core, a 1024 px JPEG-baseline DICOM costs about {1000 / per_core:.1f} ms end to end in `batch` "
            f"({per_core:.0f} images/s/core here; decode {d['ms_reduced_frame']:.1f} ms of it with the reduced frame, "
            f"{d['ms_pydicom_full']:.1f} ms without). The model is a small part: the decode is the cost.",
            f"- MIMIC-CXR (377,000 DICOMs, 4.7 TB: {mb:.1f} MB each on average) on N machines of C cores: "
            f"CPU-bound time ~ 377,000 / ({per_core:.0f} x N x C) s, e.g. {mimic / per_core / 60 / 2:.0f} min on one "
            f"2-core machine and {mimic / per_core / 64:.0f} s on 8 machines of 8 cores, if decoding stayed this "
            "cheap.",
            f"- Storage bounds it first: at {mb:.1f} MB per image, a 1 GB/s share delivers ~{1e9 / (mb * 1e6):.0f} "
            "images/s "
            f"whatever the cores; so ~{1e9 / (mb * 1e6) / per_core:.1f} cores per GB/s of storage bandwidth are "
            "enough, and "
            "more machines only help when each reads its own storage (sharded object store, local copies).",
            "- Full-size uncompressed 16-bit DICOMs (most of MIMIC) skip the JPEG trick: their cost is reading the "
            "bytes and "
            "the resize, so bandwidth matters even more. The client only appends ~1 kB per image and fsyncs once per "
            "partition: it is not the bottleneck.",
            "",
        ]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray"))
    ap.add_argument("--models", type=Path, default=Path("exported"))
    ap.add_argument("--out", type=Path, default=Path("bench/results_batch.json"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    record = bl.run_record(sys.argv)
    cli = str(Path(sys.executable).parent / "edge-pneumo")
    tmp = Path(tempfile.mkdtemp(prefix="edge-pneumo-batch-"))
    try:
        results = {"record": record}
        results["train"] = batch_vs_infer(cli, args.data / "train", args.models, tmp, args.workers)
        print("train:", json.dumps(results["train"]), flush=True)
        files = make_dicoms(args.data, tmp / "dicom", args.size)
        results["dicom_decode"] = dicom_decode(files, args.models)
        print("dicom decode:", json.dumps(results["dicom_decode"]), flush=True)
        results["dicom_batch"] = batch_vs_infer(cli, tmp / "dicom", args.models, tmp, args.workers)
        print("dicom batch:", json.dumps(results["dicom_batch"]), flush=True)
        results["loadavg_end"] = bl.loadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    args.out.with_name("RESULTS_batch.md").write_text(markdown(results))
    print(f"wrote {args.out} and {args.out.with_name('RESULTS_batch.md')}")


if __name__ == "__main__":
    main()
