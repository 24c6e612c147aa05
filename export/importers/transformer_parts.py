"""What the toolkit Transformers share once rebuilt in the encode()/step() protocol.

A decoder step attends over its own earlier positions through a key/value cache, one [B, heads, t, head] pair per
layer, which the state carries and each step lengthens by one (bundle format 3, docs/own-model.md "Transformers").
The cross-attention keys and values depend on the source alone: encode() computes them once per decoder layer and
hands them over in the memory, [B, S, layers x 2 x d], instead of the encoder's outputs.
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


def attend(q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, fill: float = -math.inf) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention over [B, heads, *, head] (q already divided by sqrt(head), as both toolkits do
    before the product): (context [B, heads, T, head], weights [B, heads, T, K]). keep: [B, 1, 1, K], True where a key
    may be attended to; `fill` is what the toolkit writes into the other scores."""
    scores = q @ k.transpose(-2, -1)
    if keep is not None:
        scores = scores.masked_fill(~keep, fill)
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def empty_cache(batch_of: Tensor, layers: int, heads: int, head: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """Every layer's self-attention keys and values before the first step: [B, heads, 0, head] each, of the type and
    batch of `batch_of` (a float tensor of the encoder)."""
    empty = batch_of.new_zeros(batch_of.shape[0], heads, 0, head)
    return tuple((empty, empty) for _ in range(layers))


def cross_memory(keys_values: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The memory a step reads its cross-attention from: every decoder layer's projected keys and values, [B, S, 2 L d]."""
    return torch.cat([t for pair in keys_values for t in pair], dim=2)


def layer_keys_values(memory: Tensor, layer: int, size: int) -> tuple[Tensor, Tensor]:
    """Layer `layer`'s cross-attention keys and values back out of the memory, [B, S, d] each."""
    start = 2 * layer * size
    return memory[:, :, start : start + size], memory[:, :, start + size : start + 2 * size]


def position_rows(table: Tensor, start: Tensor | int, length: int) -> Tensor:
    """Rows start .. start+length-1 of a [positions, d] table as [1, length, d]; `start` may be a traced size."""
    return table[start : start + length].unsqueeze(0)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}
