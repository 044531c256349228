"""`edge-pneumo export`: Keras model -> TFLite and ONNX artifacts, each validated against
the float model on real images, described in manifest.json.

All artifacts are written and validated in a scratch folder inside `out`; only when every
one is within its budget are they moved into place and the manifest rewritten. A failure
leaves `out` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo import __version__
from edge_pneumo.device.artifact_formats import DEFAULT_ARTIFACT, ExportFormat, float32_reference
from edge_pneumo.device.guard import feature_distance
from edge_pneumo.device.manifest import SCHEMA_VERSION, sha256_of, write_manifest, write_params
from edge_pneumo.device.probe_inputs import verify_inputs
from edge_pneumo.device.runtime import open_backend
from edge_pneumo.errors import EdgePneumoError, ValidationError
from edge_pneumo.lab.dataset import discover, find_split, load_images, patient_split, selection_split, stratified_sample
from edge_pneumo.lab.metrics import ONE_SE, agreement_stats
from edge_pneumo.training.fit import predict
from edge_pneumo.training.guard_fit import fit_feature_guard, fit_pixel_guard, pixel_stats
from edge_pneumo.training.head import Head, ModelSpec, cam_geometry, device_model, model_spec
from edge_pneumo.training.int8_calibration import CalibrationImages
from edge_pneumo.training.keras_io import KerasModel

ONNX_OPSET = 17
PARAMS_FILE = "pneumonia_params.f32"


@dataclass(frozen=True)
class ExportConfig:
    data: Path
    out: Path
    formats: tuple[ExportFormat, ...]
    calibration_images: int = 300
    validation_images: int = 400
    seed: int = 0
    val_fraction: float = 0.15
    budget_scale: float = 1.0  # < 1 tightens every budget (tests use it to prove enforcement)
    features_layer: str | None = None  # the layers the device reads; None: the run record's (head.model_spec)
    cam_layer: str | None = None
    view_check_from: Path | None = None  # an export folder whose view check (and its preprocessing) is copied


def _serving_function(model, input_shape, spec: ModelSpec):
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *input_shape], tf.float32, name="image")]
    deployed = device_model(model, spec)

    @tf.function(input_signature=signature)
    def serve(image):
        return tuple(deployed(image, training=False))

    return serve, signature


def _export_tflite(fmt: ExportFormat, km: KerasModel, spec: ModelSpec, calib: CalibrationImages, path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    serve, _ = _serving_function(km.model, km.preprocessing.input_shape, spec)
    # Frozen (variables as constants): the int8 calibrator cannot read resource variables.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if fmt.precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt.precision == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt.precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calib.representative_dataset()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # The model takes raw 0..255 pixels (Rescaling is inside), so the uint8 input comes out
        # with scale ~1 and zero point 0; the runner reads both from the model anyway.
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    path.write_bytes(converter.convert())


def _export_onnx_float(km: KerasModel, spec: ModelSpec, path: Path) -> None:
    import tf2onnx

    # tf2onnx.convert.from_keras fails on Keras 3 models; a tf.function with a signature works.
    serve, signature = _serving_function(km.model, km.preprocessing.input_shape, spec)
    tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET, output_path=str(path))
    _name_onnx_io(path, _onnx_doc(spec))


ONNX_OUTPUT_NAMES = {"probability": "pneumonia", "features": "features", "conv": "conv_features"}
# The seed's own words (a re-export of the shipped model keeps its bytes); others are described by their layers.
SEED_ONNX_DOC = "seed CNN, P(PNEUMONIA), Dense(128) features, pooled conv-2 activations"


def _onnx_doc(spec: ModelSpec) -> str:
    if spec.arch == "seed" and (spec.features_layer, spec.cam_layer) == ("dense", "pool2"):
        return SEED_ONNX_DOC
    return f"{spec.arch} CNN, P(PNEUMONIA), '{spec.features_layer}' features, '{spec.cam_layer}' activations"


def _name_onnx_io(path: Path, doc: str) -> None:
    """Stable, readable input/output names ("image", "pneumonia", "features", "conv_features")
    and no producer timestamp noise."""
    import onnx

    from edge_pneumo.device.runtime import output_kind

    m = onnx.load(str(path))
    renames = {m.graph.input[0].name: "image"}
    for out in m.graph.output:
        dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
        renames[out.name] = ONNX_OUTPUT_NAMES[output_kind(dims)]
    for node in m.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for io in (m.graph.input[0], *m.graph.output):
        io.name = renames[io.name]
        io.type.tensor_type.shape.dim[0].dim_param = "batch"  # tf2onnx numbers unknown dims from a global counter
    _canonical_names(m.graph)
    m.doc_string = f"edge-pneumo {__version__}: {doc}"
    m.graph.doc_string = ""  # tf2onnx puts per-conversion details here
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _canonical_names(graph) -> None:
    """Rename inner tensors, initializers and nodes by first use, in node order.

    tf2onnx names folded constants from Python set/dict order, so two exports of one model
    differ only in names; renaming by position makes the bytes reproducible.
    """
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    names: dict[str, str] = {}

    def canon(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for i, node in enumerate(graph.node):
        node.input[:] = [canon(n) for n in node.input]
        node.output[:] = [canon(n) for n in node.output]
        node.name = f"{node.op_type}_{i}"
    for init in graph.initializer:
        init.name = canon(init.name)
    inits = sorted(graph.initializer, key=lambda t: int(t.name[1:]) if t.name[1:].isdigit() else -1)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for vi in graph.value_info:
        vi.name = canon(vi.name)


def _export_onnx_quantized(
    fmt: ExportFormat, float_path: Path, calib: CalibrationImages, path: Path, scratch: Path
) -> None:
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = scratch / f"{path.stem}.pre.onnx"
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    if fmt.precision == "dynamic_int8":
        quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8)
    else:
        s = ONNX_STATIC_QUANTIZATION
        quantize_static(
            str(prepared),
            str(path),
            calib.onnx_reader("image"),
            quant_format=getattr(QuantFormat, s["quant_format"]),
            per_channel=s["per_channel"],
            activation_type=getattr(QuantType, s["activation_type"]),
            weight_type=getattr(QuantType, s["weight_type"]),
            reduce_range=s["reduce_range"],
        )
    prepared.unlink(missing_ok=True)


# Static int8 ONNX: uint8 activations AND uint8 (asymmetric, per-channel) weights, "U8U8".
# The usual U8S8 (int8 weights) runs on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI)
# through VPMADDUBSW, whose 16-bit pair sums saturate: the same file then gives other outputs
# than on a VNNI CPU (seen on the shipped model: max |dp| 0.39 on validation, verify drift 0.27).
# U8U8 widens to 16 bits before multiplying on every ISA, so the int32 sums are exact
# everywhere; it kept max |dp| 0.018 vs float on validation where reduce_range=True (7-bit
# int8 weights, also saturation-free) gave 0.021, at a small speed cost on AVX2.
ONNX_STATIC_QUANTIZATION = {
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QUInt8",
    "per_channel": True,
    "reduce_range": False,
    "why": "uint8 weights (U8U8): exact int32 accumulation on every CPU; int8 weights (U8S8) saturate in "
    "onnxruntime's AVX2/AVX-512 kernels without VNNI (VPMADDUBSW), so outputs depended on the CPU",
}


def _quantization_note(fmt: ExportFormat) -> dict:
    """How a static int8 ONNX artifact was quantized, for its manifest entry."""
    if fmt.runtime == "onnx" and fmt.precision == "int8":
        return {"quantization": dict(ONNX_STATIC_QUANTIZATION)}
    return {}


@dataclass
class ArtifactValidation:
    n: int
    agreement: float
    max_abs_dp: float
    mean_abs_dp: float
    accuracy: float
    reference_accuracy: float
    budget: dict
    passed: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 8) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    def summary(self) -> str:
        return (
            f"agreement {100 * self.agreement:.2f}%  max|dp| {self.max_abs_dp:.2e}  mean|dp| {self.mean_abs_dp:.2e}  "
            f"accuracy {self.accuracy:.4f} (float {self.reference_accuracy:.4f})"
        )


def validate_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    fmt: ExportFormat,
    budget_scale: float = 1.0,
) -> ArtifactValidation:
    """Compare an artifact's probabilities with the float model's on the same images (Optimum-style)."""
    if candidate.shape != reference.shape:
        raise ValidationError(
            f"{fmt.name}: output shape {candidate.shape} differs from the float model's {reference.shape}"
        )
    stats = agreement_stats(candidate, reference, threshold)
    agree = stats["agreement"]
    b = fmt.budget
    max_dp = None if b.max_abs_dp is None else b.max_abs_dp * budget_scale
    min_agree = None if b.min_agreement is None else 1.0 - (1.0 - b.min_agreement) * budget_scale
    passed = (max_dp is None or stats["max_abs_dp"] <= max_dp) and (min_agree is None or agree >= min_agree)
    return ArtifactValidation(
        n=int(len(reference)),
        agreement=agree,
        max_abs_dp=stats["max_abs_dp"],
        mean_abs_dp=stats["mean_abs_dp"],
        accuracy=float(np.mean((candidate >= threshold) == labels.astype(bool))),
        reference_accuracy=float(np.mean((reference >= threshold) == labels.astype(bool))),
        budget={"max_abs_dp": max_dp, "min_agreement": min_agree},
        passed=passed,
    )


def _tta_section(record: dict) -> dict:
    """The operating point `train` chose on validation for flip TTA (`infer --tta`), if it chose one."""
    tta = record.get("tta")
    if not tta:
        return {}
    c = tta["calibration"]
    return {
        "tta": {
            "views": tta["views"],
            "combine": tta["combine"],
            "threshold": tta["threshold"],
            "temperature": c["temperature"],
            "rule_out": c["rule_out"],
            "rule_in": c["rule_in"],
            "rule": "as `threshold` and `calibration`, on the same images (and shifted copies) scored with flip TTA",
        }
    }


def check_band(km: KerasModel, section: str, threshold: float, calibration: dict) -> None:
    """Refuse to ship a band that contradicts its threshold (rule_out < threshold < rule_in must hold)."""
    from edge_pneumo.device.scoring import BandError, ordered_band

    try:
        ordered_band(threshold, float(calibration["rule_out"]), float(calibration["rule_in"]), widen=False)
    except BandError as e:
        raise EdgePneumoError(
            f"{km.path}: the run record's {section} band is degenerate ({e}): it would call images PNEUMONIA "
            "below the rule-in point or rule them out above the threshold. Retrain with this version of "
            "`edge-pneumo train` (it fits an ordered band on the hardest population); nothing exported"
        ) from None


class _Inputs:
    """What every format of one export shares: images, the float model's reference outputs, the guard's fit."""

    def __init__(self, km: KerasModel, cfg: ExportConfig, head: Head, log: Callable[[str], None]):
        pre = km.preprocessing
        samples = discover(find_split(cfg.data, "train"))
        train_s, val_s = patient_split(samples, cfg.val_fraction, cfg.seed)
        self.calib = CalibrationImages(load_images(stratified_sample(train_s, cfg.calibration_images, cfg.seed), pre).x)
        self.check = load_images(stratified_sample(val_s, cfg.validation_images, cfg.seed), pre)
        log(
            f"calibration: {len(self.calib)} training images; validation: {len(self.check.y)} held-out images "
            "(patient-wise)"
        )
        self.reference = predict(km.model, self.check.x)
        # Before the slow part: the head must be what the device explains, on these very images.
        c = head.check(km.model, self.check.x, str(km.path))
        log(
            f"head: {head.form()}; max |dp| {c['max_abs_dp']:.1e} on {c['images']} validation images; "
            f"Grad-CAM grid {head.grid}"
        )
        self.head = head
        # The guard: pixel statistics of every training image, fitted on the `fit` part of the
        # training run's own selection split, thresholds on its held-out part.
        family = km.record.get("split", {}).get("holdout_family")
        fit_s, _ = selection_split(samples, cfg.val_fraction, cfg.seed, family)
        fit_set = set(fit_s)
        self.everything = load_images(samples, pre, skip_bad=True)
        self.fit_part = np.array([s in fit_set for s in self.everything.samples])
        self.pixel_section, self.arrays = fit_pixel_guard(pixel_stats(self.everything.samples, pre), self.fit_part)
        log(
            f"guard: {int(self.fit_part.sum())} fit / {int((~self.fit_part).sum())} held-out training images; "
            f"layout refuse > {self.pixel_section['layout']['refuse']:.3f}, "
            f"warn > {self.pixel_section['layout']['warn']:.3f}"
        )
        self.x_verify = verify_inputs(pre)
        self.shapes: dict = {}  # the outputs' shapes, as the first artifact gives them


def _check_calibration(km: KerasModel) -> dict:
    calibration = km.record.get("calibration")
    if not calibration:
        raise EdgePneumoError(
            f"{km.path}: its run record has no calibration (temperature, confidence band); "
            "retrain with this version of `edge-pneumo train`"
        )
    check_band(km, "calibration", km.threshold, calibration)
    if km.record.get("tta"):
        check_band(km, "tta", float(km.record["tta"]["threshold"]), km.record["tta"]["calibration"])
    return calibration


def _export_one(fmt, km: KerasModel, cfg: ExportConfig, inputs: _Inputs, scratch: Path, log) -> tuple[dict, list]:
    """Write one format into `scratch`, validate it against the float model, fit its feature guard
    and Grad-CAM weights (into `inputs.arrays`): its manifest entry and the budget misses."""
    t0 = time.time()
    path = scratch / fmt.file
    float_onnx = scratch / "float_reference.onnx"
    spec = inputs.head.spec
    if fmt.runtime == "tflite":
        _export_tflite(fmt, km, spec, inputs.calib, path)
    elif fmt.precision == "float32":
        _export_onnx_float(km, spec, path)
    else:
        if not float_onnx.exists():
            _export_onnx_float(km, spec, float_onnx)
        ref = float32_reference(f for f in cfg.formats if f.runtime == "onnx")
        src = scratch / ref.file if ref and (scratch / ref.file).exists() else float_onnx
        _export_onnx_quantized(fmt, src, inputs.calib, path, scratch)
    backend = open_backend(path, threads=2)
    check = inputs.check
    v = validate_outputs(inputs.reference, backend.predict(check.x), check.y, km.threshold, fmt, cfg.budget_scale)
    problems = (
        []
        if v.passed
        else [f"{fmt.name} (budget {v.budget}, got agreement {v.agreement:.4f}, max|dp| {v.max_abs_dp:.2e})"]
    )
    if backend.outputs != ("probability", "features", "conv"):
        problems.append(f"{fmt.name} (outputs {backend.outputs}, expected probability, features, conv)")
    out_v = backend.run(inputs.x_verify, ("probability", "features", "conv"))
    shapes = {"features": list(out_v.features.shape[1:]), "conv": list(out_v.conv.shape[1:])}
    if shapes != {"features": [inputs.head.k], "conv": list(inputs.head.grid)}:
        problems.append(f"{fmt.name} (output shapes {shapes}, the model's head reads {inputs.head.grid})")
    inputs.shapes = inputs.shapes or shapes
    log(
        f"{fmt.name:<20} {path.stat().st_size / 1e6:6.2f} MB  {v.summary()}  "
        f"[{'FAILED' if problems else 'ok'}] ({time.time() - t0:.1f} s)"
    )
    feats = _features(backend, inputs.everything.x)
    limits, farrays = fit_feature_guard(feats, inputs.fit_part)
    inputs.pixel_section["features"][fmt.name] = limits
    channel_weights, w2, source = _head_weights(fmt, path, inputs.head)
    inputs.arrays.update({f"{fmt.name}/{k}": a for k, a in farrays.items()})
    inputs.arrays[f"{fmt.name}/gradcam_channel_weights"] = channel_weights.astype(np.float32)
    inputs.arrays[f"{fmt.name}/head_w2"] = w2.astype(np.float32)
    entry = _artifact_entry(fmt, path, backend, v, km.preprocessing)
    entry["gradcam_weights"] = source
    entry["verify_feature_distances"] = [
        round(float(d), 4)
        for d in feature_distance(out_v.features, farrays["feature_mean"], farrays["feature_whitening"])
    ]
    return entry, problems


def _manifest(km: KerasModel, cfg: ExportConfig, inputs: _Inputs, calibration: dict, entries: list, params) -> dict:
    """The manifest of one export: the input contract, the calibration, the guard and every artifact."""
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    params_path, params_index = params
    source_sha = sha256_of(km.path)
    head = inputs.head
    spec = head.spec
    version_name = "seed-cnn" if spec.arch == "seed" else spec.arch
    made = str(km.record.get("created", ""))[:10] or datetime.now(timezone.utc).date().isoformat()
    model = {**spec.to_dict(), "head": head.to_dict()}
    if km.derived:
        model["derived_at_export"] = km.record["derived_at_export"]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": "chest X-ray classification: NORMAL vs PNEUMONIA",
        "model_version": f"{version_name}-{made}-{source_sha[:12]}",
        "model": model,
        "class_names": list(km.record.get("class_names", ["NORMAL", "PNEUMONIA"])),
        "output": "probability of class_names[1] (PNEUMONIA); PNEUMONIA when >= threshold",
        "outputs": _outputs_section(spec, inputs.shapes),
        "cam": cam_geometry(km.model, head),
        "threshold": km.threshold,
        "threshold_rule": km.record.get("threshold_rule", ""),
        "calibration": calibration,
        **_tta_section(km.record),
        "preprocessing": km.preprocessing.to_dict(),
        "guard": inputs.pixel_section,
        "params_file": {
            "file": PARAMS_FILE,
            "sha256": sha256_of(params_path),
            "arrays": params_index,
            "holds": "guard statistics (layout model, feature mean and whitening per artifact) and "
            "Grad-CAM head weights per artifact",
        },
        "default_artifact": DEFAULT_ARTIFACT
        if any(e["name"] == DEFAULT_ARTIFACT for e in entries)
        else entries[0]["name"],
        "source_model": {
            "file": km.path.name,
            "sha256": source_sha,
            "test_metrics": km.record.get("test"),
            "validation_metrics": km.record.get("validation"),
        },
        "validation_data": {
            "images": int(len(inputs.check.y)),
            "calibration_images": len(inputs.calib),
            "source": "patient-wise validation split of train/ (never calibration images)",
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
        },
        "artifacts": entries,
        "versions": {
            "edge_pneumo": __version__,
            "tensorflow": tf.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnx": _onnx_version(),
        },
    }


def _outputs_section(spec: ModelSpec, shapes: dict) -> dict:
    """The three outputs, with the shapes the artifacts gave."""
    f, c = shapes["features"], shapes["conv"]
    return {
        "probability": "(batch, 1)",
        "features": f"(batch, {f[0]}): '{spec.features_layer}' activations, for the guard",
        "conv": f"(batch, {', '.join(map(str, c))}): '{spec.cam_layer}' activations, for Grad-CAM",
    }


def derive_operating_point(km: KerasModel, inputs: _Inputs, log: Callable[[str], None] = print) -> KerasModel:
    """For a model without a run record: the threshold, temperature and band a record would give, fitted
    on the export's own patient-wise validation images of train/ (no shifted copies), and said so."""
    import dataclasses

    from edge_pneumo.lab.metrics import best_threshold, hardest_population_calibration

    y, p, n = inputs.check.y, inputs.reference, len(inputs.check.y)
    threshold = best_threshold(y, p, ONE_SE)
    c = hardest_population_calibration(y, p, {}, threshold)
    c["rule"] = (
        f"derived at export: temperature min NLL, rule-out sensitivity >= 0.97, rule-in specificity >= 0.95 on "
        f"the {n} patient-wise validation images of train/ (no shifted copies), then rule_out < threshold < rule_in"
    )
    rule = f"derived at export: max balanced accuracy on the {n} validation images, ties within one SE toward 0.5"
    derived = {
        "preprocessing": f"input size {km.preprocessing.size} from the model's input shape; intensity "
        f"'{km.preprocessing.intensity}' from --intensity",
        "threshold": rule,
        "calibration": c["rule"],
        "why": f"{km.path.name} has no run record",
    }
    record = {"threshold": threshold, "threshold_rule": rule, "calibration": c, "derived_at_export": derived}
    log(f"derived at export: threshold {threshold:.4f}, band [{c['rule_out']:.4f}, {c['rule_in']:.4f})")
    return dataclasses.replace(km, record=record, threshold=threshold)


