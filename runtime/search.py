"""Search over decoder steps: greedy, beam and sampling, vectorised over the batch.

The searches know nothing of onnxruntime. They call a `Step` and ask its
result only for what they need: the k best ids per row (greedy: 1; beam: 2 x
beam), the whole distribution (sampling), the attention (when asked). So a
step that keeps its outputs on a GPU sends back a few numbers per row.

Every result is complete: a hypothesis that reaches `max_len` tokens gets one
more step in which only </s> may be chosen, so a score is always the sum of
the log-probabilities of the tokens and </s>. Finished inputs leave the
active batch, so late steps run on fewer rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .options import SearchOptions


class StepResult(Protocol):
    state: Any  # the next decoder state, for the same rows

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs, ids) of the k best ids of every row of log_probs + bias, best first: [n, k] each."""

    def best(self, bias: np.ndarray) -> tuple[float, int]:
        """(log-prob, id) of the best id of a one-row step's log_probs + bias, as Python numbers."""

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        """log_probs + bias [n, V] on the host."""

    def attention(self) -> np.ndarray:
        """Attention weights [n, S] on the host."""


class Stepper(Protocol):
    """One encoded batch as the search sees it (runtime.backend.Stepper implements it)."""

    def __call__(self, prev_ids: np.ndarray, state: Any, rows: np.ndarray) -> StepResult:
        """One decoder step for hypothesis rows; `rows` [n] says which encoded input each row
        belongs to (a new `rows` object means the rows changed)."""

    def take(self, state: Any, index: np.ndarray) -> Any:
        """The state rows at `index` (reorders beams, drops finished rows)."""


@dataclass
class HostStep:
    """A step's outputs as numpy arrays."""

    raw_log_probs: np.ndarray
    state: Any
    raw_attention: np.ndarray

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.raw_log_probs + bias, k)

    def best(self, bias: np.ndarray) -> tuple[float, int]:
        return best_of_row(self.raw_log_probs[0] + bias)

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        return self.raw_log_probs + bias

    def attention(self) -> np.ndarray:
        return self.raw_attention


