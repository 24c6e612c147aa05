"""int8 encoders: GRU and RNN nodes that also run as Loops of integer matmuls, for batches.

onnxruntime has an integer kernel for LSTM (DynamicQuantizeLSTM) but none for GRU or RNN, so an
int8 graph ran those in float32 (their weights stored as int8, widened at load): at batch 64 the
small model's bidirectional GRU was 38% of its decoding time. Written out as a Loop over time steps
whose body multiplies the state by int8 weights with onnxruntime's DynamicQuantizeMatMul (the state
quantised to 8 bits on the fly), the same layer runs about 1.4x faster at batch 64. At batch 1 the
Loop's per-step overhead makes it about twice as slow as the fused node. So each node becomes

    If(batch >= min_batch, then: the Loop, else: the node itself)

and the graph has the fused node's speed for single inputs and the integer matmuls' for batches.
The Loop costs a fixed amount per time step and saves in proportion to the work per step, so
where it starts to win depends on the hidden size (`loop_min_batch`); a layer too small to gain
at the runtime's default batch of 64 keeps its node alone.
Both branches compute the layer's ONNX outputs: Y [S, directions, B, H] (zeros at padding) and
Y_h [directions, B, H] (forward: the state at each sequence's end; backward: at its start).

The Loop runs both directions in one body: step i is time i forward and time S-1-i backward, and a
row whose time is past its length keeps its state, so the backward direction starts at each
sequence's own end, as the node's `sequence_lens` makes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seq2edge.runtime.config import CELL_GATES

GATES = {cell.upper(): CELL_GATES[cell] for cell in ("gru", "rnn")}  # the ONNX ops rewritten, and their gate blocks
# Rewritten only as export/encoder_graph.py writes them: default activations, no initial state, no
# clip, sequence_lens given, torch's GRU variant. Any other node keeps its node.
_PLAIN_ATTRIBUTES = {"hidden_size", "direction", "linear_before_reset"}
INT64_MIN = np.iinfo(np.int64).min

# Measured by python -m seq2edge.bench.loop_crossover (one thread, this project's 2-core AMD EPYC with AVX-512 VNNI):
# the Loop beat a bidirectional GRU node from batch 12 at 128 units per direction, 32-48 at 64 units,
# 24 at 96, 8 at 192 and 256, and only from 128 at 32 units (unidirectional: about the same batches);
# an RNN node (one gate, and onnxruntime's RNN kernel is slow) from batch 12 at 64 units and 8 at 128.
# The node's work per step grows with hidden^2 and the Loop's overhead per step does not, hence:
_WINS_FROM_12_AT = {"GRU": 128, "RNN": 64}  # units per direction where the Loop wins from batch 12
_SMALLEST_MIN_BATCH = 12  # at 8, a 256-unit GRU on 8-token sources still lost (0.96x)
_LARGEST_MIN_BATCH = 64  # the runtime's default batch: a Loop that only wins above it is not kept

# Integer matmuls multiply 8-bit activations (0..255) by int8 weights. x86 CPUs without VNNI (AVX2,
# and AVX-512 without VNNI) add pairs of those products in 16 bits with saturation (vpmaddubsw), so
# weights up to 127 can overflow: 255 x 127 x 2 > 32767. Weights limited to 64 cannot
# (255 x 64 x 2 = 32640), and give the same sums on every CPU and in wasm: onnxruntime's
# reduce_range, which export.quantize asks quantize_dynamic for too.
INT8_WEIGHT_LIMIT = 64


def loop_min_batch(op: str, hidden: int) -> int | None:
    """The batch size from which the Loop runs a layer of `hidden` units per direction, or None
    where it would not win at the runtime's default batch (the node stays alone)."""
    batch = max(_SMALLEST_MIN_BATCH, math.ceil(12 * (_WINS_FROM_12_AT[op] / hidden) ** 2))
    return batch if batch <= _LARGEST_MIN_BATCH else None


