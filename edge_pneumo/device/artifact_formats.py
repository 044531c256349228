"""The one table of export formats, and the one table of per-precision tolerances.

Argument checks, export, validation, the runner's backend choice and the comparison
all read these registries, by name, never by position. `TOLERANCES` holds every limit an
artifact of one precision must keep: export's budget, verify's reproduction limit and
compare's targets; `float32_reference` is the one rule for the artifact others are compared with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True)
class Budget:
    """How close an artifact must stay to the float Keras model on real images."""

    max_abs_dp: float | None = None  # max |delta probability|, for float artifacts
    min_agreement: float | None = None  # fraction of images with the same predicted class

    def __post_init__(self) -> None:
        if self.max_abs_dp is None and self.min_agreement is None:
            raise ValueError("a budget needs max_abs_dp or min_agreement")


@dataclass(frozen=True)
class CompareTarget:
    """`compare`'s deployment target, against the reference row on a labelled set."""

    rule: str  # the words in the report
    min_agreement: float
    max_abs_dp: float | None = None
    max_accuracy_gap: float | None = None  # |accuracy - the reference's|
    max_auc_gap: float | None = None

    def passed(self, metrics: dict, reference: dict) -> bool:
        gap = lambda key: abs(metrics[key] - reference[key])
        return (
            metrics["agreement"] >= self.min_agreement
            and (self.max_abs_dp is None or metrics["max_abs_dp"] <= self.max_abs_dp)
            and (self.max_accuracy_gap is None or gap("accuracy") <= self.max_accuracy_gap)
            and (self.max_auc_gap is None or gap("auc") <= self.max_auc_gap)
        )


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact of one precision may stray, at each place it is checked."""

    budget: Budget  # export: against the float Keras model on held-out training images
    reproduce: float  # verify: max |dp| from the outputs recorded at export (another CPU or runtime build)
    compare: CompareTarget  # compare: against the reference on a labelled set


INT8_TOLERANCE = Tolerance(
    Budget(min_agreement=0.98),
    reproduce=2 / 255,
    compare=CompareTarget(
        "accuracy within 1 pp, AUC within 0.01, agreement >= 98%",
        min_agreement=0.98,
        max_accuracy_gap=0.01,
        max_auc_gap=0.01,
    ),
)
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(
        Budget(max_abs_dp=1e-5),
        reproduce=1e-4,
        compare=CompareTarget("agreement 100%, max|dp| <= 1e-4", min_agreement=1.0, max_abs_dp=1e-4),
    ),
    "float16": Tolerance(
        Budget(max_abs_dp=5e-3), reproduce=1e-3, compare=CompareTarget("agreement >= 99%", min_agreement=0.99)
    ),
    "dynamic_int8": INT8_TOLERANCE,
    "int8": INT8_TOLERANCE,
}
# verify: on its synthetic inputs an artifact's max |dp| against the reference may reach this many
# times the export budget (which was measured on real images) before it fails.
VERIFY_BUDGET_FACTOR = 10


@dataclass(frozen=True)
class ExportFormat:
    name: str
    runtime: str  # "onnx" (onnxruntime) or "tflite" (ai-edge-litert)
    precision: str  # one of TOLERANCES: float32, float16, dynamic_int8, int8
    file: str
    needs_calibration: bool = False
    device: bool = False  # shipped in exported/ for devices
    description: str = ""

    @property
    def suffix(self) -> str:
        return "." + self.file.rsplit(".", 1)[1]

    @property
    def budget(self) -> Budget:
        return TOLERANCES[self.precision].budget


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx_float32",
            "onnx",
            "float32",
            "pneumonia_float32.onnx",
            device=True,
            description="tf2onnx from a tf.function; the reference when TensorFlow is absent",
        ),
        ExportFormat(
            "onnx_int8",
            "onnx",
            "int8",
            "pneumonia_int8.onnx",
            needs_calibration=True,
            device=True,
            description="static QDQ, per-channel weights, calibrated on training images",
        ),
        ExportFormat(
            "onnx_dynamic_int8",
            "onnx",
            "dynamic_int8",
            "pneumonia_dynamic_int8.onnx",
            description="int8 weights, activations quantized at run time",
        ),
        ExportFormat("tflite_float32", "tflite", "float32", "pneumonia_float32.tflite"),
        ExportFormat(
            "tflite_float16",
            "tflite",
            "float16",
            "pneumonia_float16.tflite",
            description="float16 weights, float32 compute",
        ),
        ExportFormat(
            "tflite_dynamic_int8",
            "tflite",
            "dynamic_int8",
            "pneumonia_dynamic_int8.tflite",
            description="dynamic-range quantization: int8 weights",
        ),
        ExportFormat(
            "tflite_int8",
            "tflite",
            "int8",
            "pneumonia_int8.tflite",
            needs_calibration=True,
            device=True,
            description="full integer, uint8 input and output",
        ),
    )
}
DEFAULT_ARTIFACT = "onnx_int8"
PRESETS = {"all": tuple(FORMATS), "device": tuple(n for n, f in FORMATS.items() if f.device)}


def resolve_formats(names: list[str] | tuple[str, ...]) -> list[ExportFormat]:
    """Format names or presets ("all", "device") -> formats, in registry order. ValueError if unknown."""
    wanted: set[str] = set()
    for raw in names:
        for name in filter(None, (n.strip() for n in raw.split(","))):
            if name in PRESETS:
                wanted.update(PRESETS[name])
            elif name in FORMATS:
                wanted.add(name)
            else:
                raise ValueError(f"unknown format '{name}'; choose from {', '.join([*PRESETS, *FORMATS])}")
    if not wanted:
        raise ValueError("no format given")
    return [f for n, f in FORMATS.items() if n in wanted]


class _Artifact(Protocol):
    runtime: str
    precision: str


A = TypeVar("A", bound=_Artifact)


def float32_reference(artifacts: Iterable[A]) -> A | None:
    """The float32 artifact others are compared with: ONNX first (its runtime is in the base
    install), then TFLite. Takes manifest entries, export formats or compare rows alike."""
    candidates = [a for a in artifacts if a.precision == "float32"]
    for runtime in ("onnx", "tflite"):
        for a in candidates:
            if a.runtime == runtime:
                return a
    return None
