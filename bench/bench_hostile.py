"""Decompression bombs against `infer` and `serve`: time to refusal, peak RSS, /healthz under fire.

    nice .venv/bin/python bench/bench_hostile.py [--rounds 3] [--before] [--fuzz-report bench/fuzz_out/report.json]

The bombs are tests/hostile_files.py's, at 30000 x 30000 px (900 MP): PNG and TIFF of zeros
(0.88 MB each), a 224 px JPEG whose SOF says 30000 x 30000, a BMP header, and four DICOMs
(Rows/Columns, a frame whose SOF disagrees with Rows/Columns, a deflated dataset of zero pixels,
and the same with Rows/Columns understated). Written to a temporary folder, never committed.

- infer: one whole process per bomb (spawn to exit; peak RSS from wait4, as bench_infer.py does),
  and the row's own `ms` (decode start to refusal);
- serve: one server (the shipped model); each bomb posted `--rounds` times in turn (request
  latency), then 20 bombs from 4 concurrent clients while /healthz is polled every 20 ms; the
  server's peak RSS is its VmHWM from /proc;
- `--before`: the PNG bomb through `infer` with the budget lifted (EDGE_PNEUMO_MAX_PIXELS=10^12),
  i.e. what happened before the budget (1.8 GB, seconds).
- `--parts infer,in_process`: re-measure only those sections and keep the others from the saved JSON (with
  their own date and commit, stated in the report); the re-measured sections' former figures are kept
  as the "previous" column.
Writes bench/results_hostile.json and bench/RESULTS_hostile.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import _benchlib as bl  # noqa: E402
import hostile_files as hf  # noqa: E402

EXE = str(Path(sys.executable).parent / "edge-pneumo")
MODEL = REPO / "exported"


def infer_rows(bombs: dict[str, Path], rounds: int, env=None) -> dict:
    out = {}
    for name, path in bombs.items():
        runs = []
        for _ in range(rounds):
            r = bl.timed_process([EXE, "infer", "--model", str(MODEL), "-f", "json", str(path)], env=env)
            row = json.loads(r["stdout"].splitlines()[0])
            runs.append(
                {"wall_s": r["wall_s"], "maxrss_mb": r["maxrss_mb"], "row_ms": row["ms"], "status": row["status"]}
            )
        out[name] = {
            "bytes": path.stat().st_size,
            "status": runs[0]["status"],
            "reason": row["reason"],
            "row_ms": bl.stats([x["row_ms"] for x in runs]),
            "wall_s": bl.stats([x["wall_s"] for x in runs]),
            "maxrss_mb": bl.stats([x["maxrss_mb"] for x in runs]),
        }
        o = out[name]
        print(f"infer {name}: {o['row_ms']['median']:.1f} ms, {o['maxrss_mb']['max']:.0f} MB", flush=True)
    return out


REFUSE_CODE = """
import statistics, sys, time
from edge_pneumo.decoders.decode import decode_bytes
from edge_pneumo.errors import InputImageError
data, out = open(sys.argv[1], "rb").read(), []
for i in range(int(sys.argv[2]) + 1):
    t, c = time.perf_counter(), time.process_time()
    try:
        decode_bytes(data, sys.argv[1])
    except InputImageError:
        pass
    out.append((time.perf_counter() - t, time.process_time() - c))
