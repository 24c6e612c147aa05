"""SearchOptions: how one decode call searches, as one frozen, validated value.

Built once (from keywords by `Seq2Seq.decode`/`stream`, or from flags by the
CLI) and passed unchanged down to the search strategy, in the way
CTranslate2's `TranslationOptions` travels into `translate_batch`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from .errors import OptionError

ERROR_MODES = ("raise", "return")


@dataclass(frozen=True)
class SearchOptions:
    """Search strategy and its settings, batching, and what to do with a bad input."""

    beam_size: int = 1  # 1: greedy (or sampling); more: beam search
    nbest: int = 1  # hypotheses returned per input, best first (<= beam_size)
    max_len: int | None = None  # most target tokens; None: the model's max_tgt_len
    min_len: int = 0  # fewest target tokens before </s> may be chosen
    length_penalty: float = 0.0  # beam ranking: score / (len + 1) ** length_penalty
    sample: bool = False  # draw tokens instead of searching
    temperature: float = 1.0
    top_k: int = 0  # sample among the k most likely tokens (0: all)
    top_p: float = 1.0  # sample within the smallest set holding this probability
    seed: int = 0  # sampling draws depend on (seed, input position, step) only
    batch_size: int = 64  # inputs per onnxruntime call; results never depend on it
    return_attention: bool = False
    errors: str = "raise"  # "raise" at the first bad input, or "return" it as a Result with `error`

    def __post_init__(self) -> None:
        problems = _type_problems(self)
        if problems:  # a wrong type makes the range checks below meaningless
            raise OptionError("; ".join(problems))
        if self.beam_size < 1:
            problems.append("beam_size must be at least 1")
        if not 1 <= self.nbest <= max(self.beam_size, 1):
            problems.append(f"nbest must be between 1 and beam_size ({self.beam_size})")
        if self.batch_size < 1:
            problems.append("batch_size must be at least 1")
        if self.sample and self.beam_size > 1:
            problems.append("sampling and beam search cannot be combined; use beam_size=1 with sample=True")
        if not 0 < self.temperature < math.inf or self.top_k < 0 or not 0 < self.top_p <= 1:
            problems.append("temperature must be a finite number > 0, top_k >= 0 and 0 < top_p <= 1")
        if not math.isfinite(self.length_penalty):
            problems.append("length_penalty must be a finite number")
        if self.errors not in ERROR_MODES:
            problems.append(f"errors must be one of {', '.join(map(repr, ERROR_MODES))}")
        if (self.max_len is not None and self.max_len < 0) or self.min_len < 0:
            problems.append("max_len and min_len must not be negative")
        if problems:
            raise OptionError("; ".join(problems))

    @property
    def strategy(self) -> str:
        """The name of the search in `search.STRATEGIES` these options select."""
        if self.sample:
            return "sampling"
        return "beam" if self.beam_size > 1 else "greedy"

    @classmethod
    def of(cls, options: SearchOptions | Mapping[str, Any] | None = None, **changes: Any) -> SearchOptions:
        """`options` (default: the defaults; a mapping of field names is read as keywords) with `changes`
        applied; an unknown name or a wrong type is an OptionError."""
        if isinstance(options, Mapping):
            options, changes = None, {**options, **changes}
        elif options is not None and not isinstance(options, SearchOptions):
            raise OptionError(f"options must be a SearchOptions value or a dict of its fields, not {type(options).__name__}")
        base = options if options is not None else _DEFAULTS
        if not changes:  # the batch-1 hot path: nothing to check or build
            return base
        unknown = sorted(str(name) for name in set(changes) - _FIELDS)
        if unknown:
            raise OptionError(f"unknown search option(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        return dataclasses.replace(base, **changes)


_INTEGERS = ("beam_size", "nbest", "min_len", "top_k", "seed", "batch_size")
_NUMBERS = ("length_penalty", "temperature", "top_p")
_FLAGS = ("sample", "return_attention")


def _type_problems(o: SearchOptions) -> list[str]:
    """What has the wrong type: whole numbers (not bools, not 2.5), numbers, flags, max_len None or whole."""
    def whole(v: Any) -> bool:
        return isinstance(v, Integral) and not isinstance(v, bool)

    problems = [f"{name} must be a whole number, not {getattr(o, name)!r}" for name in _INTEGERS if not whole(getattr(o, name))]
    problems += [f"{name} must be a number, not {getattr(o, name)!r}" for name in _NUMBERS
                 if not isinstance(getattr(o, name), Real) or isinstance(getattr(o, name), bool)]
    problems += [f"{name} must be True or False, not {getattr(o, name)!r}" for name in _FLAGS if not isinstance(getattr(o, name), bool)]
    if o.max_len is not None and not whole(o.max_len):
        problems.append(f"max_len must be None or a whole number, not {o.max_len!r}")
    if not isinstance(o.errors, str):
        problems.append(f"errors must be one of {', '.join(map(repr, ERROR_MODES))}, not {o.errors!r}")
    return problems


_FIELDS = frozenset(f.name for f in dataclasses.fields(SearchOptions))
_DEFAULTS = SearchOptions()  # frozen, so one instance serves every call that changes nothing
