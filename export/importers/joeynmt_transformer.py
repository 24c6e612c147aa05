"""JoeyNMT 2.x Transformers (encoder and decoder type "transformer"), for importers/joeynmt.py.

Rebuilds joeynmt/transformer_layers.py, encoders.py and decoders.py of 2.3.0 with the same parameter names, so
the checkpoint's model_state loads strictly:

- embeddings (x sqrt(d) when scaled) + the sinusoidal table saved in the checkpoint (`encoder.pe.pe`);
- each layer pre- or post-norm (`layer_norm`; when unset, JoeyNMT builds pre-norm encoder layers and post-norm
  decoder layers), residuals weighted by `alpha`; LayerNorm eps 1e-6; a final norm on a side whose config says
  "pre" explicitly;
- multi-head attention: q, k, v projections, q / sqrt(head) before the product, -inf where masked, softmax, the
  output projection; the feed-forward Linear -> activation -> Linear with its own norm;
- logits = output_layer(x), tied to the target embedding with tied_softmax (the checkpoint holds both).

JoeyNMT's greedy search runs the decoder over the whole prefix at every step; here each step appends its keys and
values to a per-layer cache, which gives the same values (causal attention), the cross-attention keys and values
are computed once by encode(), and a step attends with its heads side by side (importers/transformer_parts.py).
The attention a step returns is the last layer's cross-attention averaged over heads, as JoeyNMT's
return_attention gives it.
"""

from __future__ import annotations

import math

import torch
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

EPS = 1e-6  # every LayerNorm of JoeyNMT's Transformer layers
# joeynmt.builders.build_activation's choices (its "tanh" is a function it calls as a class: no model has it)
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU}


class _Attention(nn.Module):
    """joeynmt.transformer_layers.MultiHeadedAttention's parameters."""

    def __init__(self, size: int):
        super().__init__()
        self.k_layer, self.v_layer, self.q_layer = (nn.Linear(size, size) for _ in range(3))
        self.output_layer = nn.Linear(size, size)


