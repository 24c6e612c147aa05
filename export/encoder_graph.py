"""encoder.onnx with each encoder layer as one ONNX RNN, GRU or LSTM node given the source lengths.

Traced as written, a bidirectional layer is two recurrent nodes plus the reversal of every
sequence within its length (Range, Where, GatherElements, Expand, Shape arithmetic: ~70 nodes for
the small model's encoder), and onnxruntime runs each of them on every call, which at batch 1 costs
more than the recurrences. ONNX recurrent nodes take `sequence_lens` and run the backward
direction from each sequence's own end, which is that reversal: one node per layer, the same
computation at every real position (export's parity check compares them with PyTorch) and zeros at
the padding, which attention masks. The summary is the node's final state (Y_h): forward at each
sequence's end, backward at its start, as Encoder.forward's summary.

Only the TorchScript exporter honours an autograd.Function's `symbolic`; `--exporter dynamo` traces
Seq2SeqModule.encode as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2edge.train.model import Seq2SeqModule

ONNX_OP = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}
# torch's gate blocks in ONNX's order: GRU r,z,n -> z,r,h; LSTM i,f,g,o -> i,o,f,c; RNN one block.
GATE_ORDER = {"gru": (1, 0, 2), "lstm": (0, 3, 1, 2), "rnn": (0,)}
INT32 = 6  # onnx TensorProto.INT32, the type of sequence_lens


class EncoderGraph(nn.Module):
    """encode() for the TorchScript exporter: embedding, one recurrent node per layer, the bridge."""

    def __init__(self, model: Seq2SeqModule):
        super().__init__()
        self.model = model
        encoder, cell = model.encoder, model.config.cell
        self.layers = []
        for layer, forward_rnn in enumerate(encoder.forward_rnns):
            rnns = [forward_rnn] + ([encoder.backward_rnns[layer]] if encoder.bidirectional else [])
            for name, tensor in zip("wrb", onnx_weights(rnns, cell)):
                self.register_buffer(f"{name}{layer}", tensor)
            self.layers.append(_layer_function(model, layer))

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.model.encoder.embedding(src_ids)
        summary = x.new_zeros(0)
        for layer, function in enumerate(self.layers):  # dropout between layers is the identity in eval mode
            x, summary = function.apply(x, src_lengths, *(getattr(self, f"{n}{layer}") for n in "wrb"))
        return x, self.model.first_state(summary)


def onnx_weights(rnns: list[nn.Module], cell: str) -> tuple[Tensor, Tensor, Tensor]:
    """W [directions, gates x hidden, inputs], R [directions, gates x hidden, hidden] and
    B [directions, 2 x gates x hidden] of single-layer torch RNNs, in ONNX's gate order."""
    hidden = rnns[0].hidden_size
    reorder = lambda t: onnx_gate_order(t, cell, hidden)  # noqa: E731

    with torch.no_grad():
        w = torch.stack([reorder(r.weight_ih_l0) for r in rnns])
        r = torch.stack([reorder(r.weight_hh_l0) for r in rnns])
        b = torch.stack([torch.cat([reorder(r.bias_ih_l0), reorder(r.bias_hh_l0)]) for r in rnns])
    return w, r, b


def onnx_gate_order(t: Tensor, cell: str, hidden: int) -> Tensor:
    """The gate blocks (rows of `hidden`) of a torch weight or bias in ONNX's order."""
    blocks = t.split(hidden, dim=0)
    return torch.cat([blocks[i] for i in GATE_ORDER[cell]], dim=0)


def _layer_function(model: Seq2SeqModule, layer: int) -> type[torch.autograd.Function]:
    """Layer `layer` of the encoder as an autograd.Function that export writes as one recurrent node."""
    encoder, cell = model.encoder, model.config.cell
    hidden = encoder.forward_rnns[layer].hidden_size
    directions = 2 if encoder.bidirectional else 1

    class Layer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: Tensor, lengths: Tensor, w: Tensor, r: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
            # Only the exporter calls this, and it records `symbolic` in its place: these zeros give the
            # trace its shapes. (The layer's own modules cannot run here: the tracer refuses parameters
            # that are not inputs of the Function.) Parity compares the graph with Seq2SeqModule.encode.
            return x.new_zeros(x.size(0), x.size(1), directions * hidden), x.new_zeros(x.size(0), directions * hidden)

        @staticmethod
        def symbolic(g, x, lengths, w, r, b):
            attributes = {"hidden_size_i": hidden, "direction_s": "bidirectional" if directions == 2 else "forward"}
            if cell == "gru":
                attributes["linear_before_reset_i"] = 1  # torch applies the reset gate after the recurrent product
            outputs = g.op(ONNX_OP[cell], g.op("Transpose", x, perm_i=[1, 0, 2]), w, r, b,
                           g.op("Cast", lengths, to_i=INT32), outputs=3 if cell == "lstm" else 2, **attributes)
            y, y_h = outputs[0], outputs[1]
            # Y [S, directions, B, H] -> [B, S, directions x H]; Y_h [directions, B, H] -> [B, directions x H]
            y = g.op("Reshape", g.op("Transpose", y, perm_i=[2, 0, 1, 3]), g.op("Constant", value_t=torch.tensor([0, 0, -1])))
            y_h = g.op("Reshape", g.op("Transpose", y_h, perm_i=[1, 0, 2]), g.op("Constant", value_t=torch.tensor([0, -1])))
            return y, y_h

    return Layer
