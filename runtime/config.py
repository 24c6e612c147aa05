"""ModelConfig: the one description of a model, from training to the device.

It is created by `seq2edge train`, saved beside the weights as config.json and
copied verbatim into bundle.json. Every size in train, export and runtime is
read from it.

A model trained elsewhere (export_model, the importers) is described by
ExternalModelConfig instead: no cell, layers or attention kind, only the sizes of
the graph contract and where the model came from. `model_config_from_dict` reads
either from bundle.json ("origin" marks the external kind).
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
        if self.bidirectional and self.hidden % 2:
            problems.append("hidden must be even for a bidirectional encoder (half per direction)")
        for name in ("layers", "decoder_layers", "embed", "hidden"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must be in [0, 1)")
        problems += _shared_problems(self)
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

    @property
    def gives_attention(self) -> bool:
        """Whether the decoder's attention output is the model's attention (always, for seq2edge's own)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ModelConfig:
        """Build from a dict read from JSON; unknown or missing keys are a BundleError naming `where`."""
        return _from_dict(cls, data, where)


@dataclass(frozen=True)
class ExternalModelConfig:
    """A model seq2edge did not train (export_model, the importers): what the graph contract and the
    tokenisers need, and where it came from. Its graphs are traced from the model's own encode() and
    step(); the special ids are seq2edge's (export maps them to the model's inside the graphs)."""

    origin: str  # what made the model, e.g. "pytorch: tutorial_model.TutorialModel" or "joeynmt 2.3.0"
    src_vocab_size: int
    tgt_vocab_size: int
    memory_size: int  # the last axis of the encoder's memory
    state_size: int  # the width of the packed decoder state
    attention_weights: bool = True  # False: step() gave no attention, the graph's attention output is zeros
    src_tokens: str = "char"
    tgt_tokens: str = "char"
    lowercase_source: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    max_src_len: int = 256
    max_tgt_len: int = 256

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if not problems:
            problems = [f"{name} must be at least 1" for name in ("memory_size", "state_size") if getattr(self, name) < 1]
            problems += _shared_problems(self)
            if not self.origin:
                problems.append("origin must say what made the model")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def axis_sizes(self) -> dict[str, int]:
        return {"hidden": self.memory_size, "state_size": self.state_size, "vocab": self.tgt_vocab_size}

    @property
    def gives_attention(self) -> bool:
        return self.attention_weights

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ExternalModelConfig:
        return _from_dict(cls, data, where)


AnyModelConfig = ModelConfig | ExternalModelConfig


def model_config_from_dict(data: Any, where: str = "config") -> AnyModelConfig:
    """The config of bundle.json's "model": external when it names an origin, else seq2edge's own."""
    kind = ExternalModelConfig if isinstance(data, dict) and "origin" in data else ModelConfig
    return kind.from_dict(data, where)


def _from_dict(cls, data: Any, where: str):
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


def _shared_problems(c: AnyModelConfig) -> list[str]:
    """The checks both kinds of config need: tokenisers, length limits, special ids."""
    problems = [f"{side} must be one of {', '.join(TOKENIZERS)}" for side in ("src_tokens", "tgt_tokens")
                if getattr(c, side) not in TOKENIZERS]
    problems += [f"{name} must be at least 1" for name in ("max_src_len", "max_tgt_len") if getattr(c, name) < 1]
    ids = {name: getattr(c, f"{name}_id") for name in ("pad", "bos", "eos", "unk")}
    smallest = min(c.src_vocab_size, c.tgt_vocab_size)
    if any(not 0 <= i < smallest for i in ids.values()) or len(set(ids.values())) != len(ids):
        problems.append(f"special ids {ids} must be distinct and below both vocabulary sizes "
                        f"({c.src_vocab_size}, {c.tgt_vocab_size})")
    return problems


def _type_problems(c: AnyModelConfig) -> list[str]:
    """Every field against the type its annotation names (int, bool, float, str)."""
    problems = []
    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{f.name} must be a whole number, not {value!r}")
        elif f.type == "bool" and not isinstance(value, bool):
            problems.append(f"{f.name} must be true or false, not {value!r}")
        elif f.type == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            problems.append(f"{f.name} must be a number, not {value!r}")
        elif f.type == "str" and not isinstance(value, str):
            problems.append(f"{f.name} must be a string, not {value!r}")
    return problems
