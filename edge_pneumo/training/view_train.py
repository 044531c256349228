"""`edge-pneumo train-view`: fit, validate and ship the view check into an exported/ folder.

Steps: decode and augment the images (`view_data`), source-held-out folds and the limit
(`view_fit`), the final fit on everything, ONNX float32 and int8 export, the int8 model
checked against the float one (a miss refuses the export), then the files and the manifest's
`view_check` section written. Only that section and the view files change: the pneumonia
artifacts, the guard section and the parameter file are left as they are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo.device.manifest import load_manifest, sha256_of, write_manifest
from edge_pneumo.device.probe_inputs import verify_inputs
from edge_pneumo.device.runtime import open_backend
from edge_pneumo.device.view_check import SECTION
from edge_pneumo.errors import ValidationError
from edge_pneumo.training import view_data as vd
from edge_pneumo.training import view_fit as vf

FILES = {
    "view_float32": ("view_float32.onnx", "float32"),
    "view_int8": ("view_int8.onnx", "int8"),
    # for devices whose pneumonia artifact runs on LiteRT: no onnxruntime import (~0.15 s) just for this
    "view_float32_tflite": ("view_float32.tflite", "float32"),
}
# float32 by default: on a model this small int8 QDQ runs slower in onnxruntime (0.21 vs 0.11 ms per
# image, bench/RESULTS_guard.md) and saves 33 KB; the int8 file ships, verified, for devices that prefer it.
DEFAULT_VIEW_ARTIFACT = "view_float32"
CALIBRATION_INPUTS = 600
MIN_DECISION_AGREEMENT = 0.995  # int8 vs float32, refuse/accept at the limit, on every image as it is


@dataclass
class ViewConfig:
    data: Path  # the Kermany chest_xray folder (train/ only is used)
    non_cxr: Path
    adult: Path
    out: Path  # an exported/ folder with a manifest
    folds: int = vf.FOLDS
    epochs: int = vf.EPOCHS
    seed: int = 0
    hemithoraces: int = vf.HEMITHORACES


def collect(cfg: ViewConfig) -> list[vd.ViewImage]:
    adults = [a for a in vd.adult_films(cfg.adult) if not a.path.name.startswith("Fake_")]  # a re-tagged copy
    return vd.kermany_train(cfg.data) + adults + vd.dev_set(cfg.non_cxr)


def run_view_training(cfg: ViewConfig, log: Callable[[str], None] = print) -> dict:
    manifest = load_manifest(cfg.out)
    pre = manifest.preprocessing
    t0 = time.time()
    images, grey = vd.load_work(collect(cfg))
    if cfg.hemithoraces:
        images, grey = vd.with_hemithoraces(images, grey, cfg.hemithoraces, cfg.seed)
    copies = [vf.COPIES.get(v.category, vf.COPIES["negative"]) for v in images]
    x, src = vd.augmented_pool(grey, copies, pre, cfg.seed)
    pools = vf.Pools(x, src, np.stack([vd.model_input(g, pre) for g in grey]))
    log(f"{len(images)} images, {len(x)} inputs with augmentations ({time.time() - t0:.0f} s)")
    others = guard_verdicts(cfg.out, images)
    log(f"the guard's other layers refuse {sum(others.values())} of {len(others)} non-chest images")
    held_out = vf.cross_validate(images, pools, cfg.folds, cfg.seed, log, cfg.epochs)
    y = np.array([v.positive for v in images])
    limit = vf.limit_from(held_out[y])
    log(f"limit: refuse below {limit:.3f} ({vf.LIMIT_RULE})")
    log(f"final fit on all {len(x)} inputs")
    model = vf.fit_model(x, y[src], vf.weights(images, src), cfg.seed, cfg.epochs)
    float_logits = vf.predict_logits(model, pools.clean)

    scratch = Path(tempfile.mkdtemp(prefix=".view-", dir=cfg.out))
    try:
        entries = export_view(model, pre.size, pools, verify_inputs(pre)[..., 0], float_logits, limit, scratch, cfg)
        section = {
            "what": "a tiny CNN (independent of the pneumonia model's weights): is the image a frontal chest "
            "radiograph? Output: a logit; refused below refuse_below",
            "input": {
                "size": pre.size,
                "from": "the manifest's preprocessing (resize, CLAHE), first channel, after the guard's re-inversion",
            },
            "refuse_below": round(limit, 4),
            "rule": vf.LIMIT_RULE,
            "default_artifact": DEFAULT_VIEW_ARTIFACT,
            "artifacts": entries,
            "held_out": held_out_summary(images, held_out, limit, others),
            "fit": {
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "images": {c: int(sum(v.category == c for v in images)) for c in sorted({v.category for v in images})},
                "inputs": int(len(x)),
                "augmented_copies": vf.COPIES,
                "folds": cfg.folds,
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "hemithoraces": cfg.hemithoraces,
                "data": "positives: Kermany train/ (never test/) and the adult films; negatives: non_cxr/ (all "
                "categories, spine_with_chest included as a negative) and hemithoraces cut from Kermany train/ films",
            },
        }
        for e in entries:
            os.replace(scratch / e["file"], cfg.out / e["file"])
        raw = load_manifest(cfg.out).raw  # re-read: only our section changes
        raw[SECTION] = section
        write_manifest(cfg.out, raw)
        return section
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def guard_verdicts(folder: Path, images) -> dict[str, bool]:
    """Whether the guard's other layers (DICOM header, pixels, the model's features) refuse each
    non-chest image, with the view check off: they never saw these images."""
    from edge_pneumo.device.classifier import Classifier

    clf = Classifier.load(folder)
    clf.view_check = None
    negatives = [v.path for v in images if not v.positive and v.category != vd.SYNTHETIC]
    return {str(r.path): r.status != "classified" for r in clf.predict_many(negatives)}


def held_out_summary(images, logits: np.ndarray, limit: float, others: dict[str, bool]) -> dict:
    """Per category: images; how many the held-out view models refuse; for non-chest images, how
    many the whole guard refuses (view check or another layer) and which it lets through."""
    out = {}
    for c in sorted({v.category for v in images}):
        idx = [i for i, v in enumerate(images) if v.category == c]
        positive = images[idx[0]].positive
        refused = [i for i in idx if logits[i] < limit]
        row = {"n": len(idx), "refused": len(refused), "positive": bool(positive)}
        if positive:
            row["refused_files"] = [images[i].path.name for i in refused[:20]]
        else:
            through = [i for i in idx if logits[i] >= limit and not others.get(str(images[i].path), False)]
            row["refused_by_guard"] = len(idx) - len(through)
            row["let_through"] = [f"{images[i].path.name} (view {logits[i]:.1f})" for i in through]
        out[c] = row
    return out


def export_view(model, size, pools, probe, float_logits, limit, scratch: Path, cfg) -> list[dict]:
    """Both ONNX files into scratch, each checked on every image as it is; the entries for the manifest."""
    float_path = scratch / FILES["view_float32"][0]
    _onnx_float(model, size, float_path)
    rng = np.random.default_rng(cfg.seed)
    calib = pools.x[rng.choice(len(pools.x), min(CALIBRATION_INPUTS, len(pools.x)), replace=False)]
    _onnx_int8(float_path, calib, scratch / FILES["view_int8"][0], scratch)
    _tflite_float(model, size, scratch / FILES["view_float32_tflite"][0])
    entries, failures = [], []
    for name, (file, precision) in FILES.items():
        path = scratch / file
        backend = open_backend(path, threads=1)
        got = backend.run(pools.clean[..., None], ("probability",)).probability
        agree = float(np.mean((got < limit) == (float_logits < limit)))
        dmax = float(np.max(np.abs(got - float_logits)))
        budget = 1.0 if precision == "float32" else MIN_DECISION_AGREEMENT
        tol = 1e-3 if precision == "float32" else None
        passed = agree >= budget and (tol is None or dmax <= tol)
        if not passed:
            failures.append(f"{name}: decision agreement {agree:.4f} (needs {budget}), max|dlogit| {dmax:.3g}")
        entries.append(
            {
                "name": name,
                "file": file,
                "runtime": "tflite" if file.endswith(".tflite") else "onnx",
                "precision": precision,
                "size_bytes": path.stat().st_size,
                "sha256": sha256_of(path),
                "validation": {
                    "images": int(len(got)),
                    "against": "the Keras float model, every image as it is (positives and negatives)",
                    "decision_agreement": round(agree, 5),
                    "max_abs_dlogit": round(dmax, 5),
                    "budget": {"min_decision_agreement": budget, "max_abs_dlogit": tol},
                    "passed": passed,
                },
                "verify_outputs": [
                    round(float(v), 5) for v in backend.run(probe[..., None], ("probability",)).probability
                ],
            }
        )
    if failures:
        raise ValidationError("view check export refused, nothing was written: " + "; ".join(failures))
    return entries


def _onnx_float(model, size: int, path: Path) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec([None, size, size, 1], tf.float32, name="image")]

    @tf.function(input_signature=spec)
    def serve(image):
        return model(image, training=False)

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=17, output_path=str(path))
    m = onnx.load(str(path))
    old_in, old_out = m.graph.input[0].name, m.graph.output[0].name
    for node in m.graph.node:
        node.input[:] = ["image" if n == old_in else n for n in node.input]
        node.output[:] = ["frontal_chest_logit" if n == old_out else n for n in node.output]
    m.graph.input[0].name, m.graph.output[0].name = "image", "frontal_chest_logit"
    for io in (m.graph.input[0], m.graph.output[0]):
        io.type.tensor_type.shape.dim[0].dim_param = "batch"
    m.doc_string = "edge-pneumo view check: logit that the image is a frontal chest radiograph"
    m.graph.doc_string = ""
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _tflite_float(model, size: int, path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = [tf.TensorSpec([None, size, size, 1], tf.float32, name="image")]

    @tf.function(input_signature=spec)
    def serve(image):
        return model(image, training=False)

    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())


def _onnx_int8(float_path: Path, calib: np.ndarray, path: Path, scratch: Path) -> None:
    """Static QDQ, per-channel weights; reduce_range keeps U8S8 kernels from saturating on
    CPUs without VNNI (AVX2 only)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i : i + 32, ..., None].astype(np.float32) for i in range(0, len(calib), 32))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    prepared = scratch / "view.pre.onnx"
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink(missing_ok=True)
