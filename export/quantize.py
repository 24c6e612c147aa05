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

from .onnx import save_single_file, set_metadata


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised per call (MatMulInteger, DynamicQuantizeLSTM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and arithmetic inside, float32 at the inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    onnx.save_model(graph, str(dst))


CONVERTERS: dict[str, Callable[[Path, Path], None]] = {"int8": quantize_int8, "fp16": convert_fp16}


def write_precision(bundle_dir: Path, bundle_id: str, model: dict, precision: str) -> dict[str, GraphEntry]:
    """Convert the bundle's fp32 graphs to `precision`, stamp their metadata, and return their entries."""
    entries = {}
    for kind in GRAPHS:
        src, dst = bundle_dir / graph_file(kind, "fp32"), bundle_dir / graph_file(kind, precision)
        CONVERTERS[precision](src, dst)
        graph = onnx.load(str(dst))
        set_metadata(graph, graph_metadata(bundle_id, model, precision, kind))
        save_single_file(graph, dst)
        entries[kind] = GraphEntry.of_file(dst)
    return entries
