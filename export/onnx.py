"""Trace the model's encode() and step() into encoder.onnx and decoder.onnx.

Default exporter: torch's TorchScript-based one (`dynamo=False`). In torch 2.13
it keeps every cell's sequence axis dynamic and exports in well under a second,
and it writes each encoder layer as one recurrent node (export.encoder_graph);
the dynamo exporter fixes the vanilla RNN's sequence length to the traced one
(seen here), so it is offered but not the default. Either way export.verify
checks the result step by step against PyTorch before a bundle is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.interface import NEXT_STEPS, STEPS, Port, graph_file, graph_metadata, graph_ports
from seq2edge.train.model import Seq2SeqModule, source_mask

from .attention import exportable_attention
from .decoder_graph import DecoderStepGraph
from .encoder_graph import EncoderGraph

OPSET = 17
ELEMENT_TYPES = {"float": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64, "bool": onnx.TensorProto.BOOL}  # ports' dtypes
EXPORTERS = ("torchscript", "dynamo")
DECODER_STEPS = ("traced", "node")  # each decoder cell as traced, or one ONNX recurrent node (export/decoder_graph.py)


class TracedEncoder(nn.Module):
    """encode() as written, for the dynamo exporter (which ignores export.encoder_graph's symbolic)."""

    def __init__(self, model: Seq2SeqModule):
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(src_ids, src_lengths)


class DecoderGraph(nn.Module):
    """step() as written (the dynamo exporter, protocol models)."""

    def __init__(self, model: Seq2SeqModule):
        super().__init__()
        self.model = model

    def forward(self, prev_ids: Tensor, state: Tensor, memory: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(prev_ids, state, memory, src_mask)


def example_inputs(model: Seq2SeqModule) -> dict[str, tuple[Tensor, ...]]:
    """Inputs to trace with: batch 3 and unequal lengths, so no size is mistaken for a constant."""
    c = model.config
    lengths = torch.tensor([5, 3, 4])
    src = torch.randint(4, c.src_vocab_size, (3, 5)) if c.src_vocab_size > 4 else torch.full((3, 5), 3)
    src = src.masked_fill(~source_mask(lengths, 5), c.pad_id)
    prev = torch.tensor([c.bos_id, 4 % c.tgt_vocab_size, c.eos_id])
    mask = source_mask(lengths, 5)
    with torch.no_grad():
        memory, state = model.encode(src, lengths)
        if state_tensors(model):  # a state that grows is traced two steps in, so that no length 0 or 1 is taken for a constant
            for _ in range(2):
                _, state, _ = model.step(prev, state, memory, mask)
    return {"encoder": (src, lengths), "decoder": (prev, state, memory, mask)}


def state_tensors(model) -> tuple | None:
    """bundle.json's list of the state's tensors for a protocol model whose state is more than one packed float tensor."""
    return getattr(model, "state_tensors", None)


def export_graphs(model: Seq2SeqModule, out_dir: Path, bundle_id: str, exporter: str = "torchscript",
                  decoder_step: str = "traced") -> dict[str, Path]:
    """Write encoder.onnx and decoder.onnx (fp32) into out_dir; each is one self-contained file
    whose metadata_props say which bundle, graph and precision it is."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}")
    if decoder_step not in DECODER_STEPS:
        raise ValueError(f"decoder_step must be one of {DECODER_STEPS}")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise Seq2EdgeError("--exporter dynamo needs onnxscript: pip install onnxscript (or use the default exporter)")
    model = model.eval()
    inputs = example_inputs(model)
    paths = {}
    # Each layer of seq2edge's own encoder becomes one recurrent node (and, asked for, each decoder
    # layer); a protocol model's encode() and step() are traced as written.
    own = isinstance(model, Seq2SeqModule)
    if decoder_step == "node" and not (own and exporter == "torchscript"):
        raise Seq2EdgeError("--decoder-step node needs seq2edge's own model and the torchscript exporter")
    encoder = EncoderGraph(model) if exporter == "torchscript" and own else TracedEncoder(model)
    decoder = DecoderStepGraph(model) if decoder_step == "node" else DecoderGraph(model)
    for kind, module in (("encoder", encoder), ("decoder", decoder)):
        path = out_dir / graph_file(kind, "fp32")
        ins, outs = graph_ports(kind, state_tensors(model))
        with warnings.catch_warnings(), torch.no_grad(), _untraceable(kind, own), mha_fastpath_off(), exportable_attention(model):
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(module, inputs[kind], str(path), input_names=[p.name for p in ins],
                                  output_names=[p.name for p in outs], dynamic_axes={p.name: p.dynamic_axes() for p in ins + outs},
                                  opset_version=OPSET, dynamo=False, do_constant_folding=True)
            else:
                torch.onnx.export(module, inputs[kind], str(path), input_names=[p.name for p in ins],
                                  output_names=[p.name for p in outs], dynamic_shapes=_dynamic_shapes(ins),
                                  opset_version=max(OPSET, 18), dynamo=True, external_data=False, verbose=False)
        graph = onnx.load(str(path))
        _fold_external_data(graph, path)
        _keep_unused_inputs(graph, ins)
        _fix_model_sizes(graph, ins + outs, model.config.axis_sizes)
        set_metadata(graph, graph_metadata(bundle_id, model.config.to_dict(), "fp32", kind))
        onnx.checker.check_model(graph, full_check=True)
        save_single_file(graph, path)
        paths[kind] = path
    return paths


@contextlib.contextmanager
def mha_fastpath_off():
    """nn.MultiheadAttention and nn.TransformerEncoderLayer's inference fast path (fused kernels, nested tensors for
    padded batches) switched off for the block and restored after: torch cannot export it, and the refusal names
    no line of the user's code."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


@contextlib.contextmanager
def _untraceable(kind: str, own: bool):
    """A protocol model's code that cannot be exported: one line with the operator and the user's line.
    torch's exporter writes its shape-inference warnings and, on failure, the whole traced graph to the
    process's stderr; for a protocol model that text is kept from the user and read for the failing line."""
    if own:
        yield
        return
    from .protocol import ProtocolError, exporter_output, failing_line

    with exporter_output() as output:
        try:
            yield
        except Exception as exc:
            failure = exc
        else:
            return
    method = "encode" if kind == "encoder" else "step"
    message = (str(failure).strip().splitlines() or [type(failure).__name__])[0]
    raise ProtocolError(f"{method}() cannot be exported to ONNX: {message}{failing_line(output.text, failure)}") from None


def _keep_unused_inputs(graph: onnx.ModelProto, inputs: tuple[Port, ...]) -> None:
    """Put back the contract's inputs the exporter dropped because the traced code never read them (a step() that
    ignores the memory), so that every graph takes what every host feeds it."""
    present = {v.name for v in graph.graph.input}
    for port in inputs:
        if port.name not in present:
            dims = [a.name if a.dynamic else 1 for a in port.axes]  # fixed sizes: written by _fix_model_sizes
            graph.graph.input.append(onnx.helper.make_tensor_value_info(port.name, ELEMENT_TYPES[port.dtype], dims))


def _fix_model_sizes(graph: onnx.ModelProto, ports: tuple[Port, ...], sizes: dict[str, int]) -> None:
    """Write the model's sizes into the ports' fixed axes (the exporter leaves some as made-up symbols
    such as Concatmemory_dim_2), and the contract's name into a state's step axis (an encoder's growing state
    comes out of the tracer with it fixed to 0), so a graph's signature reads like the contract."""
    values = {v.name: v for v in [*graph.graph.input, *graph.graph.output]}
    for port in ports:
        dims = values[port.name].type.tensor_type.shape.dim
        for axis, dim in zip(port.axes, dims):
            if not axis.dynamic:
                dim.Clear()
                dim.dim_value = axis.fixed(sizes)
            elif dim.HasField("dim_value") and axis in (STEPS, NEXT_STEPS):  # any other fixed dynamic axis is a defect
                dim.Clear()
                dim.dim_param = axis.name


def set_metadata(graph: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the graph's metadata_props with `metadata` (all seq2edge.* keys)."""
    del graph.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.producer_name = "seq2edge"


def save_single_file(graph: onnx.ModelProto, path: Path) -> None:
    """Save with every weight inside the .onnx file (no .data beside it)."""
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    onnx.save_model(graph, str(path), save_as_external_data=False)


def _fold_external_data(graph: onnx.ModelProto, path: Path) -> None:
    """Pull any external tensor data (the dynamo exporter's .data file) into the graph."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if any(uses_external_data(t) for t in graph.graph.initializer):
        load_external_data_for_model(graph, str(path.parent))


def _dynamic_shapes(ports: tuple[Port, ...]) -> tuple:
    dims = {"batch": torch.export.Dim("batch", min=1, max=65536), "src_len": torch.export.Dim("src_len", min=1, max=4096)}
    return tuple({i: dims[name] for i, name in p.dynamic_axes().items()} for p in ports)
