"""greedy.onnx: the encoder and a Loop of decoder steps in one graph, for hosts that want one call.

    src_ids int64 [batch, src_len], src_lengths int64 [batch], max_len int64 scalar
    -> tokens int64 [batch, steps] (target ids, then </s>, then <pad>),
       lengths int64 [batch] (tokens before </s>), scores float [batch] (log-probs summed, </s> included)

It is built from a bundle's own encoder and decoder graphs (so int8 graphs give greedy.int8.onnx)
and follows the runtime's greedy rules exactly: <pad> and <s> are never chosen, only </s> once
max_len tokens were produced, ties go to the lowest id (ArgMax keeps the first maximum).
`max_len` is a plain graph input (onnxruntime-web hides inputs that have an initializer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from seq2edge.runtime.config import AnyModelConfig
from seq2edge.runtime.interface import (
    GREEDY_INPUTS,
    GREEDY_OUTPUTS,
    NEXT_STEPS,
    STEPS,
    Port,
    StateTensor,
    graph_file,
    graph_ports,
    state_port_names,
)

from .onnx import ELEMENT_TYPES, save_single_file

_DEC = "dec/"  # prefix of the decoder graph's names inside the loop body


def build_greedy_graph(bundle_dir: Path, config: AnyModelConfig, precision: str, metadata: dict[str, str],
                       never: tuple[int, ...] = (), min_len: int = 0, state: tuple[StateTensor, ...] | None = None) -> Path:
    """Write greedy[.precision].onnx beside the bundle's encoder and decoder of that precision.
    never, min_len: the bundle's conventions (ids never chosen; no </s> before min_len tokens), built in.
    state: bundle.json's listed state tensors, carried through the Loop as they are (one growing by a step per
    iteration is a loop-carried value whose shape changes, which onnxruntime's Loop allows)."""
    encoder = onnx.load(str(bundle_dir / graph_file("encoder", precision)))
    decoder = onnx.load(str(bundle_dir / graph_file("decoder", precision)))
    opset = max(_opset(encoder), _opset(decoder), 13)
    outputs = {p.name: p for p in graph_ports("decoder", state)[1]}
    carried = [(name, outputs[new]) for name, new in zip(*state_port_names(state))]
    body = _loop_body(decoder, config, opset, never, min_len, carried)
    c = config
    nodes = list(encoder.graph.node)
    initializers = list(encoder.graph.initializer)
    const = _Constants(initializers)
    nodes += [
        # src_mask [B, S]: position < length
        helper.make_node("Shape", ["src_ids"], ["g/src_shape"]),
        helper.make_node("Gather", ["g/src_shape", const.int64(1, "g/one_index")], ["g/src_len"], axis=0),
        helper.make_node("Range", [const.int64(0, "g/zero"), "g/src_len", const.int64(1, "g/one")], ["g/positions"]),
        helper.make_node("Unsqueeze", ["g/positions", const.int64([0], "g/axis0")], ["g/positions_row"]),
        helper.make_node("Unsqueeze", ["src_lengths", const.int64([1], "g/axis1")], ["g/lengths_col"]),
        helper.make_node("Less", ["g/positions_row", "g/lengths_col"], ["g/src_mask"]),
        # loop state: <s> for every row, nothing finished
        helper.make_node("Gather", ["g/src_shape", const.int64(0, "g/zero_index")], ["g/batch"], axis=0),
        helper.make_node("Unsqueeze", ["g/batch", const.int64([0], "g/axis0b")], ["g/batch_1d"]),
        helper.make_node("Expand", [const.int64(c.bos_id, "g/bos"), "g/batch_1d"], ["g/prev0"]),
        helper.make_node("Expand", [const.bool(False, "g/false"), "g/batch_1d"], ["g/done0"]),
        helper.make_node("Add", ["max_len", const.int64(1, "g/one_more")], ["g/trips"]),  # + the forced </s> step
        helper.make_node("Loop", ["g/trips", const.bool(True, "g/true"), "g/prev0", *(name for name, _ in carried), "g/done0"],
                         ["g/prev_last", *(f"g/{name}_last" for name, _ in carried), "g/done_last", "g/ids_tb", "g/best_tb"],
                         body=body),
        # Once after the loop, not on every step: what follows a row's first </s> becomes <pad> and
        # adds nothing to its score (inside the loop, finished rows keep decoding, unread).
        helper.make_node("Transpose", ["g/ids_tb"], ["g/ids"], perm=[1, 0]),
        helper.make_node("Equal", ["g/ids", const.int64(c.eos_id, "g/eos")], ["g/is_eos"]),
        helper.make_node("Cast", ["g/is_eos"], ["g/is_eos_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["g/is_eos_i", const.int64(1, "g/time_axis")], ["g/eos_before"], exclusive=1),
        helper.make_node("Greater", ["g/eos_before", const.int64(0, "g/none")], ["g/finished"]),
        helper.make_node("Where", ["g/finished", const.int64(c.pad_id, "g/pad"), "g/ids"], ["tokens"]),
        # every row has one </s> (forced at max_len): lengths are its position
        helper.make_node("ArgMax", ["g/is_eos_i"], ["lengths"], axis=1, keepdims=0, select_last_index=0),
        helper.make_node("Transpose", ["g/best_tb"], ["g/best"], perm=[1, 0]),
        helper.make_node("Where", ["g/finished", const.float(0.0, "g/nothing"), "g/best"], ["g/gains"]),
        helper.make_node("ReduceSum", ["g/gains", const.int64([1], "g/axis1_sum")], ["scores"], keepdims=0),
    ]
    ins = [helper.make_tensor_value_info(p.name, ELEMENT_TYPES[p.dtype], [a.name for a in p.axes]) for p in GREEDY_INPUTS]
    outs = [helper.make_tensor_value_info(p.name, ELEMENT_TYPES[p.dtype], [a.name for a in p.axes]) for p in GREEDY_OUTPUTS]
    graph = helper.make_graph(nodes, "seq2edge_greedy", ins, outs, initializer=initializers)
    domains = {o.domain: o.version for m in (encoder, decoder) for o in m.opset_import}
    domains[""] = opset
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()],
                              ir_version=max(encoder.ir_version, decoder.ir_version), producer_name="seq2edge")
    from .onnx import set_metadata

    set_metadata(model, metadata)
    onnx.checker.check_model(model, full_check=False)
    path = bundle_dir / graph_file("greedy", precision)
    save_single_file(model, path)
    return path


