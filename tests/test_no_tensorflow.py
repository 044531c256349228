"""The runtime never imports TensorFlow: infer, verify and the Python API run with it blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
from conftest import synthetic_xray

BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc

    class BlockTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx"):
                raise ImportError(f"{name} is blocked: the runtime must not import it")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    """
)


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_infer_end_to_end_with_tensorflow_blocked(tiny_export, tmp_path):
    img = tmp_path / "x.jpeg"
    cv2.imwrite(str(img), cv2.resize(synthetic_xray(np.random.default_rng(0), 1, 96), (180, 200)))
    code = f"""
    import sys
    from typer.testing import CliRunner
    from edge_pneumo.apps.cli import app
    r = CliRunner().invoke(app, ["infer", "--model", {str(tiny_export)!r}, "--format", "json", {str(img)!r}])
    print(r.stdout, end="")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["verify", {str(tiny_export)!r}, "--runs", "2"])
    assert r.exit_code == 0, r.output
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf2onnx"))
    assert not loaded, loaded
    """
    p = _run(code, tmp_path)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["label"] in ("NORMAL", "PNEUMONIA") and 0.0 <= row["probability"] <= 1.0


def test_cli_help_does_not_import_heavy_libraries(tmp_path):
    code = """
    import sys
    from typer.testing import CliRunner
    from edge_pneumo.apps.cli import app
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    heavy = sorted(m for m in ("cv2", "onnxruntime", "numpy", "tensorflow") if m in sys.modules)
    assert not heavy, heavy
    """
    p = _run(code, tmp_path)
    assert p.returncode == 0, p.stderr


def test_one_image_fast_path_imports_neither_tensorflow_nor_typer(tiny_export, tmp_path):
    img = tmp_path / "x.jpeg"
    cv2.imwrite(str(img), cv2.resize(synthetic_xray(np.random.default_rng(0), 1, 96), (180, 200)))
    code = f"""
    import sys
    from edge_pneumo.apps.entry import main
    try:
        main(["infer", "--model", {str(tiny_export)!r}, "--format", "json", {str(img)!r}])
    except SystemExit as e:
        assert e.code == 0, e.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "typer", "click", "concurrent"))
    assert not heavy, heavy
    """
    p = _run(code, tmp_path)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["path"] == str(img) and row["label"] in ("NORMAL", "PNEUMONIA")


def test_output_cut_short_by_head_is_quiet(tiny_export, tmp_path):
    """`edge-pneumo infer --dir D --format json | head -1`: no traceback when the reader goes away."""
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(3)
    for i in range(300):
        cv2.imwrite(str(d / f"x{i:03d}.png"), synthetic_xray(rng, i % 2, 96))
    for entry_args in (["-m", "edge_pneumo"], ["-c", "from edge_pneumo.apps.cli import app; app()"]):
        cmd = [
            sys.executable,
            *entry_args,
            "infer",
            "--model",
            str(tiny_export),
            "--dir",
            str(d),
            "--format",
            "json",
            "--batch-size",
            "4",
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        first = p.stdout.readline()
        p.stdout.close()  # like head -1
        err = p.stderr.read()
        assert p.wait(timeout=120) == 141, err
        assert json.loads(first)["label"] in ("NORMAL", "PNEUMONIA")
        assert "Traceback" not in err and "BrokenPipe" not in err, err
