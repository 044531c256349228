"""Coverage-guided fuzzing of `decode_bytes` (atheris + libFuzzer) for a fixed time budget.

    nice -n 10 .venv/bin/python bench/fuzz_decode.py --budget-s 2400 --out bench/fuzz_out

Seeds (written to OUT/seeds, never committed): dataset JPEGs, the adult films (each
re-encoded at 96 px as JPEG, progressive JPEG, PNG, 16-bit PNG, RGBA PNG, TIFF and BMP, and the
DICOM films' pixels as small uncompressed and JPEG-baseline CRs, so an execution costs ~1 ms),
pydicom's test files under 200 kB, and the bombs of tests/hostile_files.py at 2000 px.
Each input is decoded under a 1 MP pixel budget (EDGE_PNEUMO_MAX_PIXELS), so any allocation a
bomb could cause shows up against libFuzzer's -rss_limit_mb; -timeout 2 makes a decode over
2 s a finding; JPEG-LS frames are decoded in the package's child process, which is started before
libFuzzer times anything and killed past 0.5 s (EDGE_PNEUMO_DECODE_TIMEOUT_S), so a JPEG-LS hang is a
refused input, not a timeout. A Python exception other than the package's own errors (InputImageError,
InputRejected, MissingRuntimeError), or a decoded image larger than the budget, is written to
OUT/findings and the run goes on; so is, for an input with a DICM prefix, any disagreement between the
stdlib DICOM pre-scan (edge_pneumo/decoders/dicom_prescan.py) and pydicom (tests/prescan_oracle.py: a
value read differently, or a refusal the pydicom path would not give in the same words), or an exception
from the pre-scan itself; a native crash, a hang or an out-of-memory stops libFuzzer,
which is then restarted on the same corpus until the budget is spent. The report: total
executions (libFuzzer's own count), findings by kind, written to OUT/report.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUZZ_BUDGET_PIXELS = 1_000_000  # small, so a mutated header costs at most ~1 MP of decoding


def write_seeds(folder: Path) -> int:
    import cv2
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    import hostile_files as hf

    folder.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ.get("EDGE_PNEUMO_DATA", REPO.parent / "shared" / "data" / "chest_xray"))
    n = 0

    def put(blob: bytes) -> None:
        nonlocal n
        (folder / hashlib.sha1(blob).hexdigest()).write_bytes(blob)
        n += 1

    for p in sorted((data / "test").rglob("*.jpeg"))[::40]:  # 16 dataset JPEGs, both classes
        put(p.read_bytes())
    adult = data.parent / "adult_cxr"
    for p in sorted(adult.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".dcm"):
            continue
        if p.suffix.lower() == ".dcm":
            from edge_pneumo.decoders.decode import read_grey

            grey = read_grey(p).pixels
            small = cv2.resize(grey, (96, 96), interpolation=cv2.INTER_AREA)
            put(_small_dicom(small, jpeg=False))
            put(_small_dicom(small, jpeg=True))
            continue
        grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(grey, (96, 96), interpolation=cv2.INTER_AREA)
        for ext, img in ((".jpg", small), (".png", small), (".tif", small), (".bmp", small)):
            put(cv2.imencode(ext, img)[1].tobytes())
        put(cv2.imencode(".png", small.astype(np.uint16) * 257)[1].tobytes())
        put(cv2.imencode(".png", cv2.merge([small, small, small, small]))[1].tobytes())
        put(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes())
    try:  # the files pydicom installs (its downloadable extras are never fetched)
        import pydicom

        for f in sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm")):
            if f.stat().st_size <= 200_000:
                put(f.read_bytes())
    except ImportError:
        pass
    for maker in (hf.png_bomb, hf.tiff_bomb, hf.jpeg_bomb, hf.bmp_bomb, hf.dicom_deflate_bomb):
        put(maker(2000))
    put(hf.dicom_jpeg_bomb(2000, 2000, 2000))
    put(hf.dicom_jpeg_bomb(64, 64, 2000))
    put(hf.dicom_deflate_bomb(2000, rows=64))  # the liar: Rows/Columns understate the inflated pixels
    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"):  # for the pre-scan
        put(_sequence_dicom(syntax))
    return n


def _sequence_dicom(syntax: str) -> bytes:
    """A 2000 px CR header (over the fuzzing budget) after nested sequences of undefined length, with 96 px
    of pixels: what the DICOM pre-scan walks before it reaches group 0028."""
    import io

    import hostile_files as hf

    ds = hf._cr_dataset(2000, 2000)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.ReferencedImageSequence = hf.nested_sequence(2)
    ds.PixelData = bytes(96 * 96)
    hf.undefined_lengths(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _small_dicom(grey, jpeg: bool) -> bytes:
    import io

    import cv2
    import hostile_files as hf
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

    ds = hf._cr_dataset(*grey.shape)
    if jpeg:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([cv2.imencode(".jpg", grey)[1].tobytes()])
        ds["PixelData"].VR = "OB"
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = grey.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def one_input(findings: Path):
    from edge_pneumo.decoders import limits
    from edge_pneumo.decoders.decode import decode_bytes
    from edge_pneumo.errors import InputImageError, InputRejected, MissingRuntimeError

    budget = limits.max_pixels()
    _start_the_jpeg_ls_child(decode_bytes)
    sys.path.insert(0, str(REPO / "tests"))
    import prescan_oracle

    def test(data: bytes) -> None:
        name = "fuzz.dcm" if data[:1] == b"D" else "fuzz"  # the name route to the DICOM reader, too
        if data[128:132] == b"DICM":
            _check_the_prescan(data, name)
        try:
            image = decode_bytes(data, name, 128 if len(data) % 2 else None)
        except (InputImageError, InputRejected, MissingRuntimeError):
            return
        except Exception as e:  # a finding: kept, and the run goes on
            _keep(findings, "exception", data, f"{type(e).__name__}: {e}"[:300])
            return
        if image.pixels.size > budget:
            _keep(findings, "over_budget", data, f"decoded {image.pixels.shape} > {budget}")

    def _check_the_prescan(data: bytes, name: str) -> None:
        """The pre-scan against pydicom on the same input (decode_bytes' own call to it swallows its errors)."""
        try:
            problem = prescan_oracle.differential(data, name)
        except Exception as e:
            _keep(findings, "prescan_exception", data, f"{type(e).__name__}: {e}"[:300])
            return
        if problem:
            _keep(findings, "prescan_mismatch", data, problem[:300])

    return test


def _start_the_jpeg_ls_child(decode_bytes) -> None:
    """Decode one valid JPEG-LS file first: the child's start-up (~0.4 s) is then not charged to an input."""
    try:
        from pydicom.data import get_testdata_file

        decode_bytes(Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes(), "warm.dcm")
    except Exception:  # no pydicom, or no JPEG-LS codec: nothing to start
        pass


def _keep(findings: Path, kind: str, data: bytes, what: str) -> None:
    digest = hashlib.sha1(data).hexdigest()
    findings.mkdir(parents=True, exist_ok=True)
    (findings / f"{kind}-{digest}").write_bytes(data)
    with open(findings / "findings.jsonl", "a") as f:
        f.write(json.dumps({"kind": kind, "sha1": digest, "what": what}) + "\n")


def child(out: Path, budget_s: int) -> None:
    """One libFuzzer run (in its own process: a native crash ends only this)."""
    import atheris

    with atheris.instrument_imports(include=["edge_pneumo", "imagesize"]):
        test = one_input(out / "findings")
    args = [
        sys.argv[0],
        str(out / "corpus"),
        str(out / "seeds"),
        f"-max_total_time={budget_s}",
        "-timeout=2",
        "-rss_limit_mb=1500",
        "-max_len=262144",
        f"-artifact_prefix={out / 'findings'}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(args, test)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=int, default=600)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "fuzz_out")
    ap.add_argument("--chunk-s", type=int, default=600, help="restart libFuzzer this often (same corpus)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-budget", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.out, args.child_budget)
        return
    (args.out / "corpus").mkdir(parents=True, exist_ok=True)
    (args.out / "findings").mkdir(parents=True, exist_ok=True)
    seeds = write_seeds(args.out / "seeds")
    os.environ["EDGE_PNEUMO_MAX_PIXELS"] = str(FUZZ_BUDGET_PIXELS)  # for the fuzzing children, after the seeds
    os.environ["EDGE_PNEUMO_DECODE_TIMEOUT_S"] = "0.5"  # JPEG-LS: killed well before libFuzzer's -timeout=2
    deadline = time.time() + args.budget_s
    runs, stops, total = [], [], 0
    while (left := int(deadline - time.time())) > 5:
        t0 = time.time()
        before = set(os.listdir(args.out / "findings"))
        p = subprocess.run(
            [sys.executable, __file__, "--child", "--child-budget", str(min(left, args.chunk_s)), "--out", args.out],
            capture_output=True,
            text=True,
        )
        log = p.stdout + p.stderr
        (args.out / f"run-{len(runs)}.log").write_text(log[-200_000:])
        done = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log) or re.findall(r"#(\d+)\s", log)
        n = int(done[-1]) if done else 0
        total += n
        new = sorted(set(os.listdir(args.out / "findings")) - before - {"findings.jsonl"})
        why = "budget spent" if p.returncode == 0 else _stop_reason(log, new)
        runs.append({"executions": n, "seconds": round(time.time() - t0, 1), "exit": p.returncode, "stop": why})
        if p.returncode != 0:
            stops.append(why)
        print(f"run {len(runs)}: {n} executions, {why}", file=sys.stderr, flush=True)
    found = []
    f = args.out / "findings" / "findings.jsonl"
    if f.exists():
        found = [json.loads(line) for line in f.read_text().splitlines()]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "git": head,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": args.budget_s,
        "pixel_budget": FUZZ_BUDGET_PIXELS,
        "seeds": seeds,
        "executions": total,
        "runs": runs,
        "stops": stops,
        "python_findings": found,
        "native_findings": sorted(
            p.name for p in (args.out / "findings").iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom")
        ),
        "loadavg_end": os.getloadavg(),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("executions", "stops", "native_findings")}, indent=1))


def _stop_reason(log: str, new: list[str]) -> str:
    artifacts = [n for n in new if n.split("-")[0] in ("crash", "timeout", "oom", "leak")]
    if artifacts:
        return ", ".join(artifacts)
    for pattern in ("ERROR: libFuzzer: timeout", "out-of-memory", "deadly signal", "Uncaught Python exception"):
        if pattern in log:
            return pattern
    return "exit " + (log.strip().splitlines() or ["?"])[-1][:120]


if __name__ == "__main__":
    main()
