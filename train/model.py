"""The seq2seq model with attention of the course notes, in PyTorch.

encode() runs the encoder RNN over the source and bridges its final state to
the decoder's first state; step() is one decoder step with attention. Training
loops over step(); export traces encode() and step() into the two graphs, so
the device runs the trained computation, not a re-implementation.

The decoder state travels as one packed tensor [batch, config.state_size]:
h of every layer, then c of every layer (LSTM), then the attentional vector
(input feeding), so the runtime can reorder and drop rows without knowing the cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2edge.runtime.config import CELL_GATES, ModelConfig

RNNS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def reversal_index(lengths: Tensor, max_len: int) -> Tensor:
    """[B, S] positions that reverse each sequence within its length; padding stays at the end."""
    t = torch.arange(max_len, device=lengths.device).unsqueeze(0)
    last = lengths.unsqueeze(1) - 1
    return torch.where(t <= last, last - t, t)


def reverse_padded(x: Tensor, lengths: Tensor, index: Tensor | None = None) -> Tensor:
    """Reverse each sequence of x [B, S, D] within its length (applying it twice is the identity)."""
    if index is None:
        index = reversal_index(lengths, x.size(1))
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.size(2)))


class Encoder(nn.Module):
    """Embedding -> stacked RNN layers; a bidirectional layer runs a second RNN on each
    sequence reversed within its length, so padding never reaches a real position."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bidirectional = config.bidirectional
        size = config.hidden // 2 if config.bidirectional else config.hidden
        rnn = RNNS[config.cell]
        inputs = [config.embed] + [config.hidden] * (config.layers - 1)
        self.embedding = nn.Embedding(config.src_vocab_size, config.embed, padding_idx=config.pad_id)
        self.forward_rnns = nn.ModuleList(rnn(n, size, batch_first=True) for n in inputs)
        if config.bidirectional:
            self.backward_rnns = nn.ModuleList(rnn(n, size, batch_first=True) for n in inputs)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """-> memory [B, S, hidden] and a summary [B, hidden]: the last forward state
        (at each sequence's own end) and the last backward state (at its start)."""
        x = self.embedding(src_ids)
        index = reversal_index(src_lengths, src_ids.size(1)) if self.bidirectional else None  # once for all layers
        for layer, forward_rnn in enumerate(self.forward_rnns):
            if layer:
                x = self.dropout(x)
            out, _ = forward_rnn(x)
            if self.bidirectional:
                back, _ = self.backward_rnns[layer](reverse_padded(x, src_lengths, index))
                out = torch.cat([out, reverse_padded(back, src_lengths, index)], dim=2)
            x = out
        last = (src_lengths - 1).view(-1, 1, 1).expand(-1, 1, x.size(2))
        end = x.gather(1, last)[:, 0]  # indexing, not squeeze: no shape test in the exported graph
        if not self.bidirectional:
            return x, end
        half = x.size(2) // 2
        return x, torch.cat([end[:, :half], x[:, 0, half:]], dim=1)


class Attention(nn.Module):
    """score(h_t, h_s): dot h_t.h_s; general h_t.W h_s; additive v.tanh(W_q h_t + W_k h_s)."""

    def __init__(self, kind: str, hidden: int):
        super().__init__()
        self.kind = kind
        if kind == "general":
            self.query = nn.Linear(hidden, hidden, bias=False)
        elif kind == "additive":
            self.query = nn.Linear(hidden, hidden, bias=False)
            self.key = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, hidden: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """-> context [B, H] (the weighted sum of memory) and the weights [B, S]."""
        if self.kind == "dot":
            scores = (memory @ hidden.unsqueeze(2)).squeeze(2)
        elif self.kind == "general":
            scores = (memory @ self.query(hidden).unsqueeze(2)).squeeze(2)
        else:
            scores = self.v(torch.tanh(self.query(hidden).unsqueeze(1) + self.key(memory))).squeeze(2)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        context = (weights.unsqueeze(1) @ memory).squeeze(1)
        return context, weights


