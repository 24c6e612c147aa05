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
from torch import Tensor, nn

from seq2edge.runtime.config import CELL_GATES, ModelConfig

from .config import WIDENED
from .model import Seq2SeqModule


def parameter_roles(model: Seq2SeqModule) -> dict[str, tuple]:
    """Each parameter's name in the state dict -> its role, read off the model's modules (not its name):
    (part, layer, the parameter's own name in its module), e.g. ("encoder_rnn", 1, "weight_hh_l0")."""
    parts: list[tuple[nn.Module, str, int | None]] = [
        (model.encoder.embedding, "src_embedding", None), (model.embedding, "tgt_embedding", None),
        (model.bridge, "bridge", None), (model.out, "out", None),
        *[(rnn, "encoder_rnn", i) for i, rnn in enumerate(model.encoder.forward_rnns)],
        *[(rnn, "encoder_rnn", i) for i, rnn in enumerate(getattr(model.encoder, "backward_rnns", []))],
        *[(cell, "cell", i) for i, cell in enumerate(model.cells)],
        *[(getattr(model.attention, name), f"attention_{name}", None) for name in ("query", "key", "v")
          if hasattr(model.attention, name)],
        *([(model.combine, "combine", None)] if hasattr(model, "combine") else []),
    ]
    owner = {id(module): name for name, module in model.named_modules()}
    roles = {}
    for module, part, layer in parts:
        for own, sub in module.named_modules():  # a decoder cell's Linear layers: x2h, h2h or linear
            for pname, _ in sub.named_parameters(recurse=False):
                roles[".".join(filter(None, (owner[id(module)], own, pname)))] = (part, layer, ".".join(filter(None, (own, pname))))
    missing = set(model.state_dict()) - set(roles)
    if missing:
        raise ValueError(f"widening does not know the parameters {sorted(missing)}")
    return roles


def widen_state(old: dict[str, Tensor], old_config: ModelConfig, wide: Seq2SeqModule) -> dict[str, Tensor]:
    """The trained weights `old` placed in the freshly initialised weights of the wider model `wide`."""
    fresh = wide.state_dict()
    if set(old) != set(fresh):
        raise ValueError(f"the checkpoint's weights and the wider model's differ in names: "
                         f"{sorted(set(old) ^ set(fresh))}")
    maps = _AxisMaps(old_config, wide.config)
    state = {}
    for name, role in parameter_roles(wide).items():
        rows, cols = maps.of(role)
        value = fresh[name].clone()
        if value.dim() == 2:
            if not role[0].endswith("embedding"):  # an embedding's columns are its outputs, not inputs
                value[rows.unsqueeze(1), _unmapped(cols, value.size(1)).unsqueeze(0)] = 0.0  # new units -> old units
            value[rows.unsqueeze(1), cols.unsqueeze(0)] = old[name]
        else:
            value[rows] = old[name]
        if maps.silent(role):
            value[_unmapped(rows, value.size(0))] = 0.0
        state[name] = value
    return state


def new_positions(old: ModelConfig, wide: Seq2SeqModule) -> dict[str, tuple[Tensor, Tensor | None]]:
    """The rows and columns of each parameter of the wider model `wide` that the widening added."""
    maps, shapes = _AxisMaps(old, wide.config), {k: v.shape for k, v in wide.state_dict().items()}
    out = {}
    for name, role in parameter_roles(wide).items():
        rows, cols = maps.of(role)
        out[name] = _unmapped(rows, shapes[name][0]), (None if cols is None else _unmapped(cols, shapes[name][1]))
    return out


def _unmapped(index: Tensor, size: int) -> Tensor:
    """The positions of an axis of `size` that `index` (the old units' places) leaves out: the new units."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[index] = False
    return keep.nonzero().flatten()


class _AxisMaps:
    """For each parameter's role, where each old row and column lands in the wider one."""

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
        return torch.cat([g * new_width + units for g in range(CELL_GATES[self.old.cell])])

    def concat(self, *parts: tuple[Tensor, int]) -> Tensor:
        """Segments laid end to end: (old-units map, the segment's new width) each."""
        out, offset = [], 0
        for units, new_width in parts:
            out.append(offset + units)
            offset += new_width
        return torch.cat(out)

    def of(self, role: tuple) -> tuple[Tensor, Tensor | None]:
        """(rows, columns) of the parameter with `role` (parameter_roles); columns None for vectors."""
        o, n = self.old, self.new
        part, layer, param = role
        hid, emb = (self.hidden(), n.hidden), (self.embed(), n.embed)
        vector = param.rsplit(".", 1)[-1].startswith("bias")  # bias, bias_ih_l0, bias_hh_l0
        if part.endswith("embedding"):  # [vocabulary, embed]
            return torch.arange(o.tgt_vocab_size if part == "tgt_embedding" else o.src_vocab_size), emb[0]
        if part == "encoder_rnn":  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 of one direction's layer
            d_units = self.direction()
            rows = self.gated(d_units, n.hidden // 2 if n.bidirectional else n.hidden)
            if vector:
                return rows, None
            return rows, d_units if param.startswith("weight_hh") else (emb[0] if layer == 0 else hid[0])
        if part == "bridge":  # [every layer's h (and c)] <- the encoder's summary
            return self.concat(*[hid] * (o.decoder_layers * len(o.cell_states))), (None if vector else hid[0])
        if part == "cell":  # x2h, h2h (GRU) or linear (the others): the cell's Linear layers
            rows = self.gated(hid[0], n.hidden)
            if vector:
                return rows, None
            inputs = ([emb, hid] if o.input_feed else [emb]) if layer == 0 else [hid]
            if param.startswith("h2h"):
                return rows, hid[0]
            return rows, self.concat(*(inputs + ([hid] if param.startswith("linear") else [])))
        if part.startswith("attention_"):  # query/key [hidden, hidden], v [1, hidden]
            return (torch.arange(1) if part == "attention_v" else hid[0]), (None if vector else hid[0])
        if part == "combine":  # tanh(W_c [h; context])
            return hid[0], (None if vector else self.concat(hid, hid))
        if part == "out":
            rows = torch.arange(o.tgt_vocab_size)
            return rows, (None if vector else hid[0] if o.input_feed else self.concat(hid, hid))
        raise ValueError(f"widening does not know the part {part!r}")

    def silent(self, role: tuple) -> bool:
        """Whether the new rows start at zero: the encoder's recurrent layers under dot attention, the query's
        under general attention (there memory and query meet without a weight between them)."""
        if self.new.attention == "general":
            return role[0] == "attention_query" and role[2] == "weight"
        return self.new.attention == "dot" and role[0] == "encoder_rnn"


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
    return widen_state(weights, old, model)