def export_all(km: KerasModel, cfg: ExportConfig, log: Callable[[str], None] = print) -> dict:
    """Export, validate, fit the guard, then publish atomically. Raises ValidationError if any
    artifact misses its budget."""
    head = Head.read(km.model, model_spec(km, cfg.features_layer, cfg.cam_layer), str(km.path))
    calibration = None if km.derived else _check_calibration(km)
    inputs = _Inputs(km, cfg, head, log)
    if km.derived:
        km = derive_operating_point(km, inputs, log)
        calibration = _check_calibration(km)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if not os.access(cfg.out, os.W_OK):
        raise EdgePneumoError(f"{cfg.out}: output folder is not writable")
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=cfg.out))
    try:
        entries, failures = [], []
        for fmt in cfg.formats:
            entry, problems = _export_one(fmt, km, cfg, inputs, scratch, log)
            entries.append(entry)
            failures += problems
        if failures:
            raise ValidationError("export refused, nothing was written: " + "; ".join(failures))
        params_path = scratch / PARAMS_FILE
        params_index = write_params(params_path, inputs.arrays)
        manifest = _manifest(km, cfg, inputs, calibration, entries, (params_path, params_index))
        for e in entries:
            os.replace(scratch / e["file"], cfg.out / e["file"])
        os.replace(params_path, cfg.out / PARAMS_FILE)
        if cfg.view_check_from is not None:
            attach_view_check(cfg.view_check_from, cfg.out, manifest, log)
        else:
            _keep_view_check(cfg.out, manifest, log)
        write_manifest(cfg.out, manifest)
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _features(backend, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([backend.run(x[i : i + batch]).features for i in range(0, len(x), batch)])


WEIGHTS_FROM_ARTIFACT = "dequantised from the artifact"


def _head_weights(fmt: ExportFormat, path: Path, head: Head) -> tuple[np.ndarray, np.ndarray, str]:
    """(Grad-CAM channel weights, w2, where they come from) as this artifact holds them: dequantised
    int8 for the int8 artifacts, so the explanation comes from the weights that made the decision.
    Where the artifact's head weights cannot be found, the float model's, and the manifest says so."""
    if fmt.precision != "int8":
        return head.channel_weights, head.w2, "the float model's"
    wanted = {"w2": (head.k, 1)}
    if head.kind == "dense":
        wanted["w1"] = tuple(head.w1.shape)
    found = _onnx_int8_head(path, wanted) if fmt.runtime == "onnx" else _tflite_int8_head(path, wanted)
    if found is None:
        return head.channel_weights, head.w2, "the float model's: the artifact's head weights were not found"
    from_artifact = head.channel_weights_from(found.get("w1"))
    if from_artifact is None:  # an "affine" head: its channel weights mix layers the artifact fused
        return head.channel_weights, found["w2"][:, 0], "w2 dequantised from the artifact, channel weights the float's"
    return from_artifact, found["w2"][:, 0], WEIGHTS_FROM_ARTIFACT


def _onnx_int8_head(path: Path, wanted: dict) -> dict | None:
    """{name: dequantised (rows, cols) weight} for the 2-D initializers of the `wanted` shapes, or None."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    found = {}
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        q = inits[node.input[0]]
        if q.ndim != 2:
            continue
        scale = inits[node.input[1]]
        zero = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.zeros_like(scale)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis] = -1
        w = (q.astype(np.float32) - zero.reshape(shape).astype(np.float32)) * scale.reshape(shape).astype(np.float32)
        for target, want in wanted.items():
            if tuple(w.shape) == tuple(want):
                found[target] = w
    return found if set(found) == set(wanted) else None


def _tflite_int8_head(path: Path, wanted: dict) -> dict | None:
    """As `_onnx_int8_head`, from a full-integer TFLite file (its FullyConnected weights are (cols, rows))."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without XNNPACK (it repacks weights and frees the originals); two runs on different
    # inputs tell the constant weights from the activations of the same shape.
    it = Interpreter(
        model_path=str(path),
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    it.allocate_tensors()
    by_shape = {tuple(reversed(shape)): name for name, shape in wanted.items()}
    inp = it.get_input_details()[0]
    candidates = [
        d for d in it.get_tensor_details() if d["dtype"] == np.int8 and tuple(int(v) for v in d["shape"]) in by_shape
    ]
    runs = []
    for fill in (0, 200):
        it.set_tensor(inp["index"], np.full(inp["shape"], fill, inp["dtype"]))
        it.invoke()
        runs.append({d["index"]: it.get_tensor(d["index"]).copy() for d in candidates})
    found = {}
    for d in candidates:
        q = runs[0][d["index"]]
        if not np.array_equal(q, runs[1][d["index"]]):
            continue  # an activation
        qp = d["quantization_parameters"]
        scales, zeros = np.asarray(qp["scales"], np.float32), np.asarray(qp["zero_points"], np.float32)
        q = q.astype(np.float32)
        w = (
            (q - zeros[:, None]) * scales[:, None]
            if scales.size > 1
            else (q - float(zeros.ravel()[0] if zeros.size else 0)) * float(scales.ravel()[0])
        )
        found[by_shape[tuple(q.shape)]] = w.T
    return found if set(found) == set(wanted) else None


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def _artifact_entry(fmt: ExportFormat, path: Path, backend, v: ArtifactValidation, pre) -> dict:
    return {
        "name": fmt.name,
        "file": fmt.file,
        "runtime": fmt.runtime,
        "precision": fmt.precision,
        "description": fmt.description,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "input": backend.describe_input(),
        "output": backend.describe_output(),
        "validation": v.to_dict(),
        # What this artifact outputs for `edge-pneumo verify`'s fixed inputs, checked again on the device.
        "verify_outputs": [round(float(p), 7) for p in backend.predict(verify_inputs(pre))],
        **_quantization_note(fmt),
    }


def _keep_view_check(out: Path, manifest: dict, log: Callable[[str], None] = print) -> None:
    """The view check does not depend on the pneumonia model's weights: a re-export keeps the
    folder's section (`edge-pneumo train-view`) when its files are still there and it was fitted
    on the same preprocessing (it reads the model's input: another size or intensity is not its input)."""
    from edge_pneumo import jsonout
    from edge_pneumo.device.view_check import SECTION

    try:
        previous = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    old = previous.get(SECTION)
    if not old or not all((out / e["file"]).is_file() for e in old.get("artifacts", [])):
        return
    own = (old.get("input") or {}).get("preprocessing")  # a check with its own input keeps it
    if own is None and previous.get("preprocessing") != json.loads(jsonout.dumps(manifest["preprocessing"])):
        log(f"{out}: the view check was fitted on another preprocessing; dropped (run `edge-pneumo train-view`)")
        return
    manifest[SECTION] = old


def attach_view_check(source: Path, out: Path, manifest: dict, log: Callable[[str], None] = print) -> None:
    """Copy `source`'s view check (its files, unchanged, and its manifest section) into this export,
    recording the preprocessing it was fitted on: the Classifier makes its input through that, not
    through this model's (device/view_check.py). Files are checked against their sha256 first."""
    from edge_pneumo.device.manifest import MANIFEST_NAME
    from edge_pneumo.device.view_check import SECTION, check_file

    try:
        src = json.loads((Path(source) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EdgePneumoError(f"{source}: no readable {MANIFEST_NAME} to take the view check from ({e})") from None
    section = src.get(SECTION)
    if not section:
        raise EdgePneumoError(f"{source}: its manifest has no {SECTION} section; run `edge-pneumo train-view` there")
    section = json.loads(json.dumps(section))
    for entry in section["artifacts"]:
        check_file(Path(source) / entry["file"], entry["sha256"])
        if Path(source).resolve() != Path(out).resolve():
            shutil.copyfile(Path(source) / entry["file"], out / entry["file"])
    own = (section.get("input") or {}).get("preprocessing") or src["preprocessing"]
    section["input"] = {
        "size": int(own["size"]),
        "preprocessing": own,
        "from": "the decoded image through this preprocessing (the one the check was fitted on), first channel, "
        "after the guard's re-inversion",
    }
    section["copied_from"] = {"folder": Path(source).name, "model_version": src.get("model_version")}
    manifest[SECTION] = section
    log(f"view check: copied from {source} ({len(section['artifacts'])} files, its own {own['size']} px input)")


def remake_artifacts(km: KerasModel, cfg: ExportConfig, log: Callable[[str], None] = print) -> dict:
    """Re-make only `cfg.formats` in an existing export folder of the same model, keeping every
    other artifact, its manifest entry and its guard / Grad-CAM parameters as they are.

    The formats are exported and validated by `export_all` into a scratch folder inside `out`
    (same calibration and validation images, same budgets); then their files, manifest entries,
    feature-guard limits and parameter arrays replace the old ones. A failure leaves `out` as it was.
    """
    from edge_pneumo.device.manifest import MANIFEST_NAME, read_params

    old_path = cfg.out / MANIFEST_NAME
    if not old_path.is_file():
        raise EdgePneumoError(f"{cfg.out}: no {MANIFEST_NAME} to update; run a full `edge-pneumo export` first")
    old = json.loads(old_path.read_text(encoding="utf-8"))
    source_sha = sha256_of(km.path)
    if old["source_model"]["sha256"] != source_sha:
        raise EdgePneumoError(
            f"{old_path}: its artifacts come from another model ({old['source_model']['sha256'][:12]}..., "
            f"not {source_sha[:12]}...); re-export every format instead"
        )
    scratch = Path(tempfile.mkdtemp(prefix=".remake-", dir=cfg.out))
    try:
        export_all(km, ExportConfig(**{**cfg.__dict__, "out": scratch}), log=log)
        new = json.loads((scratch / MANIFEST_NAME).read_text(encoding="utf-8"))  # as written, to compare like with like
        same = {k: new[k] == old[k] for k in ("preprocessing", "threshold", "calibration", "validation_data")}
        same["guard"] = {**new["guard"], "features": None} == {**old["guard"], "features": None}  # the pixel guard
        for key, ok in same.items():
            if not ok:
                raise EdgePneumoError(f"{old_path}: '{key}' differs from this export's; re-export every format instead")
        names = {e["name"] for e in new["artifacts"]}
        remade = datetime.now(timezone.utc).isoformat(timespec="seconds")
        fresh = {e["name"]: {**e, "remade": {"date": remade, "versions": new["versions"]}} for e in new["artifacts"]}
        entries = [fresh.pop(e["name"], e) for e in old["artifacts"]] + list(fresh.values())
        old_arrays = read_params(cfg.out / old["params_file"]["file"], old["params_file"]["arrays"])
        new_arrays = read_params(scratch / new["params_file"]["file"], new["params_file"]["arrays"])
        arrays = {k: a for k, a in old_arrays.items() if k.split("/")[0] not in names}
        arrays.update({k: a for k, a in new_arrays.items() if k.split("/")[0] in names})
        params_path = scratch / f".{PARAMS_FILE}.merged"
        index = write_params(params_path, arrays)
        manifest = dict(old)
        manifest["artifacts"] = entries
        manifest["guard"] = {**old["guard"], "features": {**old["guard"]["features"]}}
        for name in names:
            manifest["guard"]["features"][name] = new["guard"]["features"][name]
        manifest["params_file"] = {**old["params_file"], "sha256": sha256_of(params_path), "arrays": index}
        log(f"remade {', '.join(sorted(names))} in {cfg.out}; the other artifacts and their parameters are unchanged")
        for e in new["artifacts"]:
            os.replace(scratch / e["file"], cfg.out / e["file"])
        os.replace(params_path, cfg.out / old["params_file"]["file"])
        write_manifest(cfg.out, manifest)
        return manifest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