warm = out[1:]
print(out[0][0], statistics.median(w for w, _ in warm), statistics.median(c for _, c in warm))
"""


def refusal_in_process(bombs: dict[str, Path], n: int) -> dict:
    """Time to refusal inside one warm process: the first call (imports included) and the median of n
    more, wall and CPU (CPU time is what a shared, loaded machine cannot inflate)."""
    out = {}
    for name, path in bombs.items():
        r = subprocess.run([sys.executable, "-c", REFUSE_CODE, str(path), str(n)], capture_output=True, text=True)
        first, median, cpu = map(float, r.stdout.split())
        out[name] = {"first_ms": 1000 * first, "warm_wall_ms": 1000 * median, "warm_cpu_ms": 1000 * cpu}
    return out


AT_BUDGET_CODE = """
import resource, sys, time
from edge_pneumo.decoders.decode import read_grey
t, c = time.perf_counter(), time.process_time()
g = read_grey(sys.argv[1], 128)
print(g.pixels.shape[0], g.pixels.shape[1], time.perf_counter() - t, time.process_time() - c,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def at_budget(folder: Path) -> dict:
    """What one decode of a real-sized film just under the 60 MP budget costs (fresh process each)."""
    import cv2
    import numpy as np
    import rows_baseline as rb

    data_dir = Path(os.environ.get("EDGE_PNEUMO_DATA", REPO.parent / "shared/data/chest_xray"))
    films = rb.big_films(data_dir.parent / "adult_cxr", folder)
    grey = cv2.imread(str(films[0]), cv2.IMREAD_GRAYSCALE)
    ds = hf._cr_dataset(*grey.shape)
    from pydicom.uid import ExplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = (grey.astype(np.uint16) * 16).tobytes()
    del grey
    dcm = folder / "big_59mp_16bit.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    del ds
    out = {}
    for p in [*films, dcm]:
        r = bl.timed_process([sys.executable, "-c", AT_BUDGET_CODE, str(p)])  # RSS from wait4, not this process's
        h, w, wall, cpu, rss = r["stdout"].split()
        out[p.name] = {"bytes": p.stat().st_size, "decoded": [int(h), int(w)], "wall_s": float(wall),
                       "cpu_s": float(cpu), "maxrss_mb": float(rss)}
        print(f"at budget {p.name}: {out[p.name]}", flush=True)
    return out


def _post(url: str, data: bytes, name: str) -> tuple[int, float]:
    boundary = "b0undary" + os.urandom(6).hex()
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        f"{url}/api/v1/classify", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        e.read()
        code = e.code
    return code, time.perf_counter() - t0


def _vmhwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_rows(bombs: dict[str, Path], rounds: int, tmp: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_serve import start_server

    proc, url, _ = start_server(MODEL, tmp)
    try:
        data_dir = Path(os.environ.get("EDGE_PNEUMO_DATA", REPO.parent / "shared/data/chest_xray"))
        good = sorted((data_dir / "test").rglob("*.jpeg"))[0]
        for _ in range(3):  # warm: model loaded, pydicom imported
            _post(url, good.read_bytes(), "good.jpeg")
            _post(url, bombs["bomb_rows.dcm"].read_bytes(), "warm.dcm")
        rss_idle = _vmhwm_mb(proc.pid)
        sequential = {}
        for name, path in bombs.items():
            data = path.read_bytes()
            res = [_post(url, data, name) for _ in range(rounds)]
            sequential[name] = {
                "codes": sorted({c for c, _ in res}),
                "request_ms": bl.stats([1000 * s for _, s in res]),
            }
        rss_sequential = _vmhwm_mb(proc.pid)
        names = sorted(bombs)
        answers, health, stop = [], [], threading.Event()

        def client(k):
            for i in range(5):
                name = names[(k * 5 + i) % len(names)]
                answers.append(_post(url, bombs[name].read_bytes(), name))

        def poll():
            while not stop.is_set():
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                    r.read()
                health.append(time.perf_counter() - t0)
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        storm_s = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        poller.join()
        code, good_s = _post(url, good.read_bytes(), "good.jpeg")
        return {
            "rss_warm_mb": rss_idle,
            "rss_after_sequential_mb": rss_sequential,
            "rss_peak_mb": _vmhwm_mb(proc.pid),
            "sequential": sequential,
            "storm": {
                "bombs": len(answers),
                "clients": 4,
                "seconds": storm_s,
                "codes": {str(c): sum(1 for x, _ in answers if x == c) for c in sorted({x for x, _ in answers})},
                "request_ms": bl.stats([1000 * s for _, s in answers]),
                "healthz_polls": len(health),
                "healthz_ms": bl.stats([1000 * s for s in health]),
                "healthz_over_100ms": sum(1 for s in health if s > 0.1),
            },
            "good_after": {"code": code, "ms": 1000 * good_s},
            "requests_over_limit_note": "bodies are parsed off the event loop (serve.py)",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def report(rec: dict) -> str:
    L = ["# Hostile inputs: decompression bombs through `infer` and `serve`", ""]
    commit = str(rec["git"].get("commit", ""))[:12]
    L.append(f"Command: `{rec['command']}` (cwd `{rec['cwd']}`), {rec['date_utc']}, git {commit}.")
    m = rec["machine"]
    L.append(
        f"Machine: {m.get('cpu_model')}, {m.get('cores_logical')} logical cores, shared with other jobs "
        f"(load {rec['loadavg_start']} -> {rec['loadavg_end']}). Pixel budget: the default 60 MP."
    )
    kept = rec.get("kept_from")
    if kept:
        L.append(
            f"Re-measured in this run: {', '.join(rec['parts'])}. Kept from the run of {kept['date_utc']} at git "
            f"{str(kept['git'].get('commit', ''))[:12]} (`{kept['command']}`, load {kept['loadavg_start']} -> "
            f"{kept['loadavg_end']}): every other section."
        )
    previous = rec.get("previous", {})
    L += ["", "## `infer`, one whole process per bomb (the shipped int8 model)", ""]
    before = previous.get("infer")
    was = f" | previous run, git {str(before['git'].get('commit', ''))[:12]} (ms, wall, RSS)" if before else ""
    L.append(
        "| bomb (30000 x 30000 px announced) | file | status | refused in (row `ms`, median) "
        f"| process wall (median) | peak RSS (max){was} |"
    )
    L.append("|---|---|---|---|---|---|" + ("---|" if before else ""))
    for name, r in rec["infer"].items():
        old = before["data"].get(name) if before else None
        old_cell = (
            f" | {old['row_ms']['median']:.1f} ms, {old['wall_s']['median']:.2f} s, {old['maxrss_mb']['max']:.0f} MB"
            if old
            else (" | -" if before else "")
        )
        L.append(
            f"| {name} | {r['bytes'] / 1e6:.3f} MB | {r['status']} | {r['row_ms']['median']:.1f} ms | "
            f"{r['wall_s']['median']:.2f} s | {r['maxrss_mb']['max']:.0f} MB{old_cell} |"
        )
    L += ["", "Inside one process (`decode_bytes`; first call with its imports, then the median of 20 warm calls):", ""]
    before = previous.get("in_process")
    was = f" | previous run, git {str(before['git'].get('commit', ''))[:12]} (first, warm wall)" if before else ""
    L += [f"| bomb | first call | warm wall | warm CPU{was} |", "|---|---|---|---|" + ("---|" if before else "")]
    for name, r in rec.get("in_process", {}).items():
        old = before["data"].get(name) if before else None
        old_cell = (
            f" | {old['first_ms']:.1f} ms, {old['warm_wall_ms']:.2f} ms" if old else (" | -" if before else "")
        )
        L.append(
            f"| {name} | {r['first_ms']:.1f} ms | {r['warm_wall_ms']:.2f} ms | {r['warm_cpu_ms']:.2f} ms{old_cell} |"
        )
    L += [
        "",
        "The first call's time is mostly imports, paid once per process by any file of the format: "
        "`imagesize` ~34 ms CPU here (it imports urllib.request for its HTTP reader; since 2026-11-29 13:25 "
        "only a TIFF needs it: a PNG's IHDR and a BMP's info header are read at their fixed offsets), "
        "the DICOM pre-scan's module ~10 ms. "
        "The refusal itself is the warm figure; the deflated ones inflate a little first (the liar, whose "
        "Rows/Columns understate its pixels, up to 1 MB past what they need).",
    ]
    L += [
        "",
        "DICOM: since the stdlib pre-scan (edge_pneumo/decoders/dicom_prescan.py), the budget's tags are "
        "read, and a bomb refused, before pydicom is imported: its ~190 ms is no longer paid by a refusal. "
        "A file the pre-scan cannot be sure about (big endian, no DICM prefix, implicit-VR nested sequences "
        "of undefined length, ...) and every file that passes are read by pydicom as before.",
    ]
    if rec.get("at_budget"):
        L += ["", "What a film just under the budget costs (one decode, fresh process, `min_side_hint` 128):", ""]
        L += ["| film | file | decoded to | wall | CPU | peak RSS |", "|---|---|---|---|---|---|"]
        for name, r in rec["at_budget"].items():
            L.append(
                f"| {name} | {r['bytes'] / 1e6:.1f} MB | {r['decoded'][1]} x {r['decoded'][0]} | {r['wall_s']:.2f} s | "
                f"{r['cpu_s']:.2f} s | {r['maxrss_mb']:.0f} MB |"
            )
    if rec.get("before"):
        b = rec["before"]["bomb.png"]
        L += [
            "",
            f"Before the budget (the same PNG, EDGE_PNEUMO_MAX_PIXELS=10^12): {b['status']} after "
            f"{b['row_ms']['median'] / 1000:.1f} s of decoding, peak RSS {b['maxrss_mb']['max']:.0f} MB.",
            f"Reason given: {b['reason']}",
        ]
    s = rec["serve"]
    L += ["", "## `serve` (one server, the shipped model)", ""]
    L.append(
        f"Server peak RSS (VmHWM): {s['rss_warm_mb']:.0f} MB when warm (a real X-ray and a DICOM bomb, 3 times); "
        f"{s.get('rss_after_sequential_mb', float('nan')):.0f} MB after every bomb "
        f"{rec.get('rounds', 3)} times in turn; "
        f"{s['rss_peak_mb']:.0f} MB after the storm and one more real X-ray."
    )
    L += ["", "| bomb | HTTP status | request latency (median, max) |", "|---|---|---|"]
    for name, r in s["sequential"].items():
        L.append(f"| {name} | {r['codes']} | {r['request_ms']['median']:.1f} ms, {r['request_ms']['max']:.1f} ms |")
    st = s["storm"]
    L += [
        "",
        f"Storm: {st['bombs']} bombs from {st['clients']} concurrent clients in {st['seconds']:.2f} s, "
        f"answers {st['codes']}; "
        f"request latency median {st['request_ms']['median']:.0f} ms, max {st['request_ms']['max']:.0f} ms. "
        f"/healthz polled {st['healthz_polls']} times meanwhile: median {st['healthz_ms']['median']:.1f} ms, "
        f"max {st['healthz_ms']['max']:.1f} ms, {st['healthz_over_100ms']} over 100 ms. "
        f"A real X-ray afterwards: HTTP {s['good_after']['code']} in {s['good_after']['ms']:.0f} ms.",
    ]
    fz = rec.get("fuzz")
    if fz:
        L += ["", "## Fuzzing (`bench/fuzz_decode.py`)", ""]
        L.append(f"Command: `{fz['command']}`; {fz['seeds']} seeds; pixel budget {fz['pixel_budget']:,}.")
        L.append(
            f"Executions: **{fz['executions']:,}** in {len(fz['runs'])} libFuzzer runs "
            f"({sum(r['seconds'] for r in fz['runs']):.0f} s, niced, on 2 shared cores)."
        )
        L.append(
            f"Runs stopped by a find (native crash / hang > 2 s / out of memory): {len(fz['stops'])} "
            f"({sum(1 for s in fz['stops'] if 'timeout' in s)} reported as timeouts; the others died at "
            "the 1.5 GB RSS limit or on a hang before libFuzzer could say which); "
            f"artifacts: {fz['native_findings'] or 'none'}."
        )
        kinds: dict = {}
        for f in fz["python_findings"]:
            kinds.setdefault(f["what"][:90], []).append(f)
        L.append(
            "Python findings (exceptions other than the package's own, or decodes over the budget): "
            f"{len(fz['python_findings'])}"
        )
        for k, v in kinds.items():
            L.append(f"- {len(v)} x {k}")
        L += [
            "",
            "What fuzzing found, and what each became (all fixed, each a regression test in "
            "tests/test_hostile.py):",
            "",
            "- a 40 s trial run (seeds then at a 4 MP budget): `ValueError: UID is not a transfer syntax` (the budget "
            "check's own bug) and `NotImplementedError: Unknown Value Representation` from pydicom's lazy parsing: "
            "now failed rows ('damaged DICOM file'); a 3.6 kB deflated DICOM parsed as ~320,000 empty elements in 5 s: "
            "now refused past 20,000 top-level elements;",
            "- the long run: a 5.9 kB PNG whose IDAT chunk claims 4 GB, which OpenCV 5 allocates before reading "
            "(the oom- and the first timeout- artifacts; 4 GB RSS, 16-38 s): every PNG chunk must now fit in the file;",
            "- the long run: JPEG-LS DICOMs of 573-654 bytes on which pylibjpeg's libjpeg loops forever (three "
            "timeout- artifacts, all from pydicom's JPEG-LS test files), so JPEG-LS went to CharLS (pyjpegls) "
            "only, which refuses them in ~1 ms; then CharLS itself hung on a 566-byte JPEG-LS frame "
            "(timeout-8732bc..., rebuilt by tests/hostile_files.py fuzz_find('jpegls_charls_hang')) and took 7.7 "
            "s on another (timeout-669908..., not kept; the time limit below would stop it at 2 s); every "
            "libFuzzer restart after that stopped on it while loading the corpus (the 867-868-execution runs). "
            "Both JPEG-LS decoders can hang, so a JPEG-LS frame is now decoded in a child process "
            "(edge_pneumo/decoders/isolated.py: CharLS, or libjpeg where pyjpegls is missing) that is killed and "
            "reaped past 2 s + 0.25 s per megapixel: both finds are refused in ~2 s ('JPEG-LS decode did not "
            "finish in 2 s; the file's pixel data is likely corrupt'), under either decoder, and `serve` answers "
            "422 with no zombie left. Cost, by bench/bench_jpegls_child.py (medians of 15, two runs, this 2-core "
            "machine under a training job's load): 0.4-0.56 s once per process (the child's start-up, mostly "
            "pydicom's import); then +0.7 to +2 ms for a 64 px file, within the noise at 4 MP (-6 to +1 ms on "
            "~180-250 ms), +53 to +129 ms at 18.5 MP (on 0.7-1.4 s; the decoded 37 MB frame crossing a pipe). "
            "Fuzzing was re-run only as a 70 s smoke with both finds in its corpus: 13,743 executions, no stop "
            "(before, every libFuzzer restart stopped on the CharLS find);",
            "- the long run: a 246-byte damaged JPEG reported as a timeout that did not reproduce (18 ms in a fresh "
            "process: 'corrupt JPEG that cannot be decoded'); not committed, as it is a fragment of a dataset seed.",
            "- a 300 s smoke after the DICOM pre-scan (its first one found nothing in 129,179 executions; the second "
            "stopped twice): a 4.3 kB JPEG Baseline CR whose frame's SOF bytes were shuffled to 24672 x 0 px (the oom- "
            "artifact): 0 pixels for the budget, simplejpeg refuses the frame, and pydicom's fallback, pylibjpeg's "
            "libjpeg, decoded it for ever, past 1.5 GB (the same on main: it predates the pre-scan). A JPEG frame "
            "announcing a side of 0 is now refused before decoding (tests/hostile_files.py dicom_jpeg_zero_height(); "
            "a JPEG-LS one still goes to its time-limited child). And a timeout on a 730-byte deflated element flood "
            "that did not reproduce (0.47 s under atheris, 0.2-0.5 s plain: refused past 20,000 elements), not kept;",
            "",
            "Found while building the harness, not by it: the deflate cap looped forever on pydicom's own "
            "`image_dfl.dcm` (zlib keeps trailing bytes as an unconsumed tail after the end of the stream), and "
            "progressive JPEG scan bombs (a 44 kB, 4 MP JPEG with 2,000 repeated scans took 64 s): both fixed, "
            "both tested.",
            "",
            "Limits of this run: atheris instruments Python code only (the package, imagesize), so libFuzzer's "
            "coverage feedback does not see inside OpenCV, libjpeg-turbo or the pydicom plugins; their crashes, hangs "
            "and allocations are still caught (a native crash, -timeout 2, -rss_limit_mb 1500), but found by mutation "
            "alone. Runs that a find stopped were restarted on the same corpus; a child started before a fix kept the "
            "old code until its 10 min chunk ended.",
        ]
    sm = rec.get("fuzz_smoke")
    if sm:
        kinds = sorted({f["kind"] for f in sm["python_findings"]})
        L += [
            "",
            f"After the DICOM pre-scan: a smoke run, `{sm['command']}` ({sm.get('date_utc', '?')}, git "
            f"{str(sm.get('git', ''))[:12]}), which also checks the pre-scan against pydicom on every input with a "
            "DICM prefix (tests/prescan_oracle.py: a value read differently, an early refusal not worded as the "
            f"pydicom path's, an exception from the pre-scan): **{sm['executions']:,}** executions in "
            f"{sum(r['seconds'] for r in sm['runs']):.0f} s, {len(sm['python_findings'])} Python findings"
            f"{' (' + ', '.join(kinds) + ')' if kinds else ''}, {len(sm['stops'])} stops, native artifacts: "
            f"{sm['native_findings'] or 'none'}.",
        ]
    L.append("")
    return "\n".join(L)


PARTS = ("infer", "in_process", "serve")
_PROVENANCE = ("date_utc", "command", "cwd", "machine", "versions", "git", "loadavg_start", "loadavg_end")


def _remeasure(out_json: Path, parts: list[str], rounds: int) -> dict:
    """The saved record with `parts` measured again: the rest, and the former figures of `parts`, kept
    with the date, commit and load of the run that made them."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    old = json.loads(out_json.read_text())
    origin = old.get("kept_from") or {k: old.get(k) for k in _PROVENANCE}
    rec = {**old, **bl.run_record(sys.argv), "rounds": rounds, "parts": parts, "kept_from": origin}
    rec["previous"] = {
        part: {**{k: old.get(k) for k in _PROVENANCE}, "data": old[part]} for part in parts if part in old
    }
    with tempfile.TemporaryDirectory() as td:
        bombs = hf.write_bombs(Path(td) / "bombs", hf.SIDE)
        if "infer" in parts:
            rec["infer"] = infer_rows(bombs, rounds)
        if "in_process" in parts:
            rec["in_process"] = refusal_in_process(bombs, 20)
        if "serve" in parts:
            rec["serve"] = serve_rows(bombs, rounds, Path(td))
    rec["loadavg_end"] = bl.loadavg()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", action="store_true", help="also the PNG bomb with the budget lifted (1.8 GB)")
    ap.add_argument("--at-budget", action="store_true", help="also decode 59.99 MP films (PNG, JPEG, 16-bit DICOM)")
    ap.add_argument("--fuzz-report", type=Path, default=None)
    ap.add_argument("--fuzz-smoke", type=Path, default=None, help="a short fuzz_decode report.json, shown too")
    ap.add_argument("--only-report", action="store_true", help="rewrite the markdown from the saved JSON")
    ap.add_argument(
        "--parts",
        default="",
        help="comma-separated sections to re-measure (infer, in_process, serve); the others: from the saved JSON",
    )
    args = ap.parse_args()
    out_json = BENCH / "results_hostile.json"
    if args.only_report:
        rec = json.loads(out_json.read_text())
    elif args.parts:
        rec = _remeasure(out_json, [p.strip() for p in args.parts.split(",") if p.strip()], args.rounds)
    else:
        rec = bl.run_record(sys.argv)
        rec["rounds"] = args.rounds
        with tempfile.TemporaryDirectory() as td:
            bombs = hf.write_bombs(Path(td) / "bombs", hf.SIDE)
            rec["infer"] = infer_rows(bombs, args.rounds)
            rec["in_process"] = refusal_in_process(bombs, 20)
            if args.at_budget:
                rec["at_budget"] = at_budget(Path(td))
            if args.before:
                env = {**os.environ, "EDGE_PNEUMO_MAX_PIXELS": str(10**12)}
                rec["before"] = infer_rows({"bomb.png": bombs["bomb.png"]}, 1, env)
            rec["serve"] = serve_rows(bombs, args.rounds, Path(td))
        rec["loadavg_end"] = bl.loadavg()
    if args.fuzz_report is not None and args.fuzz_report.exists():
        rec["fuzz"] = json.loads(args.fuzz_report.read_text())
    if args.fuzz_smoke is not None and args.fuzz_smoke.exists():
        rec["fuzz_smoke"] = json.loads(args.fuzz_smoke.read_text())
    bl.write_json(out_json, rec)
    bl.write_text(BENCH / "RESULTS_hostile.md", report(rec))
    print(report(rec))


if __name__ == "__main__":
    main()
