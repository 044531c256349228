"""Scalar operands onnxruntime multiplies slowly, and the same values in a shape it handles fast.

onnxruntime's CPU Mul, Add, Sub and Div take ~12 ns per element when one operand is a one-value
constant of rank 0 or 1 (measured with 1.32 on x86-64: 51 us for one 64 x 64 image), against
~0.3 ns when that constant has rank 2 or more. Keras exports its Rescaling layer as exactly such
a scalar: `image * (1/255)` cost 64 % of the view model's time and ~150 us an image in the float32
pneumonia model. The same value as a (1, 1) tensor gives the same products and sums, bit for bit
(IEEE multiplication and addition of the same two numbers), and the same output shape whenever
the other operand has rank >= 2. `widened_scalars(model_bytes)` finds those constants; the backend
hands them to onnxruntime as initializer overrides (SessionOptions.add_initializer), so the model
file, and its sha256, stay as shipped.

A minimal protobuf reader (the `onnx` package is not a device dependency): top-level nodes,
initializers and graph inputs only. A model with subgraphs (If, Loop, Scan), external data or
anything unexpected gets no overrides: the plain session, as before.
"""

from __future__ import annotations

import numpy as np

ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div"})  # broadcast binary ops: out rank = max(in ranks)
_FLOAT = 1  # TensorProto.FLOAT
_ELEMENTWISE_TAGS = tuple(b"\x22\x03" + op.encode() for op in sorted(ELEMENTWISE))  # NodeProto.op_type, 3 bytes


class _Unsupported(Exception):
    pass


def _varint(b: bytes, i: int) -> tuple[int, int]:
    c = b[i]
    if c < 0x80:  # one byte: tags, lengths and small numbers, nearly every varint of a model
        return c, i + 1
    shift = value = 0
    while True:
        if i >= len(b):
            raise _Unsupported("truncated varint")
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, i
        shift += 7


def _fields(b: bytes, start: int, end: int):
    """(field number, wire type, value): an int for varints, (start, end) for length-delimited fields."""
    i = start
    while i < end:
        key = b[i]
        i += 1
        if key >= 0x80:
            key, i = _varint(b, i - 1)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n = b[i]
            i += 1
            if n >= 0x80:
                n, i = _varint(b, i - 1)
            value = (i, i + n)
            i += n
        elif wire == 0:
            value, i = _varint(b, i)
        elif wire == 5:
            value = (i, i + 4)
            i += 4
        elif wire == 1:
            value = (i, i + 8)
            i += 8
        else:
            raise _Unsupported(f"wire type {wire}")
        if i > end:
            raise _Unsupported("field runs past its message")
        yield field, wire, value


def _text(b: bytes, span: tuple[int, int]) -> str:
    return b[span[0] : span[1]].decode("utf-8")


def _node(b: bytes, s: int, e: int) -> tuple[str, str, list[str], list[str]]:
    op, domain, ins, outs = "", "", [], []
    for f, w, v in _fields(b, s, e):
        if f == 1 and w == 2:
            ins.append(_text(b, v))
        elif f == 2 and w == 2:
            outs.append(_text(b, v))
        elif f == 4 and w == 2:
            op = _text(b, v)
        elif f == 7 and w == 2:
            domain = _text(b, v)
        elif f == 5 and w == 2:
            for af, aw, _ in _fields(b, *v):
                if af in (6, 11) and aw == 2:  # AttributeProto.g / .graphs: a subgraph
                    raise _Unsupported("a node with a subgraph")
    return op, domain, ins, outs


