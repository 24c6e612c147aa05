"""WER and PER as DESIGN.md defines them, with and without stress digits.

WER: share of inputs whose output matches none of their references.
PER: edit distance (in tokens) to the closest reference over that reference's
length, both summed over the corpus.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_STRESS = re.compile(r"\d")


@dataclass
class Scores:
    wer: float  # percent
    per: float  # percent
    words: int

    def __str__(self) -> str:
        return f"WER {self.wer:.2f}%  PER {self.per:.2f}%  ({self.words} inputs)"


def strip_stress(tokens: Sequence[str]) -> list[str]:
    return [_STRESS.sub("", t) for t in tokens]


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def closest(hyp: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[int, int]:
    """(edit distance, reference length) of the reference closest to hyp; ties go to the shorter one."""
    return min((edit_distance(hyp, ref), len(ref)) for ref in refs)


def score(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]) -> Scores:
    errors = edits = length = 0
    for hyp, rs in zip(hyps, refs, strict=True):
        distance, n = closest(hyp, rs)
        errors += distance > 0
        edits += distance
        length += n
    words = len(hyps)
    return Scores(100.0 * errors / max(words, 1), 100.0 * edits / max(length, 1), words)


def score_both(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]]) -> dict[str, Scores]:
    """Scores as given and with stress digits stripped from every token."""
    stressless_refs = [[strip_stress(r) for r in rs] for rs in refs]
    return {
        "stress": score(hyps, refs),
        "stressless": score([strip_stress(h) for h in hyps], stressless_refs),
    }
