"""Run an exported artifact: onnxruntime for .onnx, LiteRT for .tflite. Never TensorFlow.

A backend takes a batch of preprocessed uint8 images (n, h, w, c) and returns the
probability of PNEUMONIA for each; it converts to the artifact's own input type
(float32, or uint8/int8 with the scale and zero point read from the model).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import MissingRuntimeError, ModelFileError
from .formats import RUNTIME_BY_SUFFIX


class Backend(Protocol):
    runtime: str
    path: Path

    def predict(self, batch: np.ndarray) -> np.ndarray: ...

    def describe_input(self) -> dict: ...

    def describe_output(self) -> dict: ...


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
    info = np.iinfo(dtype)
    q = np.round(batch.astype(np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


class OnnxBackend:
    runtime = "onnx"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        self.path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Decoding threads run beside the model: threads that spin while waiting steal their core.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{path}: not a valid ONNX model ({first[:160]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        self._dtype = np.uint8 if self._input.type == "tensor(uint8)" else np.float32

    def describe_input(self) -> dict:
        return {"name": self._input.name, "shape": list(self._input.shape), "dtype": self._input.type}

    def describe_output(self) -> dict:
        return {"name": self._output.name, "shape": list(self._output.shape), "dtype": self._output.type}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(self._dtype, copy=False)
        out = self.session.run([self._output.name], {self._input.name: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)[:, -1]


class TfliteBackend:
    runtime = "tflite"

    def __init__(self, path: Path, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingRuntimeError(
                f"{path}: running .tflite models needs LiteRT: pip install 'edge-pneumo[tflite]' "
                "(or use an .onnx artifact)"
            ) from None
        self.path = path
        from .preprocess import silenced_stderr

        try:
            with silenced_stderr():  # LiteRT announces its XNNPACK delegate on fd 2
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(f"{path}: not a valid TFLite model ({first[:160]})") from None
        ins, outs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output, found {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0], outs[0]
        self._batch = int(self._in["shape"][0])

    def describe_input(self) -> dict:
        return _tensor_info(self._in)

    def describe_output(self) -> dict:
        return _tensor_info(self._out)

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = [n, *[int(v) for v in self._in["shape"][1:]]]
            self.interpreter.resize_tensor_input(self._in["index"], shape)
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()[0]
            self._out = self.interpreter.get_output_details()[0]
            self._batch = n

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self._resize(len(batch))
        dtype = np.dtype(self._in["dtype"])
        if dtype == np.float32:
            x = batch.astype(np.float32)
        else:
            scale, zero_point = self._in["quantization"]
            x = _quantize(batch, dtype, scale, zero_point)
        self.interpreter.set_tensor(self._in["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])
        if np.dtype(self._out["dtype"]) != np.float32:
            scale, zero_point = self._out["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return np.asarray(y, dtype=np.float32).reshape(len(batch), -1)[:, -1]


def _tensor_info(d: dict) -> dict:
    info = {"name": d["name"], "shape": [int(v) for v in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name}
    scale, zero_point = d["quantization"]
    if scale:
        info["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return info
