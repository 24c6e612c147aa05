"""Reduced-precision graphs: dynamic int8 (for CPUs) and fp16 (for GPUs). Conversion only;
their parity figures are measured in export.verify.

Both keep the fp32 graphs' inputs and outputs (float32 state, memory and
log-probs), so the runtime drives every precision with the same code.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx

from seq2edge.runtime.interface import GRAPHS, graph_file, graph_metadata
from seq2edge.runtime.schema import GraphEntry

from .logs import logger_level
from .onnx import save_single_file, set_metadata
from .recurrent_loop import loop_recurrences_int8, values_read


def quantize_int8(src: Path, dst: Path, kind: str) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised per call (MatMulInteger,
    DynamicQuantizeLSTM). GRU and RNN nodes, which onnxruntime has no integer kernel for: in the
    encoder each large enough to gain becomes If(batch >= loop_min_batch, a Loop of integer matmuls,
    the node) over one int8 copy of its weights (loop_recurrences_int8); any other keeps float32
    arithmetic with its weights stored as int8 (quantize_recurrent_weights). The greedy graph is
    built from the encoder and decoder graphs this writes.

    Integer-matmul weights are limited to +-64 (reduce_range; see recurrent_loop.INT8_WEIGHT_LIMIT)
    so that CPUs without VNNI compute the same sums as those with it, instead of saturating."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src))
    if kind == "encoder":
        loop_recurrences_int8(graph)
    with logger_level(None, logging.ERROR):  # quantize_dynamic logs advice on the root logger
        quantize_dynamic(graph, str(dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=True)
    graph = onnx.load(str(dst))
    if quantize_recurrent_weights(graph):
        onnx.save_model(graph, str(dst))


# Inputs 1 and 2 of these ops are their input and recurrence weight matrices.
WEIGHT_ONLY_OPS = ("GRU", "RNN")


def quantize_recurrent_weights(graph: onnx.ModelProto) -> int:
    """Store the float weights of GRU and RNN nodes as int8, one symmetric scale per output row,
    with a DequantizeLinear (and a Reshape back to [directions, gates x hidden, inputs]) in front of
    the node: a quarter of the bytes, the same float32 arithmetic. Returns how many were replaced."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in graph.graph.initializer}
    done: dict[str, str] = {}
    nodes = []
    for node in graph.graph.node:
        if node.op_type in WEIGHT_ONLY_OPS:
            for slot in (1, 2):
                name = node.input[slot] if len(node.input) > slot else ""
                tensor = initializers.get(name)
                if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
                    continue
                if name not in done:
                    weights = numpy_helper.to_array(tensor)
                    rows = weights.reshape(-1, weights.shape[-1])
                    scale = np.maximum(np.abs(rows).max(axis=1), np.finfo(np.float32).tiny) / 127.0
                    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
                    graph.graph.initializer.extend([
                        numpy_helper.from_array(q, f"{name}_int8"),
                        numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                        numpy_helper.from_array(np.zeros(len(scale), dtype=np.int8), f"{name}_zero_point"),
                        numpy_helper.from_array(np.array(weights.shape, dtype=np.int64), f"{name}_shape"),
                    ])
                    nodes += [
                        helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                                         [f"{name}_rows"], axis=0, name=f"{name}_dequantize"),
                        helper.make_node("Reshape", [f"{name}_rows", f"{name}_shape"], [f"{name}_float"], name=f"{name}_reshape"),
                    ]
                    done[name] = f"{name}_float"
                node.input[slot] = done[name]
        nodes.append(node)
    if not done:
        return 0
    still_used = {i for n in nodes for i in values_read(n)}  # the If of loop_recurrences_int8 reads inside
    kept = [t for t in graph.graph.initializer if t.name in still_used]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    return len(done)


def convert_fp16(src: Path, dst: Path, kind: str) -> None:
    """fp16 weights and arithmetic inside, float32 at the inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    onnx.save_model(graph, str(dst))


CONVERTERS: dict[str, Callable[[Path, Path, str], None]] = {"int8": quantize_int8, "fp16": convert_fp16}


def write_precision(bundle_dir: Path, bundle_id: str, model: dict, precision: str) -> dict[str, GraphEntry]:
    """Convert the bundle's fp32 graphs to `precision`, stamp their metadata, and return their entries."""
    entries = {}
    for kind in GRAPHS:
        src, dst = bundle_dir / graph_file(kind, "fp32"), bundle_dir / graph_file(kind, precision)
        CONVERTERS[precision](src, dst, kind)
        graph = onnx.load(str(dst))
        set_metadata(graph, graph_metadata(bundle_id, model, precision, kind))
        save_single_file(graph, dst)
        entries[kind] = GraphEntry.of_file(dst)
    return entries
