"""ModelConfig: the one description of a model, from training to the device.

It is created by `seq2edge train`, saved beside the weights as config.json and
copied verbatim into bundle.json. Every size in train, export and runtime is
read from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import BundleError

# The vectors each decoder layer carries in the packed state, by cell: an LSTM also has its memory cell c.
# A new cell type is one entry here and its step equations in train/model.py (Cell).
CELL_STATES = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}
CELLS = tuple(CELL_STATES)
ATTENTIONS = ("dot", "general", "additive")
TOKENIZERS = ("char", "word", "spm")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, vocabulary sizes, special ids and length limits of one model."""

    src_vocab_size: int
    tgt_vocab_size: int
    cell: str = "lstm"
    attention: str = "dot"
    input_feed: bool = False
    layers: int = 1  # encoder layers
    decoder_layers: int = 1
    bidirectional: bool = False
    embed: int = 64
    hidden: int = 256
    dropout: float = 0.0  # between layers and before the output layer, training only
    src_tokens: str = "char"
    tgt_tokens: str = "char"
    lowercase_source: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    max_src_len: int = 64
    max_tgt_len: int = 64

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:  # a wrong type makes the range checks below meaningless (and raise TypeError)
            raise ValueError("invalid model config: " + "; ".join(problems))
        if self.cell not in CELLS:
            problems.append(f"cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention must be one of {', '.join(ATTENTIONS)}, not {self.attention!r}")
        for side in ("src_tokens", "tgt_tokens"):
            if getattr(self, side) not in TOKENIZERS:
                problems.append(f"{side} must be one of {', '.join(TOKENIZERS)}")
        if self.bidirectional and self.hidden % 2:
            problems.append("hidden must be even for a bidirectional encoder (half per direction)")
        for name in ("layers", "decoder_layers", "embed", "hidden", "max_src_len", "max_tgt_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        ids = {name: getattr(self, f"{name}_id") for name in ("pad", "bos", "eos", "unk")}
        smallest = min(self.src_vocab_size, self.tgt_vocab_size)
        if any(not 0 <= i < smallest for i in ids.values()) or len(set(ids.values())) != len(ids):
            problems.append(f"special ids {ids} must be distinct and below both vocabulary sizes "
                            f"({self.src_vocab_size}, {self.tgt_vocab_size})")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @classmethod
    def placeholder(cls, **arch: Any) -> ModelConfig:
        """A config with the smallest vocabularies, to check architecture options before a corpus is read."""
        return cls(src_vocab_size=4, tgt_vocab_size=4, **arch)

    @property
    def cell_states(self) -> tuple[str, ...]:
        """The vectors one decoder layer carries from step to step: ("h",) or ("h", "c")."""
        return CELL_STATES[self.cell]

    @property
    def state_size(self) -> int:
        """Width of the packed decoder state: every layer's h, then every layer's c (LSTM), then the fed vector."""
        return self.decoder_layers * self.hidden * len(self.cell_states) + (self.hidden if self.input_feed else 0)

    @property
    def axis_sizes(self) -> dict[str, int]:
        """The size of each fixed axis of the graph contract (runtime.interface), by axis name."""
        return {"hidden": self.hidden, "state_size": self.state_size, "vocab": self.tgt_vocab_size}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ModelConfig:
        """Build from a dict read from JSON; unknown or missing keys are a BundleError naming `where`."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{where}: unknown model config keys {unknown}; was it written by a newer seq2edge?")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{where}: {exc}") from None


_INTEGER_FIELDS = ("src_vocab_size", "tgt_vocab_size", "layers", "decoder_layers", "embed", "hidden", "pad_id", "bos_id",
                   "eos_id", "unk_id", "max_src_len", "max_tgt_len")


def _type_problems(c: ModelConfig) -> list[str]:
    problems = [f"{name} must be a whole number, not {getattr(c, name)!r}" for name in _INTEGER_FIELDS
                if not isinstance(getattr(c, name), int) or isinstance(getattr(c, name), bool)]
    problems += [f"{name} must be true or false, not {getattr(c, name)!r}" for name in ("input_feed", "bidirectional", "lowercase_source")
                 if not isinstance(getattr(c, name), bool)]
    if not isinstance(c.dropout, (int, float)) or isinstance(c.dropout, bool):
        problems.append(f"dropout must be a number, not {c.dropout!r}")
    problems += [f"{name} must be a string, not {getattr(c, name)!r}" for name in ("cell", "attention", "src_tokens", "tgt_tokens")
                 if not isinstance(getattr(c, name), str)]
    return problems