def loop_recurrences_int8(model: onnx.ModelProto, min_batch: int | None = None) -> int:
    """Replace GRU and RNN nodes of a float32 graph's main graph by If(batch >= min_batch, Loop,
    node); min_batch None: each node's loop_min_batch, and a node it gives None keeps its node.
    The weights are stored once, as int8 with one scale per output unit: the Loop's integer
    matmuls (DynamicQuantizeMatMul) read them as they are, and the node reads them widened back to
    float32 by Cast and Mul, which onnxruntime folds into constants at load. Returns how many
    were replaced."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, replaced = [], 0
    for node in graph.node:
        layer = _layer(node, initializers)
        threshold = None if layer is None else min_batch or loop_min_batch(layer.op, layer.hidden)
        if threshold is None:
            nodes.append(node)
            continue
        added, constants = _if_node(node, layer, f"{node.name or node.output[0]}_loop", threshold)
        nodes += added
        graph.initializer.extend(constants)
        replaced += 1
    if not replaced:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in values_read(node)}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def values_read(node: onnx.NodeProto) -> Iterator[str]:
    """Every value `node` reads, in its subgraphs too."""
    yield from node.input
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            for inner in attribute.g.node:
                yield from values_read(inner)


class _Layer:
    """One recurrent node's weights as int8, one scale per output unit (column), laid out for the Loop."""

    def __init__(self, op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None, directions: int, hidden: int):
        self.op, self.directions, self.hidden = op, directions, hidden
        gates = GATES[op] * hidden
        b = np.zeros((directions, 2 * gates), np.float32) if b is None else b
        # x @ w_in -> [.., directions x gates]: every direction's input part in one matmul, with its bias
        self.w_in, w_in_scale = _int8_columns(np.concatenate([w[d].T for d in range(directions)], axis=1))
        self.w_in_scale = w_in_scale.reshape(-1)  # [D x gates]: one per column of a 2-D matrix
        self.b_in = np.concatenate([b[d, :gates] for d in range(directions)]).astype(np.float32)
        # [D, H, gates], scales [D, 1, gates]: one per output unit of each direction
        self.w_rec, self.w_rec_scale = _int8_columns(np.stack([r[d].T for d in range(directions)]))
        self.b_rec = b[:, None, gates:].astype(np.float32)  # [D, 1, gates]