def best_of_row(scores: np.ndarray) -> tuple[float, int]:
    """The largest entry of one row and its id (the lower id on a tie, like argmax)."""
    token = int(scores.argmax())
    return float(scores[token]), token


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of each row, largest first; ties go to the lower id (like argmax)."""
    if k == 1:  # the greedy hot path: plain indexing is several times cheaper than take_along_axis
        ids = scores.argmax(axis=1)
        return scores[np.arange(ids.size), ids][:, None], ids[:, None]
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, ids, axis=1), ids


@dataclass
class Hypothesis:
    ids: list[int]  # target ids, without <s> and </s>
    score: float  # sum of log-probs of ids and </s>
    attention: np.ndarray | None = None  # [len(ids) + 1, src_len]
    truncated: bool = False  # </s> was forced at max_len


@dataclass
class Limits:
    """Which ids may be chosen at step t: never pad, <s> or the `never` ids; </s> not before min_len;
    only </s> at max_len."""

    bos_id: int
    eos_id: int
    pad_id: int
    vocab: int
    min_len: int = 0
    max_len: int = 64
    never: tuple[int, ...] = ()  # the bundle's conventions.never_emit
    _biases: dict = field(default_factory=dict, repr=False)

    def bias(self, t: int) -> np.ndarray:
        """Additive mask [V]: 0 where allowed, -inf where not."""
        case = "end" if t >= self.max_len else "early" if t < self.min_len else "open"
        if case not in self._biases:
            bias = np.zeros(self.vocab, dtype=np.float32)
            bias[[self.pad_id, self.bos_id, *self.never]] = -np.inf
            if case == "end":
                bias[:] = -np.inf
                bias[self.eos_id] = 0.0
            elif case == "early":
                bias[self.eos_id] = -np.inf
            self._biases[case] = bias
        return self._biases[case]


# A strategy decodes every row of `state`: one n-best list (best first) per input.
# input_ids number the rows' inputs in the decode call (sampling draws depend on them).
Strategy = Callable[[Stepper, Any, np.ndarray, Limits, SearchOptions], list[list[Hypothesis]]]


def greedy(stepper: Stepper, state: Any, input_ids: np.ndarray, limits: Limits, options: SearchOptions) -> list[list[Hypothesis]]:
    """The most likely token at every step, or with options.sample a token drawn at every step
    (temperature, top_k, top_p; draws fixed by seed, input and step)."""
    if len(input_ids) == 1 and not options.sample and not options.return_attention:
        return [[_greedy_one(stepper, state, limits)]]
    record = _Record(len(input_ids), options.return_attention)
    for _ in _greedy_steps(stepper, state, input_ids, limits, options if options.sample else None, record):
        pass
    return [[h] for h in record.hypotheses(limits)]


def stream(stepper: Stepper, state: Any, limits: Limits, options: SearchOptions, input_id: int = 0) -> Iterator[int]:
    """Ids of the single row of `state` as they are chosen (greedy, or sampled when options.sample); </s> is not yielded."""
    draws = options if options.sample else None
    for ids in _greedy_steps(stepper, state, np.array([input_id]), limits, draws, _Record(1, False)):
        token = int(ids[0])
        if token != limits.eos_id:
            yield token


class _Record:
    """What greedy steps chose, per step, for the rows active at that step."""

    def __init__(self, n: int, want_attention: bool):
        self.n, self.want_attention = n, want_attention
        self.chosen: list[np.ndarray] = []
        self.active_at: list[np.ndarray] = []
        self.attn_at: list[np.ndarray] = []
        self.ends = np.zeros(n, dtype=np.int64)
        self.scores = np.zeros(n, dtype=np.float64)

    def hypotheses(self, limits: Limits) -> list[Hypothesis]:
        return _collect(self.chosen, self.active_at, self.attn_at, self.ends, self.scores, limits, self.want_attention)


def _greedy_one(stepper: Stepper, state: Any, limits: Limits) -> Hypothesis:
    """Greedy search of a single input (batch 1, how a device app calls): the same choices and the
    same float64 sum of scores as _greedy_steps, kept in Python numbers, which costs less than half
    of its per-step array bookkeeping (bench/profile_batch1.py)."""
    rows = np.zeros(1, dtype=np.int64)
    prev = np.full(1, limits.bos_id, dtype=np.int64)
    ids: list[int] = []
    score = 0.0
    while True:
        out = stepper(prev, state, rows)
        value, token = out.best(limits.bias(len(ids)))
        score += value
        if token == limits.eos_id:
            return Hypothesis(ids, score, truncated=len(ids) >= limits.max_len)
        ids.append(token)
        state = out.state
        prev = np.full(1, token, dtype=np.int64)


def _greedy_steps(stepper: Stepper, state: Any, input_ids: np.ndarray, limits: Limits, draws: SearchOptions | None,
                  record: _Record) -> Iterator[np.ndarray]:
    """Yields each step's chosen ids (for the rows active at that step) and fills `record`.
    `draws`: sample with these options; None: argmax."""
    n = len(input_ids)
    rows = np.arange(n)  # which input each active row is
    input_ids = np.asarray(input_ids)
    prev = np.full(n, limits.bos_id, dtype=np.int64)
    t = 0
    while rows.size:
        out = stepper(prev, state, rows)
        state = out.state
        bias = limits.bias(t)
        if draws is None:
            values, ids = out.top(1, bias)
            values, ids = values[:, 0], ids[:, 0]
        else:
            log_probs = out.log_probs(bias)
            ids = _sample(log_probs, draws, input_ids[rows], t)
            values = log_probs[np.arange(rows.size), ids]
        record.scores[rows] += values
        record.chosen.append(ids)
        record.active_at.append(rows)
        if record.want_attention:
            record.attn_at.append(np.asarray(out.attention(), dtype=np.float32))
        yield ids
        done = ids == limits.eos_id
        if done.any():
            record.ends[rows[done]] = t
            keep = np.flatnonzero(~done)
            rows, ids = rows[keep], ids[keep]
            if rows.size:
                state = stepper.take(state, keep)
        prev = ids
        t += 1


def _collect(chosen, active_at, attn_at, ends, scores, limits, want_attention) -> list[Hypothesis]:
    n, steps = ends.size, len(chosen)
    table = np.full((n, steps), limits.eos_id, dtype=np.int64)
    for t, (rows, ids) in enumerate(zip(active_at, chosen)):
        table[rows, t] = ids
    attn_table = None
    if want_attention:
        attn_table = np.zeros((n, steps, attn_at[0].shape[1]), dtype=np.float32)
        for t, (rows, att) in enumerate(zip(active_at, attn_at)):
            attn_table[rows, t] = att
    out = []
    for i in range(n):
        end = int(ends[i])
        att = attn_table[i, : end + 1] if want_attention else None
        out.append(Hypothesis(table[i, :end].tolist(), float(scores[i]), att, truncated=end >= limits.max_len))
    return out


def _sample(log_probs: np.ndarray, sampling: SearchOptions, input_ids: np.ndarray, t: int) -> np.ndarray:
    """One id per row from softmax(log_probs / temperature), restricted to top-k and top-p."""
    logits = log_probs / max(sampling.temperature, 1e-6)
    vocab = logits.shape[1]
    if 0 < sampling.top_k < vocab:
        kth = np.partition(logits, vocab - sampling.top_k, axis=1)[:, vocab - sampling.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of strictly better ids
        sorted_probs[before >= sampling.top_p] = 0.0
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_probs, axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
    u = _uniform(sampling.seed, input_ids, t)
    cdf = np.cumsum(probs, axis=1)
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    # Never land on an id of zero probability through rounding at the top of the CDF.
    return np.minimum(ids, np.where(probs > 0, np.arange(vocab), -1).max(axis=1))


def _uniform(seed: int, input_ids: np.ndarray, t: int) -> np.ndarray:
    """Uniform [0, 1) numbers from (seed, input, step) via splitmix64: independent of batching."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             + input_ids.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + np.uint64(t + 1) * np.uint64(0x94D049BB133111EB))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def beam(stepper: Stepper, state: Any, input_ids: np.ndarray, limits: Limits, options: SearchOptions) -> list[list[Hypothesis]]:
    """n-best lists (best first) for every row of `state`, options.beam_size hypotheses kept per input.

    Hypotheses are ranked by score / (len + 1) ** length_penalty, len counting the
    tokens before </s>. With length_penalty 0 an input stops only when no live
    beam can beat its beam-th finished hypothesis, so a beam wide enough to hold
    every prefix is an exhaustive search.
    """
    k, nbest, length_penalty, want_attention = options.beam_size, options.nbest, options.length_penalty, options.return_attention
    n = len(input_ids)
    items = np.arange(n)  # active inputs
    rows = np.repeat(items, k)  # input of each hypothesis row
    state = stepper.take(state, rows)
    scores = np.zeros((n, k))
    scores[:, 1:] = -np.inf  # all beams start as the same <s>; keep one
    history = np.zeros((n * k, 0), dtype=np.int64)
    attn_hist = None
    prev = np.full(n * k, limits.bos_id, dtype=np.int64)
    finished: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(n)]
    best_finished = np.full((n, k), -np.inf)  # per input, its k best ranking scores, best first
    t = 0
    while items.size:
        out = stepper(prev, state, rows)
        state = out.state
        a = items.size
        values, ids = out.top(2 * k, limits.bias(t))  # per row; the item's best 2k are among these
        width = values.shape[1]
        cand = (scores[:, :, None] + values.reshape(a, k, width)).reshape(a, k * width)
        cand_ids = ids.reshape(a, k * width)
        top_scores, top = top_k(cand, min(2 * k, k * width))
        origin = top // width + (np.arange(a) * k)[:, None]  # hypothesis row each candidate extends
        token = np.take_along_axis(cand_ids, top, axis=1)
        is_eos = token == limits.eos_id
        if want_attention:
            step_attn = np.asarray(out.attention(), dtype=np.float32)[:, None, :]
            attn_hist = step_attn if attn_hist is None else np.concatenate([attn_hist, step_attn], axis=1)
        # Candidates ending in </s> within the first k places finish.
        for i, j in zip(*np.nonzero(is_eos[:, :k] & np.isfinite(top_scores[:, :k]))):
            r = origin[i, j]
            hyp = Hypothesis(history[r].tolist(), float(top_scores[i, j]),
                             attn_hist[r].copy() if want_attention else None, truncated=t >= limits.max_len)
            rank = hyp.score / (len(hyp.ids) + 1) ** length_penalty
            finished[items[i]].append((rank, hyp))
            kept = best_finished[items[i]]
            if rank > kept[-1]:
                kept[:] = np.sort(np.append(kept, rank))[::-1][:k]
        # The first k candidates not ending in </s> become the new beams.
        live = ~is_eos & (np.cumsum(~is_eos, axis=1) <= k)
        pick = np.nonzero(live)[1].reshape(a, k)
        new_origin = np.take_along_axis(origin, pick, axis=1).ravel()
        scores = np.take_along_axis(top_scores, pick, axis=1)
        history = np.concatenate([history[new_origin], np.take_along_axis(token, pick, axis=1).reshape(-1, 1)], axis=1)
        state = stepper.take(state, new_origin)
        if want_attention:
            attn_hist = attn_hist[new_origin]
        prev = history[:, -1]
        t += 1
        done = _beam_done(best_finished[items], scores, t, limits, length_penalty)
        if done.any():
            keep = ~done
            keep_rows = np.flatnonzero(np.repeat(keep, k))
            items, scores, rows = items[keep], scores[keep], rows[keep_rows]
            history, prev = history[keep_rows], prev[keep_rows]
            if keep_rows.size:
                state = stepper.take(state, keep_rows)
            if want_attention:
                attn_hist = attn_hist[keep_rows]
    out = []
    for hyps in finished:
        hyps.sort(key=lambda pair: -pair[0])
        out.append([h for _, h in hyps[:nbest]])
    return out


def _beam_done(best_finished, scores, t, limits, length_penalty) -> np.ndarray:
    """Inputs whose search is over: past max_len, no live beam, or beam-many finished that no live beam can beat."""
    if t > limits.max_len:
        return np.ones(scores.shape[0], dtype=bool)
    best_live = scores.max(axis=1)
    # Scores only fall as hypotheses grow, so with length_penalty 0 this bound is exact;
    # with a length penalty it is the usual heuristic.
    bound = best_live / (t + 1) ** length_penalty
    return ~np.isfinite(best_live) | (bound <= best_finished[:, -1])


STRATEGIES: dict[str, Strategy] = {"greedy": greedy, "beam": beam, "sampling": greedy}  # greedy() samples when asked
