"""OpenNMT-py 3.x Transformers (encoder_type and decoder_type "transformer"), for importers/opennmt.py.

Rebuilds onmt/encoders/transformer.py, onmt/decoders/transformer.py, onmt/modules/multi_headed_attn.py,
position_ffn.py and embeddings.py of 3.5.1 with the same parameter names, so the checkpoint's model and generator
load strictly:

- embeddings x sqrt(d) + the sinusoidal table saved in the checkpoint (`*.embeddings.make_embedding.pe.pe`,
  interleaved or concatenated sines and cosines alike: the table is read, not recomputed);
- pre-norm layers (LayerNorm, eps norm_eps): self-attention on the normed input, added to the input; the decoder's
  context attention on layer_norm_2 of that sum; the feed-forward's own norm, w_1, activation, w_2, plus residual;
  a final LayerNorm on each side;
- attention: linear_query / linear_keys / linear_values (biases with add_qkvbias), q / sqrt(head) before the
  product, -1e18 where masked, softmax, final_linear;
- the generator a Linear, its weight the target embedding's with share_decoder_embeddings.

OpenNMT-py's own greedy search keeps a key/value cache per layer as this module's state does; the cross-attention
keys and values are computed once by encode(), and a step attends with its heads side by side
(importers/transformer_parts.py). The attention a step returns is the
last layer's first head, OpenNMT-py's "std" attention.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .transformer_parts import (
    attend_step,
    cross_memory,
    empty_cache,
    fold_query_scale,
    head_sums,
    layer_keys_values,
    mask_bias,
    position_row,
    position_rows,
    self_attention,
    source_keep,
)

MASKED = -1e18  # what OpenNMT-py writes into masked attention scores
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class _Attention(nn.Module):
    def __init__(self, size: int, bias: bool):
        super().__init__()
        self.linear_keys, self.linear_values, self.linear_query = (nn.Linear(size, size, bias=bias) for _ in range(3))
        self.final_linear = nn.Linear(size, size, bias=bias)


class _FeedForward(nn.Module):
    def __init__(self, size: int, ff_size: int, bias: bool, eps: float, activation: str):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(size, ff_size, bias=bias), nn.Linear(ff_size, size, bias=bias)
        self.layer_norm = nn.LayerNorm(size, eps=eps)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(self.layer_norm(x)))) + x


class _Embeddings(nn.Module):
    """onmt.modules.Embeddings with words and a position table: make_embedding.emb_luts.0 and make_embedding.pe.pe."""

    def __init__(self, vocab: int, size: int, pad: int, rows: int):
        super().__init__()
        self.make_embedding = nn.Module()
        self.make_embedding.emb_luts = nn.ModuleList([nn.Embedding(vocab, size, padding_idx=pad)])
        self.make_embedding.pe = nn.Module()
        self.make_embedding.pe.register_buffer("pe", torch.zeros(rows, 1, size))
        self.scale = math.sqrt(size)

    def forward(self, ids: Tensor, position=None) -> Tensor:
        """ids [B, T] at positions 0 .. T-1, or, given a step's `position` (a traced size), ids [B, 1] there."""
        table = self.make_embedding.pe.pe[:, 0]
        rows = position_rows(table, ids.shape[1]) if position is None else position_row(table, position)
        return self.make_embedding.emb_luts[0](ids) * self.scale + rows


