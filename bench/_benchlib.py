"""Shared helpers for the bench/ scripts: machine/version record, process timing, stats.

Not part of the package; imported by the scripts in this folder (they put bench/ on sys.path).
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VERSION_PACKAGES = (
    "edge-pneumo",
    "onnxruntime",
    "opencv-python-headless",
    "numpy",
    "ai-edge-litert",
    "tensorflow-cpu",
    "keras",
    "typer",
    "pydantic",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict:
    def run(*args):
        try:
            return subprocess.run(
                ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    status = run("status", "--porcelain", "--", "edge_pneumo")
    return {
        "commit": run("rev-parse", "HEAD"),
        "package_dirty": bool(status),
        "package_changes": status.splitlines()[:20],
    }


def machine() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        mem_kb = int(
            next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1]
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = None
    return {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cores_logical": os.cpu_count(),
        "cores_usable": affinity,
        "mem_total_mb": round(mem_kb / 1024) if mem_kb else None,
        "os": platform.platform(),
        "hostname": platform.node(),
    }


def run_record(argv: list[str]) -> dict:
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).as_posix(), *argv]),
        "cwd": os.getcwd(),
        "machine": machine(),
        "versions": versions(),
        "git": git_state(),
        "loadavg_start": loadavg(),
    }


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 15.0) -> dict:
    """Wait until the 1-minute load average is <= max_load (0: don't wait). Returns what happened."""
    t0 = time.time()
    if max_load <= 0:
        return {"max_load": None, "waited_s": 0.0, "reached": None, "loadavg": loadavg()}
    while True:
        la = loadavg()
        if la and la[0] <= max_load:
            return {"max_load": max_load, "waited_s": round(time.time() - t0, 1), "reached": True, "loadavg": la}
        if time.time() - t0 >= timeout_s:
            return {"max_load": max_load, "waited_s": round(time.time() - t0, 1), "reached": False, "loadavg": la}
        print(f"waiting for load <= {max_load}: now {la}", flush=True)
        time.sleep(poll_s)


def stats(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def timed_process(cmd: list[str], cwd: str | None = None, env: dict | None = None) -> dict:
    """Run `cmd` (cmd[0] an absolute path) to exit: wall seconds from fork to reap and peak RSS (wait4).

    The fork/exec/wait4 happens in bench/_spawn.py, a small helper process, so the child's
    ru_maxrss does not inherit this (large) process's RSS. stdout/stderr go to temporary files.
    Returns {"wall_s", "maxrss_mb", "user_s", "sys_s", "returncode", "stdout", "stderr"}.
    """
    import tempfile

    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as td:
        res_path = os.path.join(td, "r.json")
        helper = [sys.executable, "-I", "-S", str(BENCH_DIR / "_spawn.py"), res_path, *cmd]
        subprocess.run(helper, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, check=False)
        out.seek(0)
        err.seek(0)
        stdout = out.read(200_000).decode(errors="replace")
        stderr = err.read(20_000).decode(errors="replace")
        try:
            with open(res_path) as f:
                r = json.load(f)
        except (OSError, ValueError):
            raise RuntimeError(f"spawn helper failed: {stderr.strip()[-400:]}") from None
    return {
        "wall_s": r["wall_s"],
        "maxrss_mb": r["maxrss_kb"] / 1024.0,  # Linux: KiB
        "user_s": r["user_s"],
        "sys_s": r["sys_s"],
        "returncode": r["returncode"],
        "stdout": stdout,
        "stderr": stderr,
    }


def test_images(data: Path, split: str = "test") -> list[tuple[str, int]]:
    """(path, label) for data/split/{NORMAL,PNEUMONIA}/*, sorted; label 1 = PNEUMONIA."""
    out = []
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted(
            f for f in glob.glob(str(data / split / cls / "*")) if f.lower().endswith((".jpeg", ".jpg", ".png"))
        )
        out.extend((f, label) for f in files)
    return out


def load_manifest_json(models: Path) -> dict:
    return json.loads((models / "manifest.json").read_text())


def artifact_file(manifest: dict, name: str) -> str | None:
    for a in manifest.get("artifacts", []):
        if a.get("name") == name:
            return a.get("file")
    return None


def upscale_images(sources: list[str], out_dir: Path, size: int, quality: int = 95) -> list[str]:
    """Write INTER_CUBIC upscales of `sources` (same channel count as the source) into out_dir."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, src in enumerate(sources):
        img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise RuntimeError(f"{src}: cannot decode")
        big = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        parent = Path(src).parent.name
        dst = out_dir / parent / f"{i:04d}_{Path(src).stem}.jpeg"
        dst.parent.mkdir(exist_ok=True)
        if not cv2.imwrite(str(dst), big, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise RuntimeError(f"{dst}: cannot write")
        written.append(str(dst))
    return written


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def fmt(v, digits: int = 3, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def intensity_flags(manifest: dict) -> list[str]:
    """The minimal scripts' flags for the manifest's intensity step, so every row computes the same thing."""
    pp = manifest.get("preprocessing", {})
    if pp.get("intensity") == "equalize":
        return ["--equalize"]
    if pp.get("intensity") == "clahe":
        c = pp.get("clahe", {"clip_limit": 2.0, "tile_grid": [4, 4]})
        return [f"--clahe={c['clip_limit']},{c['tile_grid'][0]}"]
    return []


def apply_intensity(x, flags: list[str]):
    """The same step in-process (for the plain-loop row)."""
    import cv2

    for flag in flags:
        if flag == "--equalize":
            x = cv2.equalizeHist(x)
        elif flag.startswith("--clahe="):
            clip, tiles = flag.split("=", 1)[1].split(",")
            x = cv2.createCLAHE(float(clip), (int(tiles), int(tiles))).apply(x)
    return x
