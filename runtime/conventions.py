"""Decoding conventions: how the toolkit a model came from decodes, where it differs from seq2edge.

Toolkits differ in small rules that change outputs: JoeyNMT appends </s> to every source, never
ends a hypothesis at the first step and writes a space as "▁" at the character level; OpenNMT-py
pads its vocabulary with filler tokens no search may choose and sets the default output limit
from the source length. An imported bundle carries its toolkit's rules in bundle.json
("conventions"), both hosts follow them, and a bundle without them decodes as it always did.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .contract import contract, field_problems, rule, say, with_defaults
from .errors import BundleError


@dataclass(frozen=True)
class Conventions:
    SINCE = 2  # the format version that introduced them: a bundle that has them is written as version 2

    source_eos: bool = False  # append </s> to every source (it counts toward max_src_len)
    min_len: int = field(default=0, metadata=rule(minimum=0))  # </s> is not chosen before this many tokens
    # Without --max-len, each input's output limit is int(min(max_len_cap, max_len_ratio x its source ids + max_len_offset)),
    # its source ids counting an appended </s>; 0 ratio: the model's max_tgt_len for every input. max_tgt_len always caps it.
    max_len_ratio: float = field(default=0.0, metadata=rule(minimum=0))
    max_len_offset: float = 0.0
    max_len_cap: int = field(default=0, metadata=rule(minimum=0))  # 0: no cap but max_tgt_len
    never_emit: tuple[str, ...] = ()  # target tokens no search chooses (besides <pad> and <s>)
    space_symbol: str = field(default="", metadata=rule(max_chars=1))  # a character-level side's token for a space ("▁")

    def __post_init__(self) -> None:
        problems = field_problems(contract()["conventions"]["fields"], dataclasses.asdict(self))
        if problems:
            raise ValueError(say("invalid_conventions", problems="; ".join(problems)))

    @property
    def active(self) -> bool:
        """Whether any rule differs from seq2edge's own (a bundle that needs a reader which knows them)."""
        return self != Conventions()

    def max_len(self, source_ids: int, max_tgt_len: int) -> int:
        """The default output limit of an input with `source_ids` ids."""
        if self.max_len_ratio <= 0:
            return max_tgt_len
        limit = self.max_len_ratio * source_ids + self.max_len_offset
        if self.max_len_cap > 0:
            limit = min(limit, self.max_len_cap)
        return max(0, min(max_tgt_len, math.floor(limit)))

    def to_dict(self) -> dict[str, Any]:
        """The rules that differ from the defaults (bundle.json keeps only those)."""
        default = Conventions()
        return {f.name: list(v) if isinstance(v, tuple) else v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) != getattr(default, f.name)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Conventions:
        """Read bundle.json's "conventions"; anything the contract refuses is a BundleError naming `where`."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: {say('conventions_not_object')}")
        specs = contract()["conventions"]["fields"]
        unknown = sorted(set(data) - {s["name"] for s in specs})
        if unknown:
            raise BundleError(f"{where}: {say('unknown_conventions', keys=unknown)}")
        values = with_defaults(specs, data)
        problems = field_problems(specs, values)
        if problems:
            raise BundleError(f"{where}: {say('invalid_conventions', problems='; '.join(problems))}")
        kinds = {s["name"]: s["type"] for s in specs}
        return cls(**{k: tuple(v) if kinds[k] == "list[str]" else float(v) if kinds[k] == "float" else v for k, v in values.items()})