class OnmtTransformer(nn.Module):
    """OpenNMT-py's Transformer encoder-decoder in the encode()/step() protocol, with a growing key/value cache."""

    def __init__(self, opt: argparse.Namespace, src_vocab: int, tgt_vocab: int, src_pad: int, tgt_pad: int, rows: int):
        super().__init__()
        size, eps, bias = opt.hidden_size, getattr(opt, "norm_eps", 1e-6), bool(getattr(opt, "add_qkvbias", False))
        ffn_bias, activation = bool(getattr(opt, "add_ffnbias", True)), getattr(opt, "pos_ffn_activation_fn", "relu")
        self.size, self.heads = size, opt.heads
        self.encoder = nn.Module()
        self.encoder.embeddings = _Embeddings(src_vocab, size, src_pad, rows)
        self.encoder.transformer = nn.ModuleList(self._layer(size, bias, ffn_bias, eps, opt.transformer_ff, activation, False)
                                                 for _ in range(opt.enc_layers))
        self.encoder.layer_norm = nn.LayerNorm(size, eps=eps)
        self.decoder = nn.Module()
        self.decoder.embeddings = _Embeddings(tgt_vocab, size, tgt_pad, rows)
        self.decoder.transformer_layers = nn.ModuleList(
            self._layer(size, bias, ffn_bias, eps, opt.transformer_ff, activation, True) for _ in range(opt.dec_layers))
        self.decoder.layer_norm = nn.LayerNorm(size, eps=eps)
        self.generator = nn.Linear(size, tgt_vocab)
        self.register_buffer("sums", head_sums(size, opt.heads), persistent=False)

    @staticmethod
    def _layer(size: int, bias: bool, ffn_bias: bool, eps: float, ff_size: int, activation: str, decoder: bool) -> nn.Module:
        layer = nn.Module()
        layer.self_attn = _Attention(size, bias)
        layer.feed_forward = _FeedForward(size, ff_size, ffn_bias, eps, activation)
        if decoder:
            layer.context_attn = _Attention(size, bias)
            layer.layer_norm_1, layer.layer_norm_2 = nn.LayerNorm(size, eps=eps), nn.LayerNorm(size, eps=eps)
        else:
            layer.layer_norm = nn.LayerNorm(size, eps=eps)
        return layer

    def encode(self, src_ids: Tensor, src_lengths: Tensor):
        keep = source_keep(src_ids, src_lengths)
        x = self.encoder.embeddings(src_ids)
        for layer in self.encoder.transformer:
            h = layer.layer_norm(x)
            att = layer.self_attn
            context = self_attention(h, att.linear_query, att.linear_keys, att.linear_values, att.final_linear, self.heads, keep,
                                     MASKED)
            x = layer.feed_forward(context + x)
        x = self.encoder.layer_norm(x)
        memory = cross_memory([(layer.context_attn.linear_keys(x), layer.context_attn.linear_values(x))
                               for layer in self.decoder.transformer_layers])
        return memory, empty_cache(x, len(self.decoder.transformer_layers), self.size)

    def prepare_steps(self) -> OnmtTransformer:
        """After the checkpoint is loaded: the decoder's query projections take the 1 / sqrt(head) of every step."""
        for layer in self.decoder.transformer_layers:
            for att in (layer.self_attn, layer.context_attn):
                fold_query_scale(att.linear_query, self.size // self.heads)
        return self

    def step(self, prev_ids: Tensor, state, memory: Tensor, src_mask: Tensor):
        x = self.decoder.embeddings(prev_ids[:, None], state[0][0].shape[1])
        bias, new_state, weights = mask_bias(src_mask, MASKED), [], None
        for i, (layer, (past_k, past_v)) in enumerate(zip(self.decoder.transformer_layers, state)):
            h = layer.layer_norm_1(x)
            att = layer.self_attn
            k, v = torch.cat([past_k, att.linear_keys(h)], dim=1), torch.cat([past_v, att.linear_values(h)], dim=1)
            new_state.append((k, v))
            context, _ = attend_step(att.linear_query(h), k, v, self.sums)
            query = att.final_linear(context) + x
            cross_k, cross_v = layer_keys_values(memory, i, self.size)
            att = layer.context_attn
            context, weights = attend_step(att.linear_query(layer.layer_norm_2(query)), cross_k, cross_v, self.sums, bias)
            x = layer.feed_forward(att.final_linear(context) + query)
        x = self.decoder.layer_norm(x)
        return self.generator(x[:, 0]), tuple(new_state), weights[:, :, 0]


def position_table_rows(model: dict[str, Tensor]) -> int:
    """How many positions the checkpoint's tables hold (OpenNMT-py saves 5,000)."""
    table = model.get("encoder.embeddings.make_embedding.pe.pe")
    return int(table.shape[0]) if isinstance(table, Tensor) and table.dim() == 3 else 5000
