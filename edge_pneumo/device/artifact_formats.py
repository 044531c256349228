"""The one table of export formats.

Argument checks, export, validation, the runner's backend choice and the comparison
all read this registry, by name, never by position.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_pneumo.device.runtime import RUNTIME_BY_SUFFIX  # noqa: F401  (re-exported; the runtime owns it and never imports this module)


@dataclass(frozen=True)
class Budget:
    """How close an artifact must stay to the float Keras model on real images."""

    max_abs_dp: float | None = None  # max |delta probability|, for float artifacts
    min_agreement: float | None = None  # fraction of images with the same predicted class

    def __post_init__(self) -> None:
        if self.max_abs_dp is None and self.min_agreement is None:
            raise ValueError("a budget needs max_abs_dp or min_agreement")


@dataclass(frozen=True)
class ExportFormat:
    name: str
    runtime: str  # "onnx" (onnxruntime) or "tflite" (ai-edge-litert)
    precision: str  # float32, float16, dynamic_int8, int8
    file: str
    budget: Budget
    needs_calibration: bool = False
    device: bool = False  # shipped in exported/ for devices
    description: str = ""

    @property
    def suffix(self) -> str:
        return "." + self.file.rsplit(".", 1)[1]


FLOAT32_BUDGET = Budget(max_abs_dp=1e-5)
FLOAT16_BUDGET = Budget(max_abs_dp=5e-3)
INT8_BUDGET = Budget(min_agreement=0.98)

FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "onnx_float32",
            "onnx",
            "float32",
            "pneumonia_float32.onnx",
            FLOAT32_BUDGET,
            device=True,
            description="tf2onnx from a tf.function; the reference when TensorFlow is absent",
        ),
        ExportFormat(
            "onnx_int8",
            "onnx",
            "int8",
            "pneumonia_int8.onnx",
            INT8_BUDGET,
            needs_calibration=True,
            device=True,
            description="static QDQ, per-channel weights, calibrated on training images",
        ),
        ExportFormat(
            "onnx_dynamic_int8",
            "onnx",
            "dynamic_int8",
            "pneumonia_dynamic_int8.onnx",
            INT8_BUDGET,
            description="int8 weights, activations quantized at run time",
        ),
        ExportFormat("tflite_float32", "tflite", "float32", "pneumonia_float32.tflite", FLOAT32_BUDGET),
        ExportFormat(
            "tflite_float16",
            "tflite",
            "float16",
            "pneumonia_float16.tflite",
            FLOAT16_BUDGET,
            description="float16 weights, float32 compute",
        ),
        ExportFormat(
            "tflite_dynamic_int8",
            "tflite",
            "dynamic_int8",
            "pneumonia_dynamic_int8.tflite",
            INT8_BUDGET,
            description="dynamic-range quantization: int8 weights",
        ),
        ExportFormat(
            "tflite_int8",
            "tflite",
            "int8",
            "pneumonia_int8.tflite",
            INT8_BUDGET,
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