def _loop_body(decoder: onnx.ModelProto, c: AnyModelConfig, opset: int, never: tuple[int, ...], min_len: int,
               carried: list[tuple[str, Port]]) -> onnx.GraphProto:
    """The Loop body: one decoder step and the greedy choice under the length rules; each step's
    token and log-prob are scanned out and masked after the loop. `carried`: each state input's name and the
    decoder output that gives its next value."""
    dec = compose.add_prefix(decoder, _DEC)
    renames = {f"{_DEC}memory": "memory", f"{_DEC}src_mask": "g/src_mask", f"{_DEC}prev_ids": "b/prev",
               **{f"{_DEC}{name}": f"b/{name}" for name, _ in carried}}
    nodes = []
    for node in dec.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        nodes.append(node)
    initializers = list(dec.graph.initializer)
    const = _Constants(initializers)
    base = np.zeros(c.tgt_vocab_size, dtype=np.float32)
    base[[c.pad_id, c.bos_id, *never]] = -np.inf
    end = np.full(c.tgt_vocab_size, -np.inf, dtype=np.float32)
    end[c.eos_id] = 0.0
    log_probs = f"{_DEC}log_probs"
    # Every node here runs once per step and per word, where a step costs ~0.1 ms: as few as will do.
    if opset >= 18:  # ReduceMax took its axes as an attribute before opset 18, as an input since
        best_value = helper.make_node("ReduceMax", ["b/biased", const.int64([1], "b/axis1")], ["b/best_lp"], keepdims=0)
    else:
        best_value = helper.make_node("ReduceMax", ["b/biased"], ["b/best_lp"], axes=[1], keepdims=0)
    open_bias = const.array(base, "b/open_bias")
    if min_len > 0:  # no </s> before min_len tokens (search.Limits' "early" case)
        early = base.copy()
        early[c.eos_id] = -np.inf
        nodes += [helper.make_node("Less", ["b/t", const.int64(min_len, "b/min_len")], ["b/early"]),
                  helper.make_node("Where", ["b/early", const.array(early, "b/early_bias"), "b/open_bias"], ["b/not_end_bias"])]
        open_bias = "b/not_end_bias"
    nodes += [
        helper.make_node("GreaterOrEqual", ["b/t", "max_len"], ["b/at_end"]),
        helper.make_node("Where", ["b/at_end", const.array(end, "b/end_bias"), open_bias], ["b/bias"]),
        helper.make_node("Add", [log_probs, "b/bias"], ["b/biased"]),
        helper.make_node("ArgMax", ["b/biased"], ["b/ids"], axis=1, keepdims=0, select_last_index=0),
        best_value,
        helper.make_node("Equal", ["b/ids", const.int64(c.eos_id, "b/eos")], ["b/is_eos"]),
        helper.make_node("Or", ["b/done", "b/is_eos"], ["b/done_out"]),
        # Finished rows go on with <pad>, whose embedding is zero: any other token (</s> above all,
        # never an input in training) would widen the batch's int8 activation range and change the
        # scores of the rows still decoding.
        helper.make_node("Where", ["b/done_out", const.int64(c.pad_id, "b/pad"), "b/ids"], ["b/next"]),
        helper.make_node("Cast", ["b/done_out"], ["b/still"], to=TensorProto.INT64),
        helper.make_node("ReduceMin", ["b/still"], ["b/all_done_i"], keepdims=0),
        helper.make_node("Equal", ["b/all_done_i", const.int64(0, "b/zero")], ["b/cond_out"]),
    ]
    ins = [helper.make_tensor_value_info("b/t", TensorProto.INT64, []),
           helper.make_tensor_value_info("b/cond", TensorProto.BOOL, []),
           helper.make_tensor_value_info("b/prev", TensorProto.INT64, ["batch"]),
           *(_value(f"b/{name}", port, c) for name, port in carried),
           helper.make_tensor_value_info("b/done", TensorProto.BOOL, ["batch"])]
    outs = [helper.make_tensor_value_info("b/cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("b/next", TensorProto.INT64, ["batch"]),
            *(_value(f"{_DEC}{port.name}", port, c) for _, port in carried),
            helper.make_tensor_value_info("b/done_out", TensorProto.BOOL, ["batch"]),
            helper.make_tensor_value_info("b/ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("b/best_lp", TensorProto.FLOAT, ["batch"])]
    # The decoder's weights are the body's own initializers, not outer-scope values: onnxruntime
    # passes every outer value a body reads to each iteration as an input, which made the whole
    # batch-1 decode 8% slower (measured with the small model's int8 graph).
    return helper.make_graph(nodes, "greedy_step", ins, outs, initializer=initializers)


class _Constants:
    """Small initializers added to a list, by name."""

    def __init__(self, initializers: list):
        self.initializers = initializers

    def array(self, value: np.ndarray, name: str) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def int64(self, value, name: str) -> str:
        return self.array(np.array(value, dtype=np.int64), name)

    def float(self, value: float, name: str) -> str:
        return self.array(np.array(value, dtype=np.float32), name)

    def bool(self, value: bool, name: str) -> str:
        return self.array(np.array(value, dtype=bool), name)


def _value(name: str, port: Port, c: AnyModelConfig) -> onnx.ValueInfoProto:
    """A value of the port's type; its axes those of the contract, a step axis left unnamed (it changes every iteration)."""
    dims = [None if a in (STEPS, NEXT_STEPS) else a.name if a.dynamic else a.fixed(c.axis_sizes) for a in port.axes]
    return helper.make_tensor_value_info(name, ELEMENT_TYPES[port.dtype], dims)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

