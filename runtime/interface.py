"""The ONNX contract between export and the device: graph names, inputs, outputs.

Written down once here; export builds graphs that satisfy it and the runtime
checks every loaded graph against it.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_VERSION = 1
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
BUNDLE_FILE = "bundle.json"
PRECISIONS = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type and axes (names are dynamic)."""

    name: str
    dtype: str  # the onnxruntime type string without "tensor(...)": float, int64, bool
    axes: tuple[str, ...]


ENCODER_INPUTS = (
    Port("src_ids", "int64", ("batch", "src_len")),
    Port("src_lengths", "int64", ("batch",)),
)
ENCODER_OUTPUTS = (
    Port("memory", "float", ("batch", "src_len", "hidden")),
    Port("state", "float", ("batch", "state_size")),
)
DECODER_INPUTS = (
    Port("prev_ids", "int64", ("batch",)),
    Port("state", "float", ("batch", "state_size")),
    Port("memory", "float", ("batch", "src_len", "hidden")),
    Port("src_mask", "bool", ("batch", "src_len")),
)
DECODER_OUTPUTS = (
    Port("log_probs", "float", ("batch", "vocab")),
    Port("new_state", "float", ("batch", "state_size")),
    Port("attention", "float", ("batch", "src_len")),
)


def graph_file(kind: str, precision: str) -> str:
    """File name of a graph: encoder.onnx, decoder.int8.onnx, ..."""
    return f"{kind}.onnx" if precision == "fp32" else f"{kind}.{precision}.onnx"


def graph_ports(kind: str) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
    """(inputs, outputs) of the "encoder" or "decoder" graph."""
    return (ENCODER_INPUTS, ENCODER_OUTPUTS) if kind == "encoder" else (DECODER_INPUTS, DECODER_OUTPUTS)
