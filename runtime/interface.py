"""The ONNX contract between export and the device: files, graph ports, metadata keys.

Written down once here; export builds graphs that satisfy it and the runtime
checks every loaded graph against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .contract import STATE_RULES

# bundle.json's format: 2 added "conventions" (runtime/conventions.py), 3 a decoder state of several tensors
# ("state": int64 ones, ones that grow by a step per decoder step), and a bundle is written with the lowest number
# that holds what it has, so that older readers refuse what they would decode wrongly and read every other bundle.
FORMAT_VERSION = 3  # the newest this code reads
STATE_LIST_FORMAT_VERSION = STATE_RULES["since"]
PLAIN_FORMAT_VERSION = 1  # a bundle without conventions, and the graph contract (every graph's metadata)
BUNDLE_FILE = "bundle.json"
# bundle.json and tokeniser models are read whole: a bound, so that a device fed a huge file fails at once; and a
# bound on how deeply bundle.json may nest (a bundle's is 4 deep), so that no reader recurses without end.
MAX_METADATA_BYTES = 64 << 20
MAX_JSON_DEPTH = 64
# A graph is one protobuf message, which cannot exceed 2 GiB, and its messages nest a few levels per subgraph (a
# Loop's body, an If's branches: 3 each); deeper than this, a reader would recurse without need. Refused, not read.
MAX_GRAPH_BYTES = (2 << 30) - 1
MAX_ONNX_DEPTH = 64
GRAPHS = ("encoder", "decoder")  # every bundle has both, at every precision
OPTIONAL_GRAPHS = ("greedy",)  # export --greedy-graph: the encoder and a Loop of decoder steps in one graph
PRECISIONS = ("fp32", "int8", "fp16")
ALL_GRAPHS = (*GRAPHS, *OPTIONAL_GRAPHS)
GRAPH_FORMATS = ("onnx", "ort")  # ORT format: for reduced (mobile) onnxruntime builds, export --ort

# metadata_props of every graph: what the graph says about itself, mirroring bundle.json.
META_FORMAT_VERSION = "seq2edge.format_version"
META_BUNDLE_ID = "seq2edge.bundle_id"
META_PRECISION = "seq2edge.precision"
META_MODEL = "seq2edge.model"
META_GRAPH = "seq2edge.graph"


@dataclass(frozen=True)
class Axis:
    """One axis of a port: dynamic (batch, src_len) or fixed to a model size named after a config property
    (or, for a tensor of a listed state, to its own `size`)."""

    name: str
    dynamic: bool
    size: int | None = None

    def fixed(self, sizes: dict[str, int]) -> int:
        """The size a fixed axis must have: its own, or the model's of its name (a config's axis_sizes)."""
        return sizes[self.name] if self.size is None else self.size


BATCH, SRC_LEN, STEPS = Axis("batch", True), Axis("src_len", True), Axis("steps", True)
NEXT_STEPS = Axis(STATE_RULES["step_axis"]["outputs"], True)  # a listed state's step axis after a decoder step: one longer than `steps`
HIDDEN, STATE_SIZE, VOCAB = Axis("hidden", False), Axis("state_size", False), Axis("vocab", False)


@dataclass(frozen=True)
class Port:
    """One graph input or output: its name, element type and axes."""

    name: str
    dtype: str  # the onnxruntime type string without "tensor(...)": float, int64, bool
    axes: tuple[Axis, ...]

    def dynamic_axes(self) -> dict[int, str]:
        """{axis index: name} of the axes that must stay dynamic (what torch.onnx.export takes)."""
        return {i: a.name for i, a in enumerate(self.axes) if a.dynamic}


ENCODER_INPUTS = (
    Port("src_ids", "int64", (BATCH, SRC_LEN)),
    Port("src_lengths", "int64", (BATCH,)),
)
ENCODER_OUTPUTS = (
    Port("memory", "float", (BATCH, SRC_LEN, HIDDEN)),
    Port("state", "float", (BATCH, STATE_SIZE)),
)
DECODER_INPUTS = (
    Port("prev_ids", "int64", (BATCH,)),
    Port("state", "float", (BATCH, STATE_SIZE)),
    Port("memory", "float", (BATCH, SRC_LEN, HIDDEN)),
    Port("src_mask", "bool", (BATCH, SRC_LEN)),
)
DECODER_OUTPUTS = (
    Port("log_probs", "float", (BATCH, VOCAB)),
    Port("new_state", "float", (BATCH, STATE_SIZE)),
    Port("attention", "float", (BATCH, SRC_LEN)),
)


GREEDY_INPUTS = (
    Port("src_ids", "int64", (BATCH, SRC_LEN)),
    Port("src_lengths", "int64", (BATCH,)),
    Port("max_len", "int64", ()),  # a plain input: onnxruntime-web hides inputs that have an initializer
)
GREEDY_OUTPUTS = (
    Port("tokens", "int64", (BATCH, STEPS)),  # target ids, then </s>, then <pad>
    Port("lengths", "int64", (BATCH,)),  # tokens before </s>
    Port("scores", "float", (BATCH,)),  # sum of the log-probs of the tokens and </s>
)
_PORTS = {"encoder": (ENCODER_INPUTS, ENCODER_OUTPUTS), "decoder": (DECODER_INPUTS, DECODER_OUTPUTS),
          "greedy": (GREEDY_INPUTS, GREEDY_OUTPUTS)}


def graph_file(kind: str, precision: str, fmt: str = "onnx") -> str:
    """File name of a graph: encoder.onnx, decoder.int8.onnx, greedy.ort, ..."""
    return f"{kind}.{fmt}" if precision == "fp32" else f"{kind}.{precision}.{fmt}"


@dataclass(frozen=True)
class StateTensor:
    """One tensor of a decoder state that bundle.json lists (format 3): its element type and its axes after the
    batch axis, None marking the step axis (length 0 from the encoder, one longer after each decoder step)."""

    dtype: str  # "float" or "int64", as the ports name them
    dims: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "dims": list(self.dims)}


def state_port_names(state: tuple[StateTensor, ...] | None) -> tuple[list[str], list[str]]:
    """The names a decoder state travels under, in and out: ["state"] and ["new_state"] for the packed state, or
    state_0, ... and new_state_0, ... for a listed one."""
    if not state:
        return ["state"], ["new_state"]
    def names(role: str) -> list[str]:
        return [STATE_RULES[role].format(index=i) for i in range(len(state))]
    return names("inputs"), names("outputs")


def _state_ports(state: tuple[StateTensor, ...], names: list[str], step_axis: Axis) -> tuple[Port, ...]:
    return tuple(Port(name, t.dtype, (BATCH, *(step_axis if d is None else Axis(f"{name} axis {j + 1}", False, d)
                                               for j, d in enumerate(t.dims))))
                 for name, t in zip(names, state))


def graph_ports(kind: str, state: tuple[StateTensor, ...] | None = None) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
    """(inputs, outputs) of the "encoder", "decoder" or "greedy" graph. With a listed `state`, its tensors take the
    place of the one packed state port: state_i in, new_state_i out."""
    inputs, outputs = _PORTS[kind]
    if not state:
        return inputs, outputs
    ins, outs = state_port_names(state)
    replace = {"state": _state_ports(state, ins, STEPS), "new_state": _state_ports(state, outs, NEXT_STEPS)}
    return (tuple(q for p in inputs for q in replace.get(p.name, (p,))),
            tuple(q for p in outputs for q in replace.get(p.name, (p,))))


def graph_metadata(bundle_id: str, model: dict[str, Any], precision: str, kind: str) -> dict[str, str]:
    """The metadata_props export writes into a graph and the runtime expects to find there."""
    return {
        META_FORMAT_VERSION: str(PLAIN_FORMAT_VERSION),
        META_BUNDLE_ID: bundle_id,
        META_PRECISION: precision,
        META_MODEL: json.dumps(model, sort_keys=True),
        META_GRAPH: kind,
    }
