"""nn.MultiheadAttention as the ONNX exporter can keep dynamic: every length and the batch size read from the
tensors, never computed as Python numbers.

torch's own forward (F.multi_head_attention_forward) sizes its reshapes with Python arithmetic on the traced
shapes, which the TorchScript exporter records as constants: the key length and the batch size are frozen at
the traced example's (pytorch#135691), and onnxruntime then fails on any other source length. While export traces
a protocol model, `exportable_attention` gives each nn.MultiheadAttention of it this forward instead; the parity
gate then holds the graphs to the model's own PyTorch forward, as for any model.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2edge.runtime.errors import Seq2EdgeError


def _refuse_unsupported(module: nn.MultiheadAttention) -> None:
    if module.bias_k is not None or module.bias_v is not None:
        raise Seq2EdgeError("nn.MultiheadAttention(add_bias_kv=True) is not supported by seq2edge's export")
    if module.add_zero_attn:
        raise Seq2EdgeError("nn.MultiheadAttention(add_zero_attn=True) is not supported by seq2edge's export")


def _projections(module: nn.MultiheadAttention) -> tuple:
    """(weight, bias) of the query, key and value projections."""
    biases = module.in_proj_bias.chunk(3) if module.in_proj_bias is not None else (None, None, None)
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.chunk(3)
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
    return tuple(zip(weights, biases))


def _heads(x: Tensor, heads: int) -> Tensor:
    """[N, L, E] -> [N, heads, L, E / heads], the sizes taken from x."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    """A boolean mask (True: not attended) as -inf, a float mask added."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


def exportable_forward(self: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                       key_padding_mask: Tensor | None = None, need_weights: bool = True, attn_mask: Tensor | None = None,
                       average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
    """nn.MultiheadAttention.forward in eval mode (no dropout), with the same arguments and results."""
    _refuse_unsupported(self)
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    if not self.batch_first or unbatched:  # [L, N, E] -> [N, L, E]
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    (wq, bq), (wk, bk), (wv, bv) = _projections(self)
    q = _heads(F.linear(query, wq, bq), self.num_heads)
    k = _heads(F.linear(key, wk, bk), self.num_heads)
    v = _heads(F.linear(value, wv, bv), self.num_heads)
    scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-2, -1))  # [N, H, L, S]
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(scores.shape[-2], scores.shape[-1], dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        if attn_mask.dim() == 3:  # [N * H, L, S]
            attn_mask = attn_mask.unflatten(0, (-1, self.num_heads))
        scores = _mask(scores, attn_mask)
    if key_padding_mask is not None:
        scores = _mask(scores, key_padding_mask[:, None, None, :])
    weights = torch.softmax(scores, dim=-1)
    out = self.out_proj(torch.matmul(weights, v).transpose(1, 2).flatten(2))  # [N, L, E]
    if not self.batch_first or unbatched:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    weights = weights.mean(dim=1) if average_attn_weights else weights
    return out, weights.squeeze(0) if unbatched else weights


@contextlib.contextmanager
def exportable_attention(model: nn.Module):
    """Every nn.MultiheadAttention in `model` computes with exportable_forward for the block (restored after)."""
    patched = []
    try:
        for module in model.modules():
            if isinstance(module, nn.MultiheadAttention):
                _refuse_unsupported(module)
                module.forward = types.MethodType(exportable_forward, module)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
