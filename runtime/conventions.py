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
from dataclasses import dataclass
from typing import Any

from .errors import BundleError


@dataclass(frozen=True)
class Conventions:
    source_eos: bool = False  # append </s> to every source (it counts toward max_src_len)
    min_len: int = 0  # </s> is not chosen before this many tokens; a larger --min-len still applies
    # Without --max-len, each input's output limit is int(min(max_len_cap, max_len_ratio x its source ids + max_len_offset)),
    # its source ids counting an appended </s>; 0 ratio: the model's max_tgt_len for every input. max_tgt_len always caps it.
    max_len_ratio: float = 0.0
    max_len_offset: float = 0.0
    max_len_cap: int = 0  # 0: no cap but max_tgt_len
    never_emit: tuple[str, ...] = ()  # target tokens no search chooses (besides <pad> and <s>)
    space_symbol: str = ""  # a character-level side's token for a space ("▁"); "": a space is itself

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
        if not isinstance(data, dict):
            raise BundleError(f"{where}: conventions must be an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise BundleError(f"{where}: unknown conventions {unknown}; was it written by a newer seq2edge?")
        problems = []
        for name, value in data.items():
            kind = known[name].type
            if kind == "bool" and not isinstance(value, bool):
                problems.append(f"{name} must be true or false")
            elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                problems.append(f"{name} must be a whole number >= 0")
            elif kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                                      or (name == "max_len_ratio" and value < 0)):
                problems.append(f"{name} must be a finite number" + (" >= 0" if name == "max_len_ratio" else ""))
            elif kind == "str" and not isinstance(value, str):
                problems.append(f"{name} must be a string")
            elif name == "never_emit" and (not isinstance(value, list) or not all(isinstance(t, str) and t for t in value)):
                problems.append("never_emit must be a list of target tokens")
        if problems:
            raise BundleError(f"{where}: invalid conventions: {'; '.join(problems)}")
        values = {k: tuple(v) if k == "never_emit" else float(v) if known[k].type == "float" else v for k, v in data.items()}
        return cls(**values)
