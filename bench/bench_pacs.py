"""Issue 28: how long after the classification is each image's SR written and stored in the archive?

Real parts, as in tests/test_pacs.py: Orthanc (archive), `edge-pneumo serve --dicom-port --forward` (the
node, shipped model), DCMTK storescu (the modality), CR films made from test JPEGs in a temporary folder.
The outbox table records, per SR, `classified_at` (the report step starts, right after the classifier
returns) and `sent_at` (Orthanc's C-STORE response arrived); the difference covers building the SR
(highdicom), writing it to disk with fsync, the outbox row, waking the sender, the association and the
C-STORE. Two ways of sending: one film per storescu call, spaced (a modality sending as it images), and a
burst of films in one association (queueing included).

    .venv/bin/python bench/bench_pacs.py --data ../shared/data/chest_xray --out bench/results_pacs.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _benchlib import REPO_DIR, loadavg, run_record, stats, write_json, write_text  # noqa: E402
from pacs_parts import Orthanc, cr_film, free_port, storescu  # noqa: E402


def start_node(tmp: Path, orthanc: Orthanc, models: Path) -> tuple[subprocess.Popen, int]:
    port, dport = free_port(), free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edge-pneumo"), "serve", "--model", str(models), "--port", str(port)]
        + ["--dicom-port", str(dport), "--allow-aet", "XRAY01", "--results", str(tmp / "dicom.jsonl")]
        + ["--forward", orthanc.destination],
        stdout=open(tmp / "node.log", "w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc, dport
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the node did not start: " + (tmp / "node.log").read_text()[-2000:])


def summary(values: list[float]) -> dict:
    """_benchlib.stats plus the 90th percentile."""
    out = stats(values)
    if values:
        out["p90"] = sorted(values)[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return out


def latencies(outbox: Path) -> dict[str, list[float]]:
    """Per SR, in ms: `total` classified -> archive's response; `node` classified -> C-STORE request sent
    (SR built, committed, association ready); `archive` the C-STORE round trip (Orthanc storing it)."""
    db = sqlite3.connect(str(outbox / "outbox.sqlite"))
    rows = db.execute(
        "SELECT classified_at, send_started, sent_at FROM outbox WHERE key LIKE 'sr:%' AND sent_at IS NOT NULL "
        "ORDER BY created"
    ).fetchall()
    db.close()
    return {
        "total": [1000 * (s - c) for c, _, s in rows],
        "node": [1000 * (b - c) for c, b, _ in rows],
        "archive": [1000 * (s - b) for _, b, s in rows],
    }


def build_and_queue_cost(films: list[Path], models: Path, folder: Path, n: int = 30) -> dict:
    """In one process, no archive: build_sr + Outbox.put per film (the node's own work), wall and CPU ms."""
    import pydicom

    from edge_pneumo.apps.outbox import Destination, Outbox, OutboxOptions
    from edge_pneumo.apps.sr_report import ReportContext, build_sr
    from edge_pneumo.device.classifier import Classifier

    clf = Classifier.load(models)
    ctx = ReportContext.from_classifier(clf)
    box = Outbox(OutboxOptions(folder, Destination("NONE", "127.0.0.1", free_port())))
    wall, cpu = [], []
    for i in range(n + 3):
        f = films[i % len(films)]
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        row = clf.predict_bytes(f.read_bytes()).to_dict()
        t, c = time.perf_counter(), time.process_time()
        box.put(f"sr:{ds.SOPInstanceUID}", build_sr(ds, row, ctx), time.time())
        if i >= 3:  # after a warm-up (first imports)
            wall.append(1000 * (time.perf_counter() - t))
            cpu.append(1000 * (time.process_time() - c))
    return {"wall_ms": summary(wall), "cpu_ms": summary(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=REPO_DIR / "exported")
    ap.add_argument("--single", type=int, default=20, help="films sent one per association, spaced")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between two single films")
    ap.add_argument("--burst", type=int, default=40, help="films sent in one association")
    ap.add_argument("--out", type=Path, default=REPO_DIR / "bench" / "results_pacs.json")
    args = ap.parse_args()
    record = run_record(sys.argv)
    jpegs = sorted((args.data / "test" / "NORMAL").glob("*.jpeg")) + sorted(
        (args.data / "test" / "PNEUMONIA").glob("*.jpeg")
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as td:
        tmp = Path(td)
        films = []
        for i in range(args.single + args.burst):
            j = jpegs[(i * 7) % len(jpegs)]
            films.append(tmp / f"cr{i}.dcm")
            cr_film(j, films[-1], compressed=i % 2 == 0)
        in_process = build_and_queue_cost(films, args.models, tmp / "cost")
        orthanc = Orthanc(tmp / "orthanc").start()
        proc, dport = start_node(tmp, orthanc, args.models)
        try:
            for f in films[: args.single]:
                storescu(dport, f)
                time.sleep(args.gap)
            orthanc.wait_for("SR", args.single, timeout=60)
            single = latencies(tmp / "dicom.jsonl.outbox")
            n_single = len(single["total"])
            storescu(dport, *films[args.single :])
            orthanc.wait_for("SR", len(films), timeout=120)
            time.sleep(0.5)
            every = latencies(tmp / "dicom.jsonl.outbox")
            burst = {k: v[n_single:] for k, v in every.items()}
            rows = [json.loads(x) for x in (tmp / "dicom.jsonl").read_text().splitlines()]
            results = {
                "single": {"films": args.single, "gap_s": args.gap, **{k: summary(v) for k, v in single.items()}},
                "burst": {"films": args.burst, **{k: summary(v) for k, v in burst.items()}},
                "build_and_queue_in_process": in_process,
                "archived_srs": len(orthanc.find("SR")),
                "classified": sum(r["status"] == "classified" for r in rows),
                "classify_ms": stats([r["ms"] for r in rows]),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            orthanc.stop()
    record["loadavg_end"] = loadavg()
    m = record["machine"]
    doc = {**record, "results": results}
    write_json(args.out, doc)
    lines = [
        "# SR written and forwarded after the classification (bench/bench_pacs.py, issue 28)",
        "",
        f"- date (UTC): {record['date_utc']}; machine: {m['cpu_model']}, {m['cores_usable']} cores; "
        f"load {record['loadavg_start']} -> {record['loadavg_end']}",
        f"- command: `{record['command']}`",
        "- per SR, from the outbox table: **node** = classifier's answer -> the SR's C-STORE request leaves "
        "(highdicom SR built, committed with fsync, association ready); **archive** = Orthanc's C-STORE round "
        "trip (it stores the SR); **total** = both (SR written and forwarded).",
        "",
        "| sending | films | part | median ms | p90 ms | min ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("single", f"one film per association, {args.gap} s apart"),
        ("burst", f"{args.burst} films in one association (queueing included)"),
    ):
        for part in ("total", "node", "archive"):
            v = results[name][part]
            lines.append(
                f"| {label} | {results[name]['films']} | {part} | {v.get('median', 0):.1f} | {v.get('p90', 0):.1f} "
                f"| {v.get('min', 0):.1f} | {v.get('max', 0):.1f} |"
            )
    w, c = results["build_and_queue_in_process"]["wall_ms"], results["build_and_queue_in_process"]["cpu_ms"]
    lines += [
        "",
        f"The node's own work alone (in one process, no archive: `build_sr` + `Outbox.put`, {w['n']} films): "
        f"median {w.get('median', 0):.1f} ms wall, {c.get('median', 0):.1f} ms CPU.",
        "",
        f"{results['archived_srs']} SRs in the archive for {args.single + args.burst} films "
        f"({results['classified']} classified); classification itself: median "
        f"{results['classify_ms'].get('median', 0):.1f} ms.",
        "",
    ]
    write_text(args.out.with_name("RESULTS_pacs.md"), "\n".join(lines))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
