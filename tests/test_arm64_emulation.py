"""The base package on a 64-bit Raspberry Pi, emulated: Debian bookworm arm64 +
Python 3.11 under qemu-user (tests/arm64/pi_emulation.sh).

Opt-in, because it needs root and takes minutes: CI sets EDGE_PNEUMO_ARM64=1.
The script installs the wheel built from this checkout, with the [tflite] extra,
into a fresh arm64 venv, runs `edge-pneumo infer` on real test X-rays there and
on the host, and writes the per-image results. This test re-reads those results
and checks the numbers itself instead of trusting the script's verdict.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "arm64" / "pi_emulation.sh"
N_IMAGES = 40
# The same artifact, run on arm64 and x86_64, may differ only by float rounding
# (float32) or by one quantization step of the uint8 output (int8).
TOLERANCE = {"float32": 1e-4, "int8": 1 / 255}
EXPECTED = {("onnx", "int8"), ("onnx", "float32"), ("tflite", "int8")}
TIMEOUT_S = 45 * 60  # a fresh rootfs takes ~10 min on 2 cores; leave room for slow mirrors

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("EDGE_PNEUMO_ARM64") != "1",
        reason="arm64 (Raspberry Pi) emulation test is opt-in: set EDGE_PNEUMO_ARM64=1 "
        "(needs root, qemu-user-static, debootstrap, network to Debian and PyPI, ~10 min fresh)",
    ),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0,
        reason="arm64 emulation test needs root (debootstrap, chroot, mounts)",
    ),
]


def _host_bin() -> str:
    """The edge-pneumo of the interpreter running pytest, unless the env says otherwise."""
    if os.environ.get("EDGE_PNEUMO_HOST_BIN"):
        return os.environ["EDGE_PNEUMO_HOST_BIN"]
    beside = Path(sys.executable).parent / "edge-pneumo"
    if beside.exists():
        return str(beside)
    found = shutil.which("edge-pneumo")
    if found is None:
        pytest.fail("no host edge-pneumo: install the package or set EDGE_PNEUMO_HOST_BIN")
    return found


def _records(path: str) -> dict[str, dict]:
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_name = {Path(r["path"]).name: r for r in recs}
    assert len(by_name) == len(recs), f"duplicate image names in {path}"
    return by_name


@pytest.fixture(scope="module")
def pi_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pi")
    summary = out / "summary.json"
    env = dict(os.environ, EDGE_PNEUMO_HOST_BIN=_host_bin(), EDGE_PNEUMO_PI_IMAGES=str(N_IMAGES))
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--summary", str(summary)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: the script's trap unmounts the chroot's /proc, /dev, ...
        log, _ = proc.communicate(timeout=120)
        pytest.fail(f"pi_emulation.sh took over {TIMEOUT_S} s:\n{log[-6000:]}")
    print(log[log.rfind("=== [compare]") :])  # the per-artifact table (shown with -s or -rA)
    assert proc.returncode == 0, f"pi_emulation.sh exited {proc.returncode}:\n{log[-6000:]}"
    assert summary.exists(), f"no summary written:\n{log[-6000:]}"
    return json.loads(summary.read_text())


def test_runs_on_arm64_python311_without_tensorflow(pi_run):
    arm = pi_run["arm64"]
    assert arm["machine"] == "aarch64"
    assert arm["python"].startswith("3.11.")
    assert arm["tensorflow_importable"] is False
    assert not [p for p in arm["packages"] if p.lower().startswith(("tensorflow", "keras"))]
    versions = arm["versions"]
    for dist in (
        "edge-pneumo",
        "numpy",
        "opencv-python-headless",
        "onnxruntime",
        "ai-edge-litert",
        "simplejpeg",
        "starlette",
        "uvicorn",
    ):
        assert versions.get(dist), f"{dist} not installed in the arm64 venv"
    major, minor = (int(x) for x in versions["onnxruntime"].split(".")[:2])
    assert (major, minor) >= (1, 22), "onnxruntime < 1.22 crashes on a Pi 4 (Illegal instruction)"


def test_arm64_matches_host_per_image(pi_run):
    arts = {(a["format"], a["precision"]): a for a in pi_run["artifacts"]}
    assert EXPECTED <= arts.keys(), f"artifacts tested: {sorted(arts)}"
    for key in sorted(EXPECTED):
        art = arts[key]
        assert art["rc_arm64"] == 0 and art["rc_host"] == 0, art.get("problems")
        pi, host = _records(art["results_arm64"]), _records(art["results_host"])
        assert len(pi) == len(host) == N_IMAGES, (key, len(pi), len(host))
        assert pi.keys() == host.keys(), key
        assert {r["status"] for r in pi.values()} == {"classified"}, key  # real test X-rays pass the guard
        labels = {r["label"] for r in pi.values()}
        assert labels <= {"NORMAL", "PNEUMONIA"}, labels
        mismatched = [n for n in pi if pi[n]["label"] != host[n]["label"]]
        assert mismatched == [], f"{key}: labels differ on {mismatched}"
        dp = max(abs(float(pi[n]["raw_probability"]) - float(host[n]["raw_probability"])) for n in pi)
        assert dp <= TOLERANCE[key[1]], f"{key}: max |dp| {dp:.3g} > {TOLERANCE[key[1]]:.3g}"
        # The script's own numbers must agree with what we just recomputed.
        assert art["ok"] and art["label_mismatches"] == []
        assert art["max_abs_dp"] == pytest.approx(dp, abs=1e-12)
    assert pi_run["ok"] is True


def test_heatmap_and_serve_on_arm64(pi_run):
    """Grad-CAM on the emulated Pi gives the host's map (int8 tolerance); the serve extra answers /healthz."""
    maps = {a["name"]: a.get("heatmap_max_abs_diff") for a in pi_run["artifacts"] if a["precision"] == "int8"}
    assert maps and all(d is not None and d <= 0.02 for d in maps.values()), maps
    assert pi_run["serve"]["ok"] and pi_run["serve"]["healthz"]["status"] == "ok"


