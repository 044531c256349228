"""Where the start-up of `edge-pneumo infer --image X` goes: imports and work, step by step.

    python bench/startup_breakdown.py --models exported --out bench/results_startup.json

Part A: fresh processes (spawn to exit) that import more and more of what `infer` imports,
round-robin, --runs rounds after one warm-up: wall, CPU (user+sys, less sensitive to other
load than wall) and peak RSS (wait4). Differences between rows are the cost of each layer.
Part B: one fresh process that times the steps of `infer` after the imports (manifest,
sha256 check, onnxruntime session, one prediction through predict / predict_many).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

STEPS_SNIPPET = textwrap.dedent(
    """
    import json, sys, time, resource
    t = time.perf_counter
    def rss():
        for line in open('/proc/self/status'):
            if line.startswith('VmRSS'):
                return int(line.split()[1]) / 1024
    out = {}
    t0 = t(); import numpy, cv2; out['import numpy+cv2'] = (t() - t0, rss())
    t0 = t(); import onnxruntime; out['import onnxruntime'] = (t() - t0, rss())
    t0 = t(); import typer; out['import typer'] = (t() - t0, rss())
    try:
        t0 = t(); import typer._adapters; out['import typer._adapters (pydantic, typer >= 0.29)'] = (t() - t0, rss())
    except ImportError:
        pass
    t0 = t(); import hashlib; hashlib.sha256(b''); out['import hashlib (OpenSSL libcrypto)'] = (t() - t0, rss())
    t0 = t(); import concurrent.futures; out['import concurrent.futures'] = (t() - t0, rss())
    t0 = t(); import edge_pneumo.apps.cli, edge_pneumo.apps.infer, edge_pneumo.device.classifier
    out['import edge_pneumo (rest)'] = (t() - t0, rss())
    from edge_pneumo.device.manifest import load_manifest
    from edge_pneumo.device.runtime import open_backend
    from edge_pneumo.device.classifier import Classifier
    models, image = sys.argv[1], sys.argv[2]
    t0 = t(); m = load_manifest(models); e = m.artifacts[m.default_artifact]; out['load_manifest'] = (t() - t0, rss())
    t0 = t(); m.verify(e); out['verify sha256'] = (t() - t0, rss())
    t0 = t(); b = open_backend(e.path(m.folder)); out['onnxruntime session (package options)'] = (t() - t0, rss())
    t0 = t(); s = onnxruntime.InferenceSession(str(e.path(m.folder)), providers=['CPUExecutionProvider'])
    out['onnxruntime session (defaults, as minimal_onnx)'] = (t() - t0, rss())
    clf = Classifier(b, m, e)
    t0 = t(); clf.predict(image); out['Classifier.predict, first call'] = (t() - t0, rss())
    t0 = t(); clf.predict(image); out['Classifier.predict, second call'] = (t() - t0, rss())
    t0 = t(); list(clf.predict_many([image])); out['Classifier.predict_many([X]) (thread pool)'] = (t() - t0, rss())
    out['peak RSS (VmHWM)'] = (0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))
    """
)


def rows(models: Path, image: str, manifest: dict) -> list[dict]:
    py = sys.executable
    cli = str(Path(sys.executable).parent / "edge-pneumo")
    onnx = str(models / (bl.artifact_file(manifest, "onnx_int8") or "pneumonia_int8.onnx"))
    eq = bl.intensity_flags(manifest)
    b = str(bl.BENCH_DIR)
    return [
        {"name": "python -c pass", "cmd": [py, "-c", "pass"]},
        {"name": "python -S -c pass (no site)", "cmd": [py, "-S", "-c", "pass"]},
        {"name": "import numpy", "cmd": [py, "-c", "import numpy"]},
        {"name": "import numpy, cv2", "cmd": [py, "-c", "import numpy, cv2"]},
        {"name": "import numpy, cv2, onnxruntime", "cmd": [py, "-c", "import numpy, cv2, onnxruntime"]},
        {"name": "import typer", "cmd": [py, "-c", "import typer"]},
        {"name": "import pydantic", "cmd": [py, "-c", "import pydantic"]},
        {"name": "import edge_pneumo.apps.cli", "cmd": [py, "-c", "import edge_pneumo.apps.cli"]},
        {"name": "import hashlib (loads OpenSSL libcrypto)", "cmd": [py, "-c", "import hashlib; hashlib.sha256(b'')"]},
        {
            "name": "import edge_pneumo.device.classifier + onnxruntime (no CLI)",
            "cmd": [py, "-c", "import edge_pneumo.device.classifier, onnxruntime"],
        },
        {
            "name": "all imports of infer (cli, infer_cli, classifier, onnxruntime)",
            "cmd": [
                py,
                "-c",
                "import edge_pneumo.apps.cli, edge_pneumo.apps.infer, edge_pneumo.device.classifier, onnxruntime",
            ],
        },
        {"name": "edge-pneumo --version", "cmd": [cli, "--version"]},
        {"name": "edge-pneumo --help", "cmd": [cli, "--help"]},
        {
            "name": "Classifier.load + predict (Python API, no CLI)",
            "cmd": [
                py,
                "-c",
                "from edge_pneumo import Classifier; "
                f"print(Classifier.load({str(models)!r}).predict({image!r}).probability)",
            ],
        },
        {"name": "edge-pneumo infer --image X", "cmd": [cli, "infer", "--image", image, "--model", str(models)]},
        {
            "name": "argparse + infer_cli.run_infer (same work as infer --image X, without typer)",
            "cmd": [
                py,
                "-c",
                "import argparse, sys; from pathlib import Path; "
                "from edge_pneumo.apps.infer import InferOptions, run_infer; "
                f"sys.exit(run_infer(InferOptions(items=[{image!r}], model=Path({str(models)!r}))))",
            ],
        },
        {"name": "minimal_onnx.py", "cmd": [py, f"{b}/minimal_onnx.py", onnx, image, *eq]},
    ]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray"))
    ap.add_argument("--models", type=Path, default=Path("exported"))
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/results_startup.json"))
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=0.0,
        help="first wait until the 1-min load average is <= this (0: don't wait)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    quiet = bl.wait_for_quiet(args.quiet_load, args.quiet_timeout)
    models = args.models.resolve()
    image = str(args.image or bl.test_images(args.data.resolve())[0][0])
    manifest = bl.load_manifest_json(models)
    record = bl.run_record([str(Path(sys.argv[0])), *argv])
    record["wait_for_quiet"] = quiet
    rs = rows(models, image, manifest)
    for r in rs:
        r.update(status="pending", runs=[], error=None)
    for i in range(1 + args.runs):
        for r in rs:
            if r["status"] == "failed":
                continue
            try:
                res = bl.timed_process(r["cmd"])
                if res["returncode"] != 0:
                    raise RuntimeError(f"exit code {res['returncode']}: {res['stderr'].strip()[-400:]}")
                r["status"] = "ok"
                if i:
                    r["runs"].append(
                        {"wall_s": res["wall_s"], "cpu_s": res["user_s"] + res["sys_s"], "maxrss_mb": res["maxrss_mb"]}
                    )
            except Exception as e:
                r["status"], r["error"] = "failed", f"{type(e).__name__}: {e}"
        print(f"round {i + 1}/{1 + args.runs}, load {bl.loadavg()}", flush=True)
    for r in rs:
        for k in ("wall_s", "cpu_s", "maxrss_mb"):
            r[k] = bl.stats([x[k] for x in r["runs"]])
    # Part B: steps inside one process, repeated in --runs fresh processes.
    steps_runs, steps_error = [], None
    for _ in range(args.runs):
        try:
            res = bl.timed_process([sys.executable, "-c", STEPS_SNIPPET, str(models), image])
            if res["returncode"] != 0:
                raise RuntimeError(res["stderr"].strip()[-600:])
            steps_runs.append(json.loads(res["stdout"].strip().splitlines()[-1]))
        except Exception as e:
            steps_error = f"{type(e).__name__}: {e}"
            break
    steps = {}
    if steps_runs:
        for k in steps_runs[0]:
            steps[k] = {
                "s": bl.stats([r[k][0] for r in steps_runs])["median"],
                "rss_mb_after": bl.stats([r[k][1] for r in steps_runs])["median"],
            }
    results = {
        "record": record,
        "image": image,
        "models": str(models),
        "rows": rs,
        "steps": steps,
        "steps_error": steps_error,
        "loadavg_end": bl.loadavg(),
    }
    md = args.md or args.out.with_name("RESULTS_startup.md")
    bl.write_json(args.out, results)
    L = [
        "# Start-up breakdown of `edge-pneumo infer --image X` (bench/startup_breakdown.py)\n",
        f"- date (UTC): {record['date_utc']}; command: `{record['command']}`",
        f"- machine: {record['machine']['cpu_model']}, {record['machine']['cores_logical']} cores; "
        f"load average start {record['loadavg_start']}, end {results['loadavg_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
        f"- {args.runs} rounds after 1 warm-up, rows round-robin; medians. CPU = user+sys of the process (less "
        "sensitive to load than wall).\n",
        "## A. Fresh processes, growing imports\n",
        "| process | wall s (min-max) | CPU s | peak RSS MB | status |",
        "|---|---|---|---|---|",
    ]
    for r in rs:
        w, c, m = r["wall_s"], r["cpu_s"], r["maxrss_mb"]
        if w.get("n"):
            L.append(
                f"| {r['name']} | {w['median']:.3f} ({w['min']:.3f}-{w['max']:.3f}) | {c['median']:.3f} | "
                f"{m['median']:.1f} | ok |"
            )
        else:
            L.append(
                f"| {r['name']} | - | - | - | {r['status']}: "
                f"{str(r['error'])[:150].replace('|', '/').replace(chr(10), ' ')} |"
            )
    L += [
        "",
        "## B. Steps inside one process (median over fresh processes)\n",
        "| step | ms | RSS after, MB |",
        "|---|---|---|",
    ]
    for k, d in steps.items():
        L.append(f"| {k} | {1000 * d['s']:.1f} | {d['rss_mb_after']:.1f} |")
    if steps_error:
        L.append(f"\nsteps failed: {steps_error[:300]}")
    bl.write_text(md, "\n".join(L) + "\n")
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
