"""A trained model's weights in a wider model of the same kind (`seq2edge train --init-from CKPT --hidden N`).

The wider model starts computing exactly what the trained one computes (Net2Net's idea, Chen et al.
2016, in its simplest form): every old unit keeps its weights, a new unit gets the fresh model's
random weights into it, and every weight from a new unit into an old one starts at zero, so old
units never see the new ones until training moves those weights. Attention's score multiplies the
encoder's memory with the decoder's state (dot) or with its query (general) with no weight between
them to zero, so there one side's new units start silent instead: under dot attention the encoder's
(all weights into them zero: a GRU, LSTM or tanh RNN unit with zero weights stays at zero), under
general attention the query's. Their weights still learn: the gradient reaches them through the
other side's new units.

An axis of `hidden` units is laid out [forward half; backward half] when the encoder is
bidirectional, and the decoder's state shares that layout (dot attention multiplies the two
elementwise), so old unit j of a half keeps its place within its half."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from seq2edge.runtime.config import ModelConfig

from .config import WIDENED

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def widen_state(old: dict[str, Tensor], old_config: ModelConfig, fresh: dict[str, Tensor],
                new_config: ModelConfig) -> dict[str, Tensor]:
    """The trained weights `old` placed in the freshly initialised weights `fresh` of the wider model."""
    if set(old) != set(fresh):
        raise ValueError(f"the checkpoint's weights and the wider model's differ in names: "
                         f"{sorted(set(old) ^ set(fresh))}")
    maps = _AxisMaps(old_config, new_config)
    state = {}
    for name, new in fresh.items():
        rows, cols = maps.of(name)
        value = new.clone()
        if value.dim() == 2:
            if not name.endswith("embedding.weight"):  # an embedding's columns are its outputs, not inputs
                value[rows.unsqueeze(1), _unmapped(cols, value.size(1)).unsqueeze(0)] = 0.0  # new units -> old units
            value[rows.unsqueeze(1), cols.unsqueeze(0)] = old[name]
        else:
            value[rows] = old[name]
        if maps.silent(name):
            value[_unmapped(rows, value.size(0))] = 0.0
        state[name] = value
    return state


def new_positions(name: str, old: ModelConfig, new: ModelConfig, shape: torch.Size) -> tuple[Tensor, Tensor | None]:
    """The rows and columns of parameter `name` (of `shape` in the wider model) that the widening added."""
    rows, cols = _AxisMaps(old, new).of(name)
    return _unmapped(rows, shape[0]), (None if cols is None else _unmapped(cols, shape[1]))


def _unmapped(index: Tensor, size: int) -> Tensor:
    """The positions of an axis of `size` that `index` (the old units' places) leaves out: the new units."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[index] = False
    return keep.nonzero().flatten()


class _AxisMaps:
    """For each parameter, where each old row and column lands in the wider one."""

    def __init__(self, old: ModelConfig, new: ModelConfig):
        self.old, self.new = old, new

    def hidden(self) -> Tensor:
        """Old `hidden` units: [forward; backward] halves when the encoder is bidirectional."""
        if not self.old.bidirectional:
            return torch.arange(self.old.hidden)
        half, new_half = self.old.hidden // 2, self.new.hidden // 2
        return torch.cat([torch.arange(half), new_half + torch.arange(half)])

    def direction(self) -> Tensor:
        """Old units of one encoder direction."""
        return torch.arange(self.old.hidden // 2 if self.old.bidirectional else self.old.hidden)

    def embed(self) -> Tensor:
        return torch.arange(self.old.embed)

    def gated(self, units: Tensor, new_width: int) -> Tensor:
        """A recurrent layer's stacked gates: each gate's block of units maps like the units."""
        return torch.cat([g * new_width + units for g in range(GATES[self.old.cell])])

    def concat(self, *parts: tuple[Tensor, int]) -> Tensor:
        """Segments laid end to end: (old-units map, the segment's new width) each."""
        out, offset = [], 0
        for units, new_width in parts:
            out.append(offset + units)
            offset += new_width
        return torch.cat(out)

    def of(self, name: str) -> tuple[Tensor, Tensor | None]:
        """(rows, columns) of parameter `name`; columns None for vectors."""
        o, n = self.old, self.new
        hid, emb = (self.hidden(), n.hidden), (self.embed(), n.embed)
        d_units = self.direction()
        d_new = n.hidden // 2 if n.bidirectional else n.hidden
        parts = name.split(".")
        if name.endswith("embedding.weight"):  # either side's embedding: [vocabulary, embed]
            return torch.arange(o.tgt_vocab_size if name == "embedding.weight" else o.src_vocab_size), emb[0]
        if parts[0] == "encoder":  # encoder.{forward,backward}_rnns.L.{weight,bias}_{ih,hh}_l0
            layer, kind = int(parts[2]), parts[3]
            rows = self.gated(d_units, d_new)
            if kind.startswith("bias"):
                return rows, None
            if kind.startswith("weight_hh"):
                return rows, d_units
            return rows, emb[0] if layer == 0 else hid[0]
        if parts[0] == "bridge":  # [every layer's h (and c)] <- the encoder's summary
            rows = self.concat(*[hid] * (o.decoder_layers * len(o.cell_states)))
            return rows, (hid[0] if parts[1] == "weight" else None)
        if parts[0] == "cells":  # cells.L.{x2h,h2h,linear}.{weight,bias}
            layer, kind = int(parts[1]), parts[2]
            rows = self.gated(hid[0], n.hidden)
            if parts[3] == "bias":
                return rows, None
            inputs = [emb, hid] if o.input_feed else [emb]
            inputs = inputs if layer == 0 else [hid]
            if kind == "h2h":
                return rows, hid[0]
            return rows, self.concat(*(inputs + ([hid] if kind == "linear" else [])))
        if parts[0] == "attention":  # query/key [hidden, hidden], v [1, hidden]
            rows = torch.arange(1) if parts[1] == "v" else hid[0]
            return rows, (hid[0] if parts[2] == "weight" else None)
        if parts[0] == "combine":  # tanh(W_c [h; context])
            return hid[0], (self.concat(hid, hid) if parts[1] == "weight" else None)
        if parts[0] == "out":
            rows = torch.arange(o.tgt_vocab_size)
            if parts[1] == "bias":
                return rows, None
            return rows, (hid[0] if o.input_feed else self.concat(hid, hid))
        raise ValueError(f"widening does not know the parameter {name!r}")

    def silent(self, name: str) -> bool:
        """Whether the new rows of `name` start at zero: the encoder's recurrent layers under dot attention,
        the query's under general attention (there memory and query meet without a weight between them)."""
        if self.new.attention == "general":
            return name == "attention.query.weight"
        return self.new.attention == "dot" and name.startswith("encoder.") and "rnns" in name


def widened_config(old: ModelConfig, sizes: dict[str, int]) -> ModelConfig:
    """The checkpoint's config with `sizes` (hidden, embed) grown; shrinking is refused."""
    for name, size in sizes.items():
        if name not in WIDENED:
            raise ValueError(f"--init-from can widen {' and '.join(WIDENED)}, not {name}")
        if size < getattr(old, name):
            raise ValueError(f"--init-from: --{name} {size} is smaller than the checkpoint's {getattr(old, name)}; "
                             f"a model can be widened, not narrowed")
    return ModelConfig.from_dict({**old.to_dict(), **sizes}, where="--init-from with wider sizes")


def initial_weights(checkpoint: Path, model: torch.nn.Module, log: Callable[[str], None]) -> dict[str, Tensor]:
    """--init-from: the checkpoint's weights for `model`, widened when its sizes are larger."""
    from .checkpoint import load_tensors, read_json

    weights = load_tensors(checkpoint / "model.safetensors")
    old = ModelConfig.from_dict(read_json(checkpoint / "config.json"), where=str(checkpoint / "config.json"))
    new = model.config
    if old == new:
        return weights
    log(f"widening {checkpoint}: " + ", ".join(f"{name} {getattr(old, name)} -> {getattr(new, name)}"
                                               for name in WIDENED if getattr(old, name) != getattr(new, name)))
    return widen_state(weights, old, model.state_dict(), new)
