"""Issue 27: `edge-pneumo serve` under 8 concurrent clients on loopback, against the same work in-process.

    python bench/bench_serve.py                # ~1-2 min; writes bench/RESULTS_serve.md and results_serve.json

The server (`edge-pneumo serve`, default artifact, no device profile) runs as its own process; 8
client threads in this process each POST test images (multipart, field `file`) in a loop for
`--seconds`; requests/s and latency p50/p99 over all requests after a warm-up. Against it, in this
process: `Classifier.predict_bytes` one image at a time (what the server does per request) and
`predict_many` over the same files (a folder run's batching), both on the same artifact.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads, as the CLI entry does (issue 27)
sys.path.insert(0, str(Path(__file__).parent))
import _benchlib as bl  # noqa: E402
from bench_folder import default_data  # noqa: E402


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def client(port: int, files: list[tuple[str, bytes]], stop: threading.Event, out: list, start: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    i = start
    while not stop.is_set():
        name, data = files[i % len(files)]
        body, ctype = multipart(data, name)
        t0 = time.perf_counter()
        conn.request("POST", "/api/v1/classify", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        resp.read()
        out.append((time.perf_counter(), time.perf_counter() - t0, resp.status))
        i += 1
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--models", type=Path, default=bl.REPO_DIR / "exported")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=bl.BENCH_DIR / "results_serve.json")
    args = ap.parse_args()
    record = bl.run_record(sys.argv)
    paths = [p for p, _ in bl.test_images(args.data)][:200]
    files = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    cli = str(Path(sys.executable).parent / "edge-pneumo")
    with tempfile.TemporaryDirectory() as td:
        env = {**os.environ, "EDGE_PNEUMO_PROFILE": str(Path(td) / "no-profile.json")}
        log = open(Path(td) / "serve.log", "w+b")  # a file, not a pipe: its per-request log lines must not block it
        server = subprocess.Popen(
            [cli, "serve", "--model", str(args.models), "--port", str(args.port), "--queue", str(4 * args.clients)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            info = wait_ready(args.port, server, log)
            stop, samples = threading.Event(), []
            threads = [
                threading.Thread(target=client, args=(args.port, files, stop, samples, 25 * k), daemon=True)
                for k in range(args.clients)
            ]
            t_start = time.perf_counter()
            for t in threads:
                t.start()
            time.sleep(args.warmup + args.seconds)
            stop.set()
            for t in threads:
                t.join()
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    timed = [s for s in samples if s[0] >= t_start + args.warmup]
    lat = sorted(s[1] for s in timed)
    span = max(s[0] for s in timed) - min(s[0] for s in timed) if len(timed) > 1 else float("nan")
    serve = {
        "artifact": info.get("artifact"),
        "clients": args.clients,
        "requests": len(timed),
        "status_counts": {str(c): sum(1 for s in timed if s[2] == c) for c in sorted({s[2] for s in timed})},
        "requests_per_s": len(timed) / span,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }
    inproc = in_process(args.models, info.get("artifact"), files, paths)
    res = {"record": record, "serve": serve, "in_process": inproc, "loadavg_end": bl.loadavg()}
    bl.write_json(args.out, res)
    bl.write_text(args.out.parent / "RESULTS_serve.md", markdown(res))
    print((args.out.parent / "RESULTS_serve.md").read_text())


def wait_ready(port: int, server: subprocess.Popen, log) -> dict:
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"serve exited {server.returncode}: {log.read().decode()[-800:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/v1/info")
            info = json.loads(conn.getresponse().read())
            conn.close()
            return info
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("serve did not answer within 60 s")


def in_process(models: Path, artifact: str, files: list[tuple[str, bytes]], paths: list[str]) -> dict:
    """The server's per-request work without HTTP: predict_bytes one at a time; and predict_many batched."""
    from edge_pneumo.device.classifier import Classifier

    clf = Classifier.load(models, artifact=artifact)
    for name, data in files[:20]:
        clf.predict_bytes(data, name)
    rates = {"predict_bytes": [], "predict_many": []}
    for _ in range(3):
        t0 = time.perf_counter()
        for name, data in files:
            clf.predict_bytes(data, name)
        rates["predict_bytes"].append(len(files) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        list(clf.predict_many(paths))
        rates["predict_many"].append(len(paths) / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()} | {"images": len(files)}


def markdown(res: dict) -> str:
    r, s, p = res["record"], res["serve"], res["in_process"]
    return "\n".join(
        [
            "# `serve` with concurrent clients against in-process throughput (issue 27)",
            "",
            f"`{r['command']}`  ",
            f"{r['date_utc']}, git {r['git']['commit'][:10]}, {r['machine']['cpu_model']}, "
            f"{r['machine']['cores_usable']} cores; load average {r['loadavg_start']} -> {res['loadavg_end']}.",
            "",
            "| what | images/s | p50 | p99 |",
            "|---|---|---|---|",
            f"| `serve` ({s['artifact']}), {s['clients']} clients on loopback, {s['requests']} requests "
            f"{s['status_counts']} | {s['requests_per_s']:.0f} | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms |",
            f"| in-process `predict_bytes`, one at a time ({p['images']} images) | {p['predict_bytes']:.0f} | - | - |",
            f"| in-process `predict_many` (batched, decode threads) | {p['predict_many']:.0f} | - | - |",
            "",
            f"serve / in-process one-at-a-time: {s['requests_per_s'] / p['predict_bytes']:.2f}; "
            f"serve / predict_many: {s['requests_per_s'] / p['predict_many']:.2f}. The server runs one request "
            "at a time on its model thread (no batching across requests), so its ceiling is `predict_bytes`; "
            "HTTP parsing, the multipart upload and the client threads share the same 2 cores.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
