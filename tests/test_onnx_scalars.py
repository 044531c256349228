"""onnx_scalars: the one-value constants onnxruntime applies slowly are handed to it at rank 2, and
the outputs stay the very same bits (issue 27: the view model's `image * 1/255` was 64 % of its time)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from edge_pneumo.device.onnx_scalars import widened_scalars
from edge_pneumo.device.runtime import OnnxBackend

SHIPPED = REPO / "exported"
RESCALE = "view_cnn_1/rescaling_5_1/Cast/x:0"  # Keras's Rescaling(1/255) in the view model


def _plain_session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def test_the_view_model_s_rescaling_constants_are_found():
    got = widened_scalars((SHIPPED / "view_float32.onnx").read_bytes())
    assert RESCALE in got and got[RESCALE].shape == (1, 1) and got[RESCALE].dtype == np.float32
    assert got[RESCALE][0, 0] == np.float32(1 / 255)


@pytest.mark.parametrize("name", ["view_float32.onnx", "pneumonia_float32.onnx", "pneumonia_int8.onnx"])
def test_every_output_is_bit_for_bit_what_the_plain_session_gives(name):
    path = SHIPPED / name
    backend, plain = OnnxBackend(path, 1), _plain_session(path)
    shape = [8, *plain.get_inputs()[0].shape[1:]]
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    fetch = [o.name for o in plain.get_outputs()]
    want = plain.run(fetch, {plain.get_inputs()[0].name: x.astype(np.float32)})
    got = backend.session.run(fetch, {plain.get_inputs()[0].name: x.astype(np.float32)})
    for a, b in zip(want, got):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_anything_that_is_not_a_model_gets_no_overrides():
    for junk in (b"", b"\x00" * 10, b"\xff" * 64, b"not a model at all", (SHIPPED / "manifest.json").read_bytes()):
        assert widened_scalars(junk) == {}


def _model(nodes, inputs, initializers):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()],
    )
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_constant_is_left_alone_when_a_use_needs_its_shape():
    helper = pytest.importorskip("onnx.helper")  # the train extra: builds the small models
    scalar = {"c": np.float32(0.5)}
    # rank 4 input, a chain of elementwise ops: widened
    chain = _model(
        [helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Add", ["t", "c"], ["y"])],
        [("x", ["n", 4, 4, 1])],
        scalar,
    )
    assert set(widened_scalars(chain)) == {"c"}
    # the other operand has rank 1: a (1, 1) constant would make the output rank 2
    assert widened_scalars(_model([helper.make_node("Mul", ["x", "c"], ["y"])], [("x", ["n"])], scalar)) == {}
    # unknown rank (the output of a non-elementwise op)
    relu = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "c"], ["y"])]
    assert widened_scalars(_model(relu, [("x", ["n", 4])], scalar)) == {}
    # also used where the shape is the point
    both = [helper.make_node("Mul", ["x", "c"], ["t"]), helper.make_node("Concat", ["t", "c"], ["y"], axis=0)]
    assert widened_scalars(_model(both, [("x", ["n", 4])], scalar)) == {}
    # more than one value, or not a float: never
    many = {"c": np.float32([0.5, 2.0])}
    assert widened_scalars(_model([helper.make_node("Mul", ["x", "c"], ["y"])], [("x", ["n", 4])], many)) == {}