def _int8_columns(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 within +-INT8_WEIGHT_LIMIT with one scale per column (the max over the
    reduced axis, -2): the Loop's integer matmuls read them, the fused node reads them widened."""
    limit = INT8_WEIGHT_LIMIT
    scale = np.maximum(np.abs(weights).max(axis=-2, keepdims=True), np.finfo(np.float32).tiny) / limit
    q = np.clip(np.rint(weights / scale), -limit, limit).astype(np.int8)
    return q, scale.astype(np.float32)


def _layer(node: onnx.NodeProto, initializers: dict) -> _Layer | None:
    if node.op_type not in GATES or len(node.input) < 5 or not node.input[4]:
        return None
    if any(name for name in node.input[5:]) or len(node.output) < 2:
        return None  # an initial state: not what encoder_graph.py writes
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if set(attributes) - _PLAIN_ATTRIBUTES:
        return None
    if node.op_type == "GRU" and attributes.get("linear_before_reset", 0) != 1:
        return None
    direction = attributes.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        return None
    arrays = [initializers.get(name) for name in node.input[1:4]]
    if arrays[0] is None or arrays[1] is None or (node.input[3] and arrays[2] is None):
        return None
    w, r = numpy_helper.to_array(arrays[0]), numpy_helper.to_array(arrays[1])
    b = numpy_helper.to_array(arrays[2]) if node.input[3] else None
    return _Layer(node.op_type, w, r, b, 2 if direction == "bidirectional" else 1, int(attributes["hidden_size"]))


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _if_node(node: onnx.NodeProto, layer: _Layer, p: str, min_batch: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    x, lengths = node.input[0], node.input[4]
    y, y_h = node.output[0], node.output[1]
    n = lambda s: f"{p}_{s}"  # noqa: E731
    d, gates = layer.directions, GATES[layer.op] * layer.hidden
    fused = onnx.NodeProto()
    fused.CopyFrom(node)
    fused.input[1], fused.input[2] = n("w_node"), n("r_node")
    fused.output[:] = [n("node_y"), n("node_y_h")]
    else_branch = helper.make_graph([fused], n("node"), [], [_out(n("node_y")), _out(n("node_y_h"))])
    then_branch = _loop_branch(x, n("input_shape"), lengths, layer, p)
    nodes = [
        # the node's W [D, gates, I] and R [D, gates, H], widened from the Loop's int8 (folded at load)
        helper.make_node("Cast", [n("w_in")], [n("w_in_float")], to=TensorProto.FLOAT),
        helper.make_node("Mul", [n("w_in_float"), n("w_in_scale")], [n("w_in_widened")]),
        helper.make_node("Reshape", [n("w_in_widened"), n("w_in_3d")], [n("w_in_by_direction")]),
        helper.make_node("Transpose", [n("w_in_by_direction")], [n("w_node")], perm=[1, 2, 0]),
        helper.make_node("Cast", [n("w_rec")], [n("w_rec_float")], to=TensorProto.FLOAT),
        helper.make_node("Mul", [n("w_rec_float"), n("w_rec_scale")], [n("w_rec_widened")]),
        helper.make_node("Transpose", [n("w_rec_widened")], [n("r_node")], perm=[0, 2, 1]),
        helper.make_node("Shape", [x], [n("input_shape")]),
        helper.make_node("Gather", [n("input_shape"), n("axis_batch")], [n("batch")], axis=0),
        helper.make_node("GreaterOrEqual", [n("batch"), n("min_batch")], [n("batched")]),
        helper.make_node("If", [n("batched")], [y, y_h], name=n("if"), then_branch=then_branch, else_branch=else_branch),
    ]
    constants = [
        _const(n("w_in"), layer.w_in), _const(n("w_in_scale"), layer.w_in_scale),
        _const(n("w_rec"), layer.w_rec), _const(n("w_rec_scale"), layer.w_rec_scale),
        _const(n("w_in_3d"), np.array([layer.w_in.shape[0], d, gates])),
        _const(n("axis_batch"), np.int64(1)), _const(n("min_batch"), np.int64(min_batch)),
    ]
    return nodes, constants


def _out(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _loop_branch(x: str, shape: str, lengths: str, layer: _Layer, p: str) -> onnx.GraphProto:
    """The then-branch: input projections of every step, masks, the Loop, then Y and Y_h.
    `shape` is x's shape, computed in the main graph for the If's condition."""
    d, h = layer.directions, layer.hidden
    width = GATES[layer.op] * h
    n = lambda s: f"{p}_{s}"  # noqa: E731
    nodes = [
        helper.make_node("Gather", [shape, n("zero")], [n("steps")], axis=0),
        helper.make_node("Slice", [shape, n("one_1d"), n("two_1d")], [n("batch_1d")]),
        # inputs projected for every step and direction: [S, B, D x gates] -> [S, D, B, gates]
        _int8_matmul(x, n("w_in"), n("w_in_scale"), n("xb"), bias=n("b_in")),
        helper.make_node("Reshape", [n("xb"), n("split_shape")], [n("x4")]),
        helper.make_node("Transpose", [n("x4")], [n("xd")], perm=[0, 2, 1, 3]),
        # real[t, b]: time t is within row b's length
        helper.make_node("Range", [n("zero"), n("steps"), n("one")], [n("times")]),
        helper.make_node("Unsqueeze", [n("times"), n("axis_1")], [n("times_2d")]),
        helper.make_node("Cast", [lengths], [n("lengths64")], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", [n("lengths64"), n("axis_0")], [n("lengths_2d")]),
        helper.make_node("Less", [n("times_2d"), n("lengths_2d")], [n("real")]),
        helper.make_node("Unsqueeze", [n("real"), n("axes_1_3")], [n("real4")]),  # [S, 1, B, 1]
    ]
    xs, masks = n("xd"), n("real4")  # what the body reads at step i: [S, D, B, gates] and [S, D, B, 1]
    if d == 2:  # the backward direction's step i is time S-1-i
        xs, masks = n("xs"), n("masks")
        nodes += [
            _direction(n("xd"), 0, n("x_fwd"), n), _direction(n("xd"), 1, n("x_bwd"), n),
            _reverse(n("x_bwd"), n("x_bwd_rev"), n),
            helper.make_node("Concat", [n("x_fwd"), n("x_bwd_rev")], [xs], axis=1),
            _reverse(n("real4"), n("real4_rev"), n),
            helper.make_node("Concat", [n("real4"), n("real4_rev")], [masks], axis=1),
        ]
    nodes += [
        helper.make_node("Concat", [n("directions_1d"), n("batch_1d"), n("hidden_1d")], [n("state_shape")], axis=0),
        helper.make_node("ConstantOfShape", [n("state_shape")], [n("h0")], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Loop", [n("steps"), "", n("h0")], [n("h_last"), n("states")], body=_body(layer, xs, masks, n)),
        # states [S, D, B, H] in step order: zeros at padding, the backward direction put back in time order
        helper.make_node("Where", [masks, n("states"), n("zero_f")], [n("ys")]),
    ]
    y = n("ys")
    if d == 2:
        y = n("y")
        nodes += [
            _direction(n("ys"), 0, n("y_fwd"), n), _direction(n("ys"), 1, n("y_bwd"), n),
            _reverse(n("y_bwd"), n("y_bwd_rev"), n),
            helper.make_node("Concat", [n("y_fwd"), n("y_bwd_rev")], [y], axis=1),
        ]
    initializers = [
        _const(n("b_in"), layer.b_in),
        _const(n("zero"), np.int64(0)), _const(n("one"), np.int64(1)), _const(n("zero_f"), np.float32(0)),
        _const(n("one_1d"), np.array([1])), _const(n("two_1d"), np.array([2])),
        _const(n("axis_0"), np.array([0])), _const(n("axis_1"), np.array([1])), _const(n("axes_1_3"), np.array([1, 3])),
        _const(n("split_shape"), np.array([0, 0, d, width])),
        _const(n("directions_1d"), np.array([d])), _const(n("hidden_1d"), np.array([h])),
        _const(n("minus_one"), np.array([-1])), _const(n("int64_min"), np.array([INT64_MIN])),
        _const(n("starts_0"), np.array([0])), _const(n("ends_1"), np.array([1])), _const(n("ends_2"), np.array([2])),
    ]
    return helper.make_graph(nodes, f"{p}_loop", [], [_out(y), _out(n("h_last"))], initializers)


def _int8_matmul(a: str, b: str, scale: str, out: str, bias: str = "") -> onnx.NodeProto:
    """a @ b for int8 b with per-column scales, a quantised to uint8 on the fly (onnxruntime's kernel)."""
    return helper.make_node("DynamicQuantizeMatMul", [a, b, scale, "", bias], [out], domain="com.microsoft")


def _direction(value: str, index: int, out: str, n) -> onnx.NodeProto:
    """value[:, index : index + 1] (axis 1 is the direction)."""
    starts, ends = (n("starts_0"), n("ends_1")) if index == 0 else (n("ends_1"), n("ends_2"))
    return helper.make_node("Slice", [value, starts, ends, n("axis_1")], [out])


def _reverse(value: str, out: str, n) -> onnx.NodeProto:
    """value[::-1] along axis 0 (time)."""
    return helper.make_node("Slice", [value, n("minus_one"), n("int64_min"), n("axis_0"), n("minus_one")], [out])


def _body(layer: _Layer, xs: str, masks: str, n) -> onnx.GraphProto:
    """One step of both directions: (i, cond, h [D, B, H]) -> (cond, h', h')."""
    h = layer.hidden
    nodes = [
        helper.make_node("Gather", [xs, n("i")], [n("x_t")], axis=0),  # [D, B, gates]
        helper.make_node("Gather", [masks, n("i")], [n("real_t")], axis=0),  # [D, B, 1]
        _int8_matmul(n("h"), n("w_rec"), n("w_rec_scale"), n("hw")),
        helper.make_node("Add", [n("hw"), n("b_rec")], [n("hr")]),  # per direction: not the matmul's 1-D bias
    ]
    if layer.op == "GRU":  # ONNX's gate order z, r, h; torch's variant: r multiplies (h R + b)
        nodes += [
            helper.make_node("Split", [n("x_t"), n("gate_split")], [n("x_zr"), n("x_n")], axis=2),
            helper.make_node("Split", [n("hr"), n("gate_split")], [n("h_zr"), n("h_n")], axis=2),
            helper.make_node("Add", [n("x_zr"), n("h_zr")], [n("a_zr")]),
            helper.make_node("Sigmoid", [n("a_zr")], [n("zr")]),
            helper.make_node("Split", [n("zr"), n("zr_split")], [n("z"), n("r")], axis=2),
            helper.make_node("Mul", [n("r"), n("h_n")], [n("r_h_n")]),
            helper.make_node("Add", [n("x_n"), n("r_h_n")], [n("a_n")]),
            helper.make_node("Tanh", [n("a_n")], [n("candidate")]),
            # (1 - z) * candidate + z * h
            helper.make_node("Sub", [n("h"), n("candidate")], [n("h_minus")]),
            helper.make_node("Mul", [n("z"), n("h_minus")], [n("z_h_minus")]),
            helper.make_node("Add", [n("candidate"), n("z_h_minus")], [n("h_new")]),
        ]
    else:
        nodes += [
            helper.make_node("Add", [n("x_t"), n("hr")], [n("a")]),
            helper.make_node("Tanh", [n("a")], [n("h_new")]),
        ]
    nodes += [
        helper.make_node("Where", [n("real_t"), n("h_new"), n("h")], [n("h_out")]),  # past its length a row keeps its state
        helper.make_node("Identity", [n("cond")], [n("cond_out")]),
        helper.make_node("Identity", [n("h_out")], [n("h_step")]),
    ]
    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    state = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [layer.directions, None, h])  # noqa: E731
    return helper.make_graph(
        nodes, n("body"),
        [scalar(n("i"), TensorProto.INT64), scalar(n("cond"), TensorProto.BOOL), state(n("h"))],
        [scalar(n("cond_out"), TensorProto.BOOL), state(n("h_out")), state(n("h_step"))],
        [_const(n("b_rec"), layer.b_rec),
         _const(n("gate_split"), np.array([2 * h, h])), _const(n("zr_split"), np.array([h, h]))])
