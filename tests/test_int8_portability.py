"""The int8 ONNX artifact must give the same outputs on every CPU of the fleet.

onnxruntime runs a QDQ model through fused integer kernels (QLinearConv, QGemm). With int8
weights (U8S8) its x86 kernels without VNNI (AVX2, AVX-512 without VNNI) use VPMADDUBSW, whose
16-bit pair sums saturate, so outputs depend on the CPU; a VNNI CPU sums exactly. With graph
optimizations off, the same file runs as DequantizeLinear -> float op -> QuantizeLinear: the exact
integer arithmetic, whatever the CPU. An artifact that is portable gives the same outputs both ways
on this machine (the shipped U8S8 file missed by 0.27 on an AVX2-only CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.probe_inputs import verify_inputs

SHIPPED = REPO / "exported"
ONE_STEP = 1 / 255  # the probability output is uint8-quantized: one step of it


def _probabilities(path: Path, x: np.ndarray, fused: bool) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if fused else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return s.run(["pneumonia"], {"image": x.astype(np.float32)})[0][:, 0]


def _fused_vs_exact(folder: Path) -> float:
    m = load_manifest(folder)
    x = verify_inputs(m.preprocessing)
    path = folder / m.artifacts["onnx_int8"].file
    return float(np.abs(_probabilities(path, x, True) - _probabilities(path, x, False)).max())


def test_shipped_int8_onnx_gives_its_exact_integer_outputs_on_this_cpu():
    assert _fused_vs_exact(SHIPPED) <= ONE_STEP


def test_shipped_int8_onnx_records_a_saturation_free_quantization():
    entry = load_manifest(SHIPPED).artifacts["onnx_int8"].raw
    q = entry["quantization"]
    assert q["activation_type"] == "QUInt8" and q["quant_format"] == "QDQ"
    assert q["weight_type"] == "QUInt8" or q["reduce_range"], q  # no 8-bit int8 weights (U8S8 saturates)
    assert "VNNI" in q["why"]
    # recorded at export from the exact integer arithmetic: this CPU reproduces them
    x = verify_inputs(load_manifest(SHIPPED).preprocessing)
    exact = _probabilities(SHIPPED / entry["file"], x, False)
    assert np.abs(exact - np.array(entry["verify_outputs"])).max() <= 1e-6


@pytest.mark.slow
def test_a_fresh_int8_onnx_export_is_portable(tiny_export):
    assert _fused_vs_exact(tiny_export) <= ONE_STEP
    q = json.loads((tiny_export / "manifest.json").read_text())
    (entry,) = [e for e in q["artifacts"] if e["name"] == "onnx_int8"]
    assert entry["quantization"]["weight_type"] == "QUInt8"
