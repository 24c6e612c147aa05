"""Ensemble decoding: several bundles of one task decode as one model.

At every step each member runs its own decoder on the same hypothesis rows, and the search sees
one distribution: the log of the members' mean probability (what fairseq's and OpenNMT-py's
ensembles search over). The members share both tokenisers (the same vocabularies, so the ids mean
the same tokens), not their architecture: an LSTM and a GRU of different sizes may be one ensemble.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import Bundle
from .errors import Seq2EdgeError
from .search import Stepper, best_of_row, top_k


def check_members(lead: Bundle, members: list[Bundle]) -> None:
    """Members must tokenise the source and the target exactly as the lead bundle does."""
    for member in members:
        for side in ("source", "target"):
            a, b = getattr(lead.meta, side), getattr(member.meta, side)
            if (a.tokenizer, a.lowercase, list(a.vocab), a.spm_sha256) != (b.tokenizer, b.lowercase, list(b.vocab), b.spm_sha256):
                raise Seq2EdgeError(f"{member.path}: its {side} vocabulary or tokeniser differs from {lead.path}'s; "
                                    "an ensemble's members must share both")
        ids = ("pad_id", "bos_id", "eos_id", "unk_id")
        if [getattr(member.config, i) for i in ids] != [getattr(lead.config, i) for i in ids]:
            raise Seq2EdgeError(f"{member.path}: its special token ids differ from {lead.path}'s")


class EnsembleStep:
    """One step of every member, seen as one: log of the mean of the members' probabilities."""

    def __init__(self, outs: list[Any], no_bias: np.ndarray):
        self._outs = outs
        self.state = tuple(out.state for out in outs)
        self._log_probs = _log_mean_exp(np.stack([out.log_probs(no_bias) for out in outs]))

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self._log_probs + bias, k)

    def best(self, bias: np.ndarray) -> tuple[float, int]:
        return best_of_row(self._log_probs[0] + bias)

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        return self._log_probs + bias

    def attention(self) -> np.ndarray:
        """The members' mean attention (they read the same source tokens)."""
        return np.mean([np.asarray(out.attention(), dtype=np.float32) for out in self._outs], axis=0)


class EnsembleStepper:
    """The search's Stepper over one batch encoded by every member; a state is one per member."""

    def __init__(self, steppers: list[Stepper], vocab: int):
        self.steppers = steppers
        self._no_bias = np.zeros(vocab, dtype=np.float32)

    def __call__(self, prev_ids: np.ndarray, state: tuple, rows: np.ndarray) -> EnsembleStep:
        return EnsembleStep([stepper(prev_ids, s, rows) for stepper, s in zip(self.steppers, state)], self._no_bias)

    def take(self, state: tuple, index: np.ndarray) -> tuple:
        return tuple(stepper.take(s, index) for stepper, s in zip(self.steppers, state))


def _log_mean_exp(log_probs: np.ndarray) -> np.ndarray:
    """log(mean(exp(x))) over the first axis, computed without overflow, in float32."""
    top = log_probs.max(axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (top + np.log(np.exp(log_probs - top).mean(axis=0))).astype(np.float32)