def test_dicom_sr_on_arm64(pi_run):
    """The dicom extra installs on the Pi: a CR film is classified there and answered with a DICOM SR."""
    sr = pi_run["sr"]
    assert sr["ok"] and sr["status"] == "classified" and sr["sr_sop_instance_uid"].startswith("2.25."), sr


def test_site_calibration_on_arm64(pi_run):
    """`calibrate` runs on the Pi (base install, no TensorFlow) and fits what the host fits within int8
    tolerance; `infer --site` there stamps every row with the site file's hash."""
    site = pi_run["site"]
    assert site["ok"], site["problems"]
    c = site["calibration_arm64"]
    assert c["rule_out"] < c["threshold"] < c["rule_in"]


SMALL_MANIFEST = Path(__file__).resolve().parents[1] / "exported" / "small" / "manifest.json"


@pytest.mark.skipif(
    not SMALL_MANIFEST.exists(),
    reason="the small tier is not exported yet (no exported/small/manifest.json): nothing to run as --model small",
)
def test_small_tier_by_name_on_arm64(pi_run):
    """`infer --model small` finds the wheel's exported/small/ on the Pi and gives the host's labels (one NORMAL
    and one PNEUMONIA test image: the tier's wiring and arithmetic on arm64, at a few seconds of CI time)."""
    small = pi_run["small"]
    assert small["ran"] and small["ok"], small
    pi, host = _records(small["results_arm64"]), _records(small["results_host"])
    assert len(pi) == 2 and pi.keys() == host.keys()
    assert {r["status"] for r in pi.values()} == {"classified"}, pi
    assert {r["model_version"] for r in pi.values()} == {json.loads(SMALL_MANIFEST.read_text())["model_version"]}
    assert [pi[n]["label"] for n in sorted(pi)] == [host[n]["label"] for n in sorted(pi)]
    dp = max(abs(float(pi[n]["raw_probability"]) - float(host[n]["raw_probability"])) for n in pi)
    assert dp <= small["tolerance"], f"max |dp| {dp:.3g} > {small['tolerance']:.3g}"