class _FeedForward(nn.Module):
    def __init__(self, size: int, ff_size: int, activation: str, pre: bool, alpha: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(size, eps=EPS)
        self.pwff_layer = nn.Sequential(nn.Linear(size, ff_size), ACTIVATIONS[activation](), nn.Identity(),
                                        nn.Linear(ff_size, size), nn.Identity())  # the Identities stand for its Dropouts
        self.pre, self.alpha = pre, alpha

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        if self.pre:
            x = self.layer_norm(x)
        x = self.pwff_layer(x) + self.alpha * residual
        return x if self.pre else self.layer_norm(x)


class _Positions(nn.Module):
    def __init__(self, rows: int, size: int):
        super().__init__()
        self.register_buffer("pe", torch.zeros(1, rows, size))


class _EncoderLayer(nn.Module):
    def __init__(self, size: int, ff_size: int, activation: str, pre: bool, alpha: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(size, eps=EPS)
        self.src_src_att = _Attention(size)
        self.feed_forward = _FeedForward(size, ff_size, activation, pre, alpha)


class _DecoderLayer(nn.Module):
    def __init__(self, size: int, ff_size: int, activation: str, pre: bool, alpha: float):
        super().__init__()
        self.trg_trg_att = _Attention(size)
        self.src_trg_att = _Attention(size)
        self.feed_forward = _FeedForward(size, ff_size, activation, pre, alpha)
        self.x_layer_norm = nn.LayerNorm(size, eps=EPS)
        self.dec_layer_norm = nn.LayerNorm(size, eps=EPS)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, size: int, pad: int, scale: bool):
        super().__init__()
        self.lut = nn.Embedding(vocab, size, padding_idx=pad)
        self.factor = math.sqrt(size) if scale else 1.0

    def forward(self, ids: Tensor) -> Tensor:
        x = self.lut(ids)
        return x * self.factor if self.factor != 1.0 else x


class JoeyTransformer(nn.Module):
    """JoeyNMT's Transformer encoder-decoder in the encode()/step() protocol, with a growing key/value cache."""

    def __init__(self, model_cfg: dict, src_vocab: int, trg_vocab: int, src_pad: int, trg_pad: int, position_rows: int):
        super().__init__()
        enc, dec = model_cfg["encoder"], model_cfg["decoder"]
        size = enc["hidden_size"]
        self.size, self.heads = size, enc.get("num_heads", 4)
        self.dec_heads = dec.get("num_heads", 8)
        # JoeyNMT: encoder layers default to pre-norm and decoder layers to post-norm; a final norm only where the
        # config says "pre" (encoders.py, decoders.py of 2.3.0)
        enc_pre, dec_pre = enc.get("layer_norm", "pre") == "pre", dec.get("layer_norm", "post") == "pre"
        self.src_embed = _Embeddings(src_vocab, size, src_pad, enc["embeddings"].get("scale", False))
        self.trg_embed = _Embeddings(trg_vocab, size, trg_pad, dec["embeddings"].get("scale", False))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            _EncoderLayer(size, enc.get("ff_size", 2048), enc.get("activation", "relu"), enc_pre, enc.get("alpha", 1.0))
            for _ in range(enc.get("num_layers", 8)))
        self.encoder.pe = _Positions(position_rows, size)
        self.encoder.layer_norm = nn.LayerNorm(size, eps=EPS) if enc.get("layer_norm") == "pre" else None
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(
            _DecoderLayer(size, dec.get("ff_size", 2048), dec.get("activation", "relu"), dec_pre, dec.get("alpha", 1.0))
            for _ in range(dec.get("num_layers", 4)))
        self.decoder.pe = _Positions(position_rows, size)
        self.decoder.layer_norm = nn.LayerNorm(size, eps=EPS) if dec.get("layer_norm") == "pre" else None
        self.decoder.output_layer = nn.Linear(size, trg_vocab, bias=False)
        self.register_buffer("sums", head_sums(size, self.dec_heads), persistent=False)
        self.enc_pre, self.dec_pre = enc_pre, dec_pre
        self.enc_alpha, self.dec_alpha = enc.get("alpha", 1.0), dec.get("alpha", 1.0)

    def encode(self, src_ids: Tensor, src_lengths: Tensor):
        keep = source_keep(src_ids, src_lengths)
        x = self.src_embed(src_ids) + position_rows(self.encoder.pe.pe[0], src_ids.shape[1])
        for layer in self.encoder.layers:
            residual = x
            h = layer.layer_norm(x) if self.enc_pre else x
            att = layer.src_src_att
            h = self_attention(h, att.q_layer, att.k_layer, att.v_layer, att.output_layer, self.heads, keep, -math.inf)
            x = h + self.enc_alpha * residual
            if not self.enc_pre:
                x = layer.layer_norm(x)
            x = layer.feed_forward(x)
        if self.encoder.layer_norm is not None:
            x = self.encoder.layer_norm(x)
        memory = cross_memory([(layer.src_trg_att.k_layer(x), layer.src_trg_att.v_layer(x)) for layer in self.decoder.layers])
        return memory, empty_cache(x, len(self.decoder.layers), self.size)

    def prepare_steps(self) -> JoeyTransformer:
        """After the checkpoint is loaded: the decoder's query projections take the 1 / sqrt(head) of every step."""
        for layer in self.decoder.layers:
            for att in (layer.trg_trg_att, layer.src_trg_att):
                fold_query_scale(att.q_layer, self.size // self.dec_heads)
        return self

    def step(self, prev_ids: Tensor, state, memory: Tensor, src_mask: Tensor):
        x = self.trg_embed(prev_ids[:, None]) + position_row(self.decoder.pe.pe[0], state[0][0].shape[1])
        bias, new_state, weights = mask_bias(src_mask, -math.inf), [], None
        for i, (layer, (past_k, past_v)) in enumerate(zip(self.decoder.layers, state)):
            residual = x
            h = layer.x_layer_norm(x) if self.dec_pre else x
            att = layer.trg_trg_att
            k, v = torch.cat([past_k, att.k_layer(h)], dim=1), torch.cat([past_v, att.v_layer(h)], dim=1)
            new_state.append((k, v))
            context, _ = attend_step(att.q_layer(h), k, v, self.sums)
            h1 = att.output_layer(context) + self.dec_alpha * residual
            if not self.dec_pre:
                h1 = layer.x_layer_norm(h1)
            h = layer.dec_layer_norm(h1) if self.dec_pre else h1
            cross_k, cross_v = layer_keys_values(memory, i, self.size)
            att = layer.src_trg_att
            context, weights = attend_step(att.q_layer(h), cross_k, cross_v, self.sums, bias)
            h2 = att.output_layer(context) + self.dec_alpha * h1
            if not self.dec_pre:
                h2 = layer.dec_layer_norm(h2)
            x = layer.feed_forward(h2)
        if self.decoder.layer_norm is not None:
            x = self.decoder.layer_norm(x)
        return self.decoder.output_layer(x[:, 0]), tuple(new_state), weights.mean(dim=2)


def position_table_rows(state: dict[str, Tensor]) -> int:
    """How many positions the checkpoint's tables hold (JoeyNMT saves 5,000)."""
    table = state.get("encoder.pe.pe")
    return int(table.shape[1]) if isinstance(table, Tensor) and table.dim() == 3 else 5000
