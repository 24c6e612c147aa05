"""What the toolkit Transformers share once rebuilt in the encode()/step() protocol.

A decoder step attends over its own earlier positions through a key/value cache, one [B, t, d] pair per layer
(heads side by side on the last axis), which the state carries and each step lengthens by one (bundle format 3,
docs/own-model.md "Transformers"). The cross-attention keys and values depend on the source alone: encode()
computes them once per decoder layer and hands them over in the memory, [B, S, layers x 2 x d], instead of the
encoder's outputs.

A step's attention is computed with the heads side by side (`attend_step`): per-head dot products as an
elementwise product summed within each head by a [d, heads] matrix of ones. The graph then needs no reshape or
transpose of keys and values, whose shape arithmetic made up most of a decoder step's onnxruntime nodes (a
2 + 2-layer d 64 step had ~110 nodes, ~80 of them Shape, Gather, Unsqueeze, Concat, Reshape and Transpose).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, heads x head] -> [B, heads, T, head]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, heads, T, head] -> [B, T, heads x head]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def source_keep(src_ids: Tensor, src_lengths: Tensor) -> Tensor:
    """[B, 1, 1, S]: True at a source's real positions (what an encoder's self-attention may attend to)."""
    return (torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None])[:, None, None, :]


def self_attention(h: Tensor, query: nn.Linear, keys: nn.Linear, values: nn.Linear, output: nn.Linear, heads: int,
                   keep: Tensor, fill: float) -> Tensor:
    """Every position of an encoder layer's input [B, S, d] attending over all of them, heads split as both toolkits
    split them: q / sqrt(head) before the product, `fill` (the toolkit's) in the masked scores (keep: source_keep())."""
    q = split_heads(query(h), heads) / math.sqrt(query.out_features // heads)
    scores = (q @ split_heads(keys(h), heads).transpose(-2, -1)).masked_fill(~keep, fill)
    return output(merge_heads(torch.softmax(scores, dim=-1) @ split_heads(values(h), heads)))


def head_sums(size: int, heads: int) -> Tensor:
    """[d, heads]: 1 where feature j belongs to head h (heads are consecutive blocks of d / heads features)."""
    return (torch.arange(size)[:, None] // (size // heads) == torch.arange(heads)[None, :]).float()


def attend_step(q: Tensor, k: Tensor, v: Tensor, sums: Tensor, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One query position per row over K keys, heads side by side: q [B, 1, d] (already divided by sqrt(head)),
    k and v [B, K, d], sums head_sums(); bias [B, K, 1] (mask_bias()) added to every head's scores.
    -> (context [B, 1, d], weights [B, K, heads])."""
    scores = (k * q) @ sums  # [B, K, heads]: each head's dot product
    if bias is not None:
        scores = scores + bias
    weights = torch.softmax(scores, dim=1)
    return ((weights @ sums.t()) * v).sum(dim=1, keepdim=True), weights


def mask_bias(src_mask: Tensor, fill: float) -> Tensor:
    """[B, S, 1]: 0 where a source position may be attended to, `fill` (what the toolkit writes into masked scores)
    where not; computed once per step for every layer."""
    return torch.where(src_mask, 0.0, fill)[:, :, None]


def fold_query_scale(linear: nn.Linear, head: int) -> None:
    """Divide a query projection's weights (and bias) by sqrt(head), once, where the toolkit divides its output at every
    step: the same values to float32 rounding, one node fewer per attention in the step graph."""
    with torch.no_grad():
        linear.weight /= math.sqrt(head)
        if linear.bias is not None:
            linear.bias /= math.sqrt(head)


def empty_cache(batch_of: Tensor, layers: int, size: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """Every layer's self-attention keys and values before the first step: [B, 0, d] each, of the type and batch of
    `batch_of` (a float tensor of the encoder)."""
    empty = batch_of.new_zeros(batch_of.shape[0], 0, size)
    return tuple((empty, empty) for _ in range(layers))


def cross_memory(keys_values: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The memory a step reads its cross-attention from: every decoder layer's projected keys and values, [B, S, 2 L d]."""
    return torch.cat([t for pair in keys_values for t in pair], dim=2)


def layer_keys_values(memory: Tensor, layer: int, size: int) -> tuple[Tensor, Tensor]:
    """Layer `layer`'s cross-attention keys and values back out of the memory, [B, S, d] each."""
    start = 2 * layer * size
    return memory[:, :, start : start + size], memory[:, :, start + size : start + 2 * size]


def position_rows(table: Tensor, length) -> Tensor:
    """The first `length` rows (a traced size) of a [positions, d] table, as [1, length, d]."""
    return table[:length].unsqueeze(0)


def position_row(table: Tensor, position) -> Tensor:
    """Row `position` (a traced size: the cache's length) of a [positions, d] table, [d]: one Gather in the graph."""
    return table[position]
