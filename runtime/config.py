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
from dataclasses import dataclass, field
from typing import Any

from .contract import contract, field_problems, rule, say
from .errors import BundleError

# The vectors each decoder layer carries in the packed state, by cell: an LSTM also has its memory cell c.
# A new cell type is one entry here, one in CELL_GATES and its step equations in train/model.py (Cell).
CELL_STATES = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}
# The blocks of units each cell's weights stack (gates, and the candidate): train/model.py, train/widen.py and
# export/recurrent_loop.py read them from here.
CELL_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = tuple(CELL_STATES)
ATTENTIONS = ("dot", "general", "additive")
TOKENIZERS = ("char", "word", "spm")


def _whole(default: Any = dataclasses.MISSING, minimum: int | None = None) -> Any:
    return field(default=default, metadata=rule(minimum=minimum))


@dataclass(frozen=True, kw_only=True)
class _SharedConfig:
    """What every model's config holds: vocabularies, tokenisers, special ids and length limits.

    Every field's rule (type, default, range) is part of the bundle contract (runtime/contract.py); the
    checks below read the committed contract, as the JavaScript host does."""

    src_vocab_size: int = _whole()
    tgt_vocab_size: int = _whole()
    src_tokens: str = field(default="char", metadata=rule(choices=TOKENIZERS))
    tgt_tokens: str = field(default="char", metadata=rule(choices=TOKENIZERS))
    lowercase_source: bool = False
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    max_src_len: int = _whole(64, minimum=1)
    max_tgt_len: int = _whole(64, minimum=1)

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(say("invalid_model_config", problems="; ".join(problems)))

    @classmethod
    def _contract(cls) -> dict[str, Any]:
        return contract()["model"]["external" if cls is ExternalModelConfig else "own"]

    def problems(self) -> list[str]:
        """Every rule of the contract this config breaks: field by field, then the rules across fields."""
        spec = self._contract()
        problems = field_problems(spec["fields"], {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if problems:
            return problems
        return [p for name in spec["rules"] if (p := _RULES[name](self))]

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config"):
        """Build from a dict read from JSON; unknown, missing or malformed keys are a BundleError naming `where`."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: model config must be a JSON object")  # a checkpoint's config.json
        specs = cls._contract()["fields"]
        unknown = sorted(set(data) - {s["name"] for s in specs})
        if unknown:
            raise BundleError(f"{where}: {say('unknown_model_keys', keys=unknown)}")
        missing = [s["name"] for s in specs if s.get("required") and s["name"] not in data]
        if missing:
            raise BundleError(f"{where}: {say('missing_field', name=missing[0])}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise BundleError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_SharedConfig):
    """Architecture, vocabulary sizes, special ids and length limits of one model."""

    cell: str = field(default="lstm", metadata=rule(choices=CELLS))
    attention: str = field(default="dot", metadata=rule(choices=ATTENTIONS))
    input_feed: bool = False
    layers: int = _whole(1, minimum=1)  # encoder layers
    decoder_layers: int = _whole(1, minimum=1)
    bidirectional: bool = False
    embed: int = _whole(64, minimum=1)
    hidden: int = _whole(256, minimum=1)
    # between layers and before the output layer, training only
    dropout: float = field(default=0.0, metadata=rule(minimum=0, maximum=1, exclusive_maximum=True))

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


@dataclass(frozen=True, kw_only=True)
class ExternalModelConfig(_SharedConfig):
    """A model seq2edge did not train (export_model, the importers): what the graph contract and the
    tokenisers need, and where it came from. Its graphs are traced from the model's own encode() and
    step(); the special ids are seq2edge's (export maps them to the model's inside the graphs)."""

    origin: str  # what made the model, e.g. "pytorch: tutorial_model.TutorialModel"
    memory_size: int = _whole(minimum=1)  # the last axis of the encoder's memory
    state_size: int = _whole(minimum=0)  # the width of the packed decoder state; 0 when bundle.json lists its tensors
    attention_weights: bool = True  # False: step() gave no attention, the graph's attention output is zeros
    max_src_len: int = _whole(256, minimum=1)
    max_tgt_len: int = _whole(256, minimum=1)

    @property
    def axis_sizes(self) -> dict[str, int]:
        return {"hidden": self.memory_size, "state_size": self.state_size, "vocab": self.tgt_vocab_size}

    @property
    def gives_attention(self) -> bool:
        return self.attention_weights


AnyModelConfig = ModelConfig | ExternalModelConfig


def model_config_from_dict(data: Any, where: str = "config") -> AnyModelConfig:
    """The config of bundle.json's "model": external when it names an origin, else seq2edge's own."""
    marker = contract()["model"]["external"]["marker"]
    kind = ExternalModelConfig if isinstance(data, dict) and marker in data else ModelConfig
    return kind.from_dict(data, where)


def _special_ids_problem(c: _SharedConfig) -> str | None:
    ids = c.special_ids
    smallest = min(c.src_vocab_size, c.tgt_vocab_size)
    if any(not 0 <= i < smallest for i in ids.values()) or len(set(ids.values())) != len(ids):
        return say("special_ids", ids=ids, src_vocab_size=c.src_vocab_size, tgt_vocab_size=c.tgt_vocab_size)
    return None


# The rules across fields, by the name the contract lists them under (each host implements each name once).
_RULES = {
    "even_hidden": lambda c: say("even_hidden") if c.bidirectional and c.hidden % 2 else None,
    "special_ids": _special_ids_problem,
    "origin_named": lambda c: None if c.origin else say("origin_named"),
}