class Cell(nn.Module):
    """One decoder layer's step, the equations written out so every exporter sees plain matmuls."""

    def __init__(self, cell: str, inputs: int, hidden: int):
        super().__init__()
        self.cell = cell
        self.hidden = hidden
        gates = CELL_GATES[cell]
        if cell == "gru":  # the reset gate multiplies the recurrent part only, so keep it apart
            self.x2h = nn.Linear(inputs, gates * hidden)
            self.h2h = nn.Linear(hidden, gates * hidden)
        else:
            self.linear = nn.Linear(inputs + hidden, gates * hidden)
            if cell == "lstm":
                with torch.no_grad():
                    self.linear.bias[hidden : 2 * hidden].fill_(1.0)  # forget gate starts open

    def forward(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.cell == "rnn":
            return torch.tanh(self.linear(torch.cat([x, h], dim=1))), None
        if self.cell == "lstm":
            # split by a constant width (not chunk) so the exported graph has no shape arithmetic
            i, f, g, o = self.linear(torch.cat([x, h], dim=1)).split(self.hidden, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        # (1 - z) * n + z * h written as n + z * (h - n), r and z through one sigmoid: two nodes
        # fewer in every decoder step of the exported graph, the same function
        gates = 2 * self.hidden
        xrz, xn = self.x2h(x).split([gates, self.hidden], dim=1)
        hrz, hn = self.h2h(h).split([gates, self.hidden], dim=1)
        r, z = torch.sigmoid(xrz + hrz).split(self.hidden, dim=1)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), None


class Seq2SeqModule(nn.Module):
    """The PyTorch model: encoder, bridge, decoder cells, attention and output layer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.encoder = Encoder(c)
        self.bridge = nn.Linear(c.hidden, c.decoder_layers * c.hidden * len(c.cell_states))
        self.embedding = nn.Embedding(c.tgt_vocab_size, c.embed, padding_idx=c.pad_id)
        first = c.embed + (c.hidden if c.input_feed else 0)
        self.cells = nn.ModuleList(Cell(c.cell, first if i == 0 else c.hidden, c.hidden) for i in range(c.decoder_layers))
        self.attention = Attention(c.attention, c.hidden)
        if c.input_feed:  # Luong: attentional vector tanh(W_c [h; context]), fed to the next step
            self.combine = nn.Linear(2 * c.hidden, c.hidden)
            self.out = nn.Linear(c.hidden, c.tgt_vocab_size)
        else:  # the notes: output layer straight on [h; context]
            self.out = nn.Linear(2 * c.hidden, c.tgt_vocab_size)
        self.dropout = nn.Dropout(c.dropout)

    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """-> memory [B, S, hidden] and the first packed decoder state [B, state_size]."""
        memory, summary = self.encoder(src_ids, src_lengths)
        return memory, self.first_state(summary)

    def first_state(self, summary: Tensor) -> Tensor:
        """The encoder's summary [B, hidden] bridged to the first packed decoder state."""
        c = self.config
        bridged = self.bridge(summary)
        n = c.decoder_layers * c.hidden
        parts = [torch.tanh(bridged[:, :n])]  # h of every layer
        if "c" in c.cell_states:
            parts.append(bridged[:, n:])
        if c.input_feed:
            parts.append(summary.new_zeros(summary.size(0), c.hidden))
        return torch.cat(parts, dim=1)

    def step(self, prev_ids: Tensor, state: Tensor, memory: Tensor, src_mask: Tensor,
             cells: Sequence | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step -> log_probs [B, V], new state [B, state_size], attention [B, S].
        cells: one callable (x, h, c) -> (h, c) per decoder layer in place of self.cells (export
        passes cells that the exporter writes as single ONNX recurrent nodes)."""
        c = self.config
        cells = self.cells if cells is None else cells
        hs, cs, feed = self._unpack(state)
        x = self.embedding(prev_ids)
        if c.input_feed:
            x = torch.cat([x, feed], dim=1)
        new_h, new_c = [], []
        for layer, cell in enumerate(cells):
            if layer:
                x = self.dropout(x)
            h, cell_state = cell(x, hs[layer], cs[layer] if cs else None)
            new_h.append(h)
            if cell_state is not None:
                new_c.append(cell_state)
            x = h
        context, weights = self.attention(x, memory, src_mask)
        combined = torch.cat([x, context], dim=1)
        parts = new_h + new_c
        if c.input_feed:
            combined = torch.tanh(self.combine(combined))
            parts.append(combined)
        log_probs = F.log_softmax(self.out(self.dropout(combined)), dim=1)
        return log_probs, torch.cat(parts, dim=1), weights

    def _unpack(self, state: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        c = self.config
        n, h = c.decoder_layers, c.hidden
        chunks = state.split(h, dim=1)
        hs = list(chunks[:n])
        cs = list(chunks[n : 2 * n]) if "c" in c.cell_states else []
        feed = chunks[-1] if c.input_feed else None
        return hs, cs, feed

    def forward(self, src_ids: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced log-probs [B, T, V] for the target inputs tgt_in [B, T]."""
        memory, state = self.encode(src_ids, src_lengths)
        mask = source_mask(src_lengths, src_ids.size(1))
        out = []
        for t in range(tgt_in.size(1)):
            log_probs, state, _ = self.step(tgt_in[:, t], state, memory, mask)
            out.append(log_probs)
        return torch.stack(out, dim=1)


def source_mask(lengths: Tensor, max_len: int) -> Tensor:
    """[B, S] True at real positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def state_rows(state, index: Tensor):
    """Rows of a decoder state: one packed tensor, or a (nested) tuple of tensors (export.protocol.StateLayout's listed
    tensors, a protocol model's own state)."""
    return tuple(state_rows(part, index) for part in state) if isinstance(state, tuple) else state[index]


@torch.inference_mode()
def greedy_decode(model: Seq2SeqModule, src_ids: Tensor, src_lengths: Tensor, max_len: int | Sequence[int], min_len: int = 0,
                  never: Sequence[int] = ()) -> tuple[list[list[int]], list[float]]:
    """Batched greedy decoding in PyTorch -> ids per row (without </s>) and their scores.

    Same rules as the runtime: pad, <s> and the `never` ids are never chosen, </s> not before
    min_len tokens and forced after max_len (one for all rows, or one per row), and finished
    rows leave the batch.
    """
    c = model.config
    memory, state = model.encode(src_ids, src_lengths)
    mask = source_mask(src_lengths, src_ids.size(1))
    n = src_ids.size(0)
    limits = torch.as_tensor(max_len).expand(n) if isinstance(max_len, int) else torch.as_tensor(list(max_len))
    longest = int(limits.max())
    active = torch.arange(n)
    prev = torch.full((n,), c.bos_id, dtype=torch.long)
    scores = torch.zeros(n, dtype=torch.float64)
    table = torch.full((n, longest + 1), c.eos_id, dtype=torch.long)
    forbidden = [c.pad_id, c.bos_id, *never]
    for t in range(longest + 1):
        log_probs, state, _ = model.step(prev, state, memory, mask)
        end_score = log_probs[:, c.eos_id].clone()
        log_probs[:, forbidden] = float("-inf")
        if t < min_len:
            log_probs[:, c.eos_id] = float("-inf")
        at_end = limits[active] <= t
        if bool(at_end.any()):  # only </s>, whatever min_len says
            log_probs[at_end] = float("-inf")
            log_probs[:, c.eos_id] = torch.where(at_end, end_score, log_probs[:, c.eos_id])
        best, ids = log_probs.max(dim=1)
        scores[active] += best.double()
        table[active, t] = ids
        live = ids != c.eos_id
        if not bool(live.any()):
            break
        if not bool(live.all()):
            active, ids, state, memory, mask = active[live], ids[live], state_rows(state, live), memory[live], mask[live]
        prev = ids
    rows = table.tolist()
    return [row[: row.index(c.eos_id)] for row in rows], scores.tolist()
