"""Run an exported artifact: onnxruntime for .onnx, LiteRT for .tflite. Never TensorFlow.

A backend takes a batch of preprocessed uint8 images (n, h, w, c) and returns the
probability of PNEUMONIA for each; it converts to the artifact's own input type
(float32, or uint8/int8 with the scale and zero point read from the model).

Every exported artifact has three outputs, told apart by shape, whatever the architecture: the
probability (n, 1), the features the input guard measures (n, k), and the cam layer's activations
Grad-CAM weighs (n, h, w, c) (the seed CNN: Dense(128), and pooled conv-2 at 14 x 14 x 64; the
manifest's "model" and "outputs" say which layers). `run` returns the ones asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_pneumo.device.hash_cache import file_stamp
from edge_pneumo.errors import IntegrityError, MissingRuntimeError, ModelFileError

RUNTIME_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}
OUTPUT_KINDS = ("probability", "features", "conv")


def output_kind(shape) -> str | None:
    """Which output a tensor is, from its shape without the batch dimension."""
    dims = [d for d in list(shape)[1:]]
    if len(dims) == 1 and dims[0] == 1:
        return "probability"
    if len(dims) == 1:
        return "features"
    if len(dims) == 3:
        return "conv"
    return None


class Outputs:
    """probability (n,), features (n, k) or None, conv (n, h, w, c) or None."""

    __slots__ = ("probability", "features", "conv")

    def __init__(self, probability: np.ndarray, features: np.ndarray | None = None, conv: np.ndarray | None = None):
        self.probability, self.features, self.conv = probability, features, conv


class Backend(Protocol):
    runtime: str
    path: Path
    threads: int  # the cores one call may use
    outputs: tuple[str, ...]  # the output kinds this artifact has
    messages: list[str]  # what the runtime said while loading, for the caller to report

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def run(self, batch: np.ndarray, want: tuple[str, ...] = ("probability", "features")) -> Outputs: ...

    def describe_input(self) -> dict: ...

    def describe_output(self) -> dict: ...

    def for_worker(self) -> Backend: ...


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def open_backend(path: str | os.PathLike, threads: int | None = None) -> Backend:
    """The backend for an artifact, chosen by its suffix; ModelFileError if it is not a model."""
    path = Path(path)
    runtime = RUNTIME_BY_SUFFIX.get(path.suffix.lower())
    if runtime is None:
        raise ModelFileError(f"{path}: not a model file; expected .onnx or .tflite (or an exported/ folder)")
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    threads = threads or default_threads()
    return OnnxBackend(path, threads) if runtime == "onnx" else TfliteBackend(path, threads)


def _quantize(batch: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    if scale == 0:
        return batch.astype(dtype)
    if scale == 1.0 and zero_point == 0 and batch.dtype == dtype:
        return batch  # the shipped int8 TFLite takes raw uint8 pixels: nothing to convert
    info = np.iinfo(dtype)
    q = np.round(batch.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


class OnnxBackend:
    runtime = "onnx"
    messages: list[str] = []  # what the runtime said while loading (onnxruntime logs through its own API)

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        self.path, self.threads = path, threads
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Decoding threads run beside the model: threads that spin while waiting steal their core.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One-value constants onnxruntime applies ~40x slower at rank 0-1 (Keras's x * 1/255): the same
        # values at rank 2, bit for bit the same outputs (onnx_scalars.py). Kept: the session uses them.
        self._overrides = []
        for name, value in _scalar_overrides(path).items():
            self._overrides.append(ort.OrtValue.ortvalue_from_numpy(value))
            opts.add_initializer(name, self._overrides[-1])
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{path}: not a valid ONNX model ({first[:160]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: expected one input, found {len(inputs)}")
        self._input = inputs[0]
        self._outputs = {output_kind(o.shape): o for o in self.session.get_outputs()}
        if "probability" not in self._outputs:
            raise ModelFileError(f"{path}: no (batch, 1) probability output; not an edge-pneumo model")
        self.outputs = tuple(k for k in OUTPUT_KINDS if k in self._outputs)
        self._dtype = np.uint8 if self._input.type == "tensor(uint8)" else np.float32

    def describe_input(self) -> dict:
        return {"name": self._input.name, "shape": list(self._input.shape), "dtype": self._input.type}

    def describe_output(self) -> dict:
        o = self._outputs["probability"]
        return {"name": o.name, "shape": list(o.shape), "dtype": o.type, "outputs": list(self.outputs)}

    def run(self, batch: np.ndarray, want: tuple[str, ...] = ("probability", "features")) -> Outputs:
        kinds = [k for k in OUTPUT_KINDS if k in want and k in self._outputs]
        if "probability" not in kinds:
            kinds.insert(0, "probability")
        x = batch.astype(self._dtype, copy=False)
        got = self.session.run([self._outputs[k].name for k in kinds], {self._input.name: x})
        out = dict(zip(kinds, got))
        return Outputs(
            np.asarray(out["probability"], np.float32).reshape(len(batch), -1)[:, -1],
            out.get("features"),
            out.get("conv"),
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, ("probability",)).probability

    def for_worker(self) -> OnnxBackend:
        """A backend for one more thread of a folder run: this one. A session serves concurrent calls, and
        sharing it beat a one-thread session per thread (600 train images through `predict_many` with the
        API's defaults: 0.36 s and 113 MB against 0.41 s and 124 MB)."""
        return self


class TfliteBackend:
    runtime = "tflite"
    messages: list[str] = []

    def __init__(self, path: Path, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingRuntimeError(
                f"{path}: running .tflite models needs LiteRT: pip install 'edge-pneumo[tflite]' "
                "(or use an .onnx artifact)"
            ) from None
        self.path = path
        self._opened = _file_identity(path)  # what for_worker checks before opening the file again
        from edge_pneumo.decoders.stderr_capture import capture

        try:
            with capture() as said:  # LiteRT announces its XNNPACK delegate on fd 2
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
            # Its INFO line is noise; anything else it said is kept for the caller to report.
            self.messages = [line for line in said.lines if not line.startswith("INFO:")]
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{path}: not a valid TFLite model ({first[:160]})") from None
        self.threads = threads
        ins = self.interpreter.get_input_details()
        if len(ins) != 1:
            raise ModelFileError(f"{path}: expected one input, found {len(ins)}")
        self._in = ins[0]
        self._read_outputs()
        if "probability" not in self._outs:
            raise ModelFileError(f"{path}: no (batch, 1) probability output; not an edge-pneumo model")
        self.outputs = tuple(k for k in OUTPUT_KINDS if k in self._outs)
        self._batch = int(self._in["shape"][0])

    def for_worker(self) -> TfliteBackend:
        """A backend for one more thread of a folder run, computing on that thread alone: an interpreter
        runs one call at a time, so each thread has its own (the shipped int8 model at a batch of 32:
        ~8 MB of peak RSS each). The file is opened again only if it is the one this backend opened, unchanged
        (its sha256 was checked then): else IntegrityError, as for a tampered artifact."""
        if _file_identity(self.path) != self._opened:
            raise IntegrityError(
                f"{self.path}: the model file changed after it was loaded and checked; load the model again"
            )
        return TfliteBackend(self.path, 1)

    def _read_outputs(self) -> None:
        self._outs = {output_kind(d["shape_signature"]): d for d in self.interpreter.get_output_details()}

    def describe_input(self) -> dict:
        return _tensor_info(self._in)

    def describe_output(self) -> dict:
        return {**_tensor_info(self._outs["probability"]), "outputs": list(self.outputs)}

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = [n, *[int(v) for v in self._in["shape"][1:]]]
            self.interpreter.resize_tensor_input(self._in["index"], shape)
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()[0]
            self._read_outputs()
            self._batch = n

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch, ("probability",)).probability

    def run(self, batch: np.ndarray, want: tuple[str, ...] = ("probability", "features")) -> Outputs:
        self._resize(len(batch))
        dtype = np.dtype(self._in["dtype"])
        if dtype == np.float32:
            x = batch.astype(np.float32)
        else:
            scale, zero_point = self._in["quantization"]
            x = _quantize(batch, dtype, scale, zero_point)
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        out = {
            k: self._read(self._outs[k]) for k in OUTPUT_KINDS if k in self._outs and (k in want or k == "probability")
        }
        return Outputs(out["probability"].reshape(len(batch), -1)[:, -1], out.get("features"), out.get("conv"))

    def _read(self, detail: dict) -> np.ndarray:
        y = self.interpreter.get_tensor(detail["index"])
        if np.dtype(detail["dtype"]) != np.float32:
            scale, zero_point = detail["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return np.asarray(y, dtype=np.float32)


def _file_identity(path: Path) -> list[int] | None:
    """hash_cache.file_stamp, or None when the file cannot be read."""
    try:
        return file_stamp(path)
    except OSError:
        return None


def _scalar_overrides(path: Path) -> dict:
    """onnx_scalars.widened_scalars of the file, read through a memory map (only the graph's structure
    is touched, not the weights: ~0.6 ms for the int8 model, nothing left resident); {} when it cannot
    be read here (the session then says why)."""
    import mmap

    from edge_pneumo.device.onnx_scalars import widened_scalars

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return widened_scalars(m)
    except (OSError, ValueError):  # ValueError: an empty file
        return {}


def _tensor_info(d: dict) -> dict:
    info = {"name": d["name"], "shape": [int(v) for v in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name}
    scale, zero_point = d["quantization"]
    if scale:
        info["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return info
