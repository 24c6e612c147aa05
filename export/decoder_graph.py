"""decoder.onnx with each decoder layer as one ONNX GRU, LSTM or RNN node over one time step
(`export --decoder-step node`; the default is the traced step).

Traced as written, a decoder cell is its matrix products and a dozen elementwise nodes (the small
model's GRU: two Gemms, three Splits, Add, Sigmoid, Mul, Add, Tanh, Sub, Mul, Add). ONNX's recurrent
nodes compute the same cell in one kernel: here each runs over a sequence of length 1, its initial state
the layer's state from the packed state and its final state (Y_h, Y_c) the new one. Attention,
the attentional vector and the output layer are step() as written.

The equations are Cell's: torch's GRU (the reset gate after the recurrent product:
linear_before_reset), the LSTM on [x; h] with gates i, f, g, o, and a tanh RNN. Export's parity check
compares the graph with Seq2SeqModule.step, as for the encoder (export/encoder_graph.py).

Measured on CPUs here (docs/export.md, "The decoder step"), the node is not the faster: onnxruntime's
cost per small node is about 0.4 µs, a step's cost is its weights' reading and its matrix products,
and the GRU node computes in float where the traced int8 step uses integer products.

Only the TorchScript exporter honours an autograd.Function's `symbolic`; `--exporter dynamo` and
protocol models (export/protocol.py) trace step() as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2edge.train.model import Cell, Seq2SeqModule

from .encoder_graph import ONNX_OP, onnx_gate_order


class DecoderStepGraph(nn.Module):
    """step() for the TorchScript exporter, its cells written as single recurrent nodes."""

    def __init__(self, model: Seq2SeqModule):
        super().__init__()
        self.model = model
        self.cells = []
        for layer, cell in enumerate(model.cells):
            for name, tensor in zip("wrb", cell_weights(cell)):
                self.register_buffer(f"{name}{layer}", tensor)
            function = _cell_function(cell)
            weights = tuple(getattr(self, f"{n}{layer}") for n in "wrb")
            self.cells.append(lambda x, h, c, f=function, w=weights: _apply(f, x, h, c, w))

    def forward(self, prev_ids: Tensor, state: Tensor, memory: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.step(prev_ids, state, memory, src_mask, cells=self.cells)


def cell_weights(cell: Cell) -> tuple[Tensor, Tensor, Tensor]:
    """W [1, gates x hidden, inputs], R [1, gates x hidden, hidden], B [1, 2 x gates x hidden] of a
    decoder Cell, in ONNX's gate order."""
    hidden, kind = cell.hidden, cell.cell
    with torch.no_grad():
        if kind == "gru":
            w, r = cell.x2h.weight, cell.h2h.weight
            b = torch.cat([onnx_gate_order(cell.x2h.bias, kind, hidden), onnx_gate_order(cell.h2h.bias, kind, hidden)])
        else:  # one Linear over [x; h]: its columns split into W and R, its bias is W's (R's is zero)
            inputs = cell.linear.in_features - hidden
            w, r = cell.linear.weight[:, :inputs], cell.linear.weight[:, inputs:]
            b = torch.cat([onnx_gate_order(cell.linear.bias, kind, hidden), torch.zeros_like(cell.linear.bias)])
        w, r = onnx_gate_order(w, kind, hidden), onnx_gate_order(r, kind, hidden)
    return w.unsqueeze(0).contiguous(), r.unsqueeze(0).contiguous(), b.unsqueeze(0).contiguous()


def _apply(function, x: Tensor, h: Tensor, c: Tensor | None, weights: tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    if c is None:
        return function.apply(x, h, *weights), None
    return function.apply(x, h, c, *weights)


def _cell_function(cell: Cell) -> type[torch.autograd.Function]:
    """One decoder layer's step as an autograd.Function that export writes as one recurrent node."""
    kind, hidden = cell.cell, cell.hidden

    def node(g, x, states, w, r, b):
        attributes = {"hidden_size_i": hidden}
        if kind == "gru":
            attributes["linear_before_reset_i"] = 1  # torch applies the reset gate after the recurrent product
        axis0 = g.op("Constant", value_t=torch.tensor([0]))
        no_lengths = g.op("prim::Constant")  # every sequence has length 1: sequence_lens is left out
        no_lengths.setType(torch._C.OptionalType.ofTensor())
        initial = [g.op("Unsqueeze", s, axis0) for s in states]
        outputs = g.op(ONNX_OP[kind], g.op("Unsqueeze", x, axis0), w, r, b, no_lengths, *initial,
                       outputs=3 if kind == "lstm" else 2, **attributes)
        return tuple(g.op("Squeeze", o, axis0) for o in outputs[1:])  # Y_h (and Y_c) [1, B, H] -> [B, H]

    if kind == "lstm":
        class LSTMStep(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, h, c, w, r, b):
                # Only the exporter calls this and records `symbolic` instead; these give the trace its shapes.
                return h.new_zeros(h.shape), c.new_zeros(c.shape)

            @staticmethod
            def symbolic(g, x, h, c, w, r, b):
                return node(g, x, (h, c), w, r, b)

        return LSTMStep

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h, w, r, b):
            return h.new_zeros(h.shape)

        @staticmethod
        def symbolic(g, x, h, w, r, b):
            return node(g, x, (h,), w, r, b)[0]

    return Step