def _tensor(b: bytes, s: int, e: int) -> tuple[str, list[int], int, np.ndarray | None]:
    """(name, dims, data type, the value as float32 when it is one float)."""
    name, dims, dtype, raw, floats = "", [], 0, None, []  # raw, floats: spans (a weight is not copied)
    for f, w, v in _fields(b, s, e):
        if f == 1 and w == 0:
            dims.append(v)
        elif f == 1 and w == 2:  # packed dims
            i = v[0]
            while i < v[1]:
                d, i = _varint(b, i)
                dims.append(d)
        elif f == 2 and w == 0:
            dtype = v
        elif f == 8 and w == 2:
            name = _text(b, v)
        elif f == 9 and w == 2:
            raw = v
        elif f == 4:  # float_data, packed or not
            floats.append(v)
        elif f in (13, 14):  # external data
            raise _Unsupported("external data")
    spans = [raw] if raw is not None else floats
    value = None
    if dtype == _FLOAT and sum(e - s for s, e in spans) == 4:
        value = np.frombuffer(b"".join(b[s:e] for s, e in spans), "<f4").astype(np.float32)
    return name, dims, dtype, value


def _rank(b: bytes, s: int, e: int) -> tuple[str, int | None]:
    """A graph input's name and rank (None: no shape recorded)."""
    name, rank = "", None
    for f, w, v in _fields(b, s, e):
        if f == 1 and w == 2:
            name = _text(b, v)
        elif f == 2 and w == 2:  # TypeProto
            for tf, tw, tv in _fields(b, *v):
                if tf == 1 and tw == 2:  # tensor_type
                    for ttf, ttw, ttv in _fields(b, *tv):
                        if ttf == 2 and ttw == 2:  # shape
                            rank = sum(1 for df, _, _ in _fields(b, *ttv) if df == 1)
    return name, rank


def widened_scalars(model: bytes) -> dict[str, np.ndarray]:
    """Initializer overrides for an ONNX model (its bytes, or an mmap of its file: only the graph's
    structure is read): {name: the same float32 value, shape (1, 1)} for each one-value float
    constant of rank 0 or 1 whose every use is Mul/Add/Sub/Div with an operand of rank >= 2 (so no
    output changes shape or value). {} when there is none or the model is not one this reader follows."""
    try:
        return _widened(model)
    except (_Unsupported, UnicodeDecodeError, IndexError, ValueError):
        return {}


def _widened(b: bytes) -> dict[str, np.ndarray]:
    graph = next((v for f, w, v in _fields(b, 0, len(b)) if f == 7 and w == 2), None)
    if graph is None:
        return {}
    node_spans, scalars, ranks, graph_io = [], {}, {}, set()
    for f, w, v in _fields(b, *graph):
        if w != 2:
            continue
        if f == 1:
            node_spans.append(v)
        elif f == 5:
            name, dims, dtype, value = _tensor(b, *v)
            ranks[name] = len(dims)
            if value is not None and len(dims) <= 1:
                scalars[name] = value
        elif f == 11:
            name, rank = _rank(b, *v)
            graph_io.add(name)
            if rank is not None:
                ranks.setdefault(name, rank)
        elif f == 12:
            graph_io.add(_rank(b, *v)[0])
        elif f == 15:
            raise _Unsupported("sparse initializers")
    ok = {name: True for name in scalars if name not in graph_io}
    # Only the nodes that may matter are parsed (a model has hundreds): those whose bytes hold a
    # candidate's name (its users, subgraphs included: _node refuses those) or an elementwise op type
    # (the ranks they pass on). A false match only costs a parse; a node without either cannot
    # use a candidate.
    for s, e in node_spans:
        if not ok:
            break
        names = [n for n in ok if b.find(n.encode(), s, e) >= 0]
        if not names and not any(b.find(tag, s, e) >= 0 for tag in _ELEMENTWISE_TAGS):
            continue
        op, domain, ins, outs = _node(b, s, e)
        binary = op in ELEMENTWISE and domain in ("", "ai.onnx") and len(ins) == 2
        if binary and all(i in ranks for i in ins) and len(outs) == 1:
            ranks[outs[0]] = max(ranks[ins[0]], ranks[ins[1]])
        for k, name in enumerate(ins):
            if name in ok and not (binary and ranks.get(ins[1 - k], 0) >= 2):
                del ok[name]  # a use that needs its shape: left as it is
    return {name: scalars[name].reshape(1, 1) for name in ok}
