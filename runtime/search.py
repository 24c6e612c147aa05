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


class StepResult(Protocol):
    state: Any  # the next decoder state, for the same rows

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-probs, ids) of the k best ids of every row of log_probs + bias, best first: [n, k] each."""

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        """log_probs + bias [n, V] on the host."""

    def attention(self) -> np.ndarray:
        """Attention weights [n, S] on the host."""


# step(prev_ids [n], state, rows [n]) -> StepResult. `rows` says which encoded input each
# hypothesis belongs to, so the step can feed the matching memory and mask; a new `rows`
# object means the rows changed.
Step = Callable[[np.ndarray, Any, np.ndarray], StepResult]
# take(state, index) -> the state rows at index (numpy indexing here; a gather on the device on GPU).
Take = Callable[[Any, np.ndarray], Any]


def take_rows(state: np.ndarray, index: np.ndarray) -> np.ndarray:
    return state[index]


@dataclass
class HostStep:
    """A step's outputs as numpy arrays."""

    raw_log_probs: np.ndarray
    state: Any
    raw_attention: np.ndarray

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.raw_log_probs + bias, k)

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        return self.raw_log_probs + bias

    def attention(self) -> np.ndarray:
        return self.raw_attention


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
    """Which ids may be chosen at step t: never pad or <s>; </s> not before min_len; only </s> at max_len."""

    bos_id: int
    eos_id: int
    pad_id: int
    vocab: int
    min_len: int = 0
    max_len: int = 64
    _biases: dict = field(default_factory=dict, repr=False)

    def bias(self, t: int) -> np.ndarray:
        """Additive mask [V]: 0 where allowed, -inf where not."""
        case = "end" if t >= self.max_len else "early" if t < self.min_len else "open"
        if case not in self._biases:
            bias = np.zeros(self.vocab, dtype=np.float32)
            bias[[self.pad_id, self.bos_id]] = -np.inf
            if case == "end":
                bias[:] = -np.inf
                bias[self.eos_id] = 0.0
            elif case == "early":
                bias[self.eos_id] = -np.inf
            self._biases[case] = bias
        return self._biases[case]


@dataclass
class Sampling:
    """Sampling settings; `seed` makes draws depend only on (seed, input index, step)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def greedy(step: Step, state: Any, limits: Limits, want_attention: bool = False, sampling: Sampling | None = None,
           input_ids: np.ndarray | None = None, take: Take = take_rows) -> list[Hypothesis]:
    """Greedy (or sampled, when `sampling` is given) decoding of every row of `state`.

    `input_ids` number the rows for sampling's random draws (default 0..n-1)."""
    *_, hypotheses = _greedy_steps(step, state, limits, want_attention, sampling, input_ids, take)
    return hypotheses


def stream(step: Step, state: Any, limits: Limits, sampling: Sampling | None = None,
           input_id: int = 0, take: Take = take_rows) -> Iterator[int]:
    """Ids of the single row of `state` as they are chosen; </s> is not yielded."""
    for event in _greedy_steps(step, state, limits, False, sampling, np.array([input_id]), take):
        if isinstance(event, np.ndarray):
            token = int(event[0])
            if token != limits.eos_id:
                yield token


def _greedy_steps(step, state, limits, want_attention, sampling, input_ids, take):
    """Generator of each step's chosen ids, then (last) the list of hypotheses."""
    n = len(input_ids) if input_ids is not None else _rows_of(state)
    rows = np.arange(n)  # which input each active row is
    input_ids = np.arange(n) if input_ids is None else np.asarray(input_ids)
    prev = np.full(n, limits.bos_id, dtype=np.int64)
    scores = np.zeros(n, dtype=np.float64)
    chosen: list[np.ndarray] = []  # per step: ids of the rows active at that step
    active_at: list[np.ndarray] = []
    attn_at: list[np.ndarray] = []
    ends = np.zeros(n, dtype=np.int64)
    t = 0
    while rows.size:
        out = step(prev, state, rows)
        state = out.state
        bias = limits.bias(t)
        if sampling is None:
            values, ids = out.top(1, bias)
            values, ids = values[:, 0], ids[:, 0]
        else:
            log_probs = out.log_probs(bias)
            ids = _sample(log_probs, sampling, input_ids[rows], t)
            values = log_probs[np.arange(rows.size), ids]
        scores[rows] += values
        chosen.append(ids)
        active_at.append(rows)
        if want_attention:
            attn_at.append(np.asarray(out.attention(), dtype=np.float32))
        yield ids
        done = ids == limits.eos_id
        if done.any():
            ends[rows[done]] = t
            keep = np.flatnonzero(~done)
            rows, ids = rows[keep], ids[keep]
            if rows.size:
                state = take(state, keep)
        prev = ids
        t += 1
    yield _collect(chosen, active_at, attn_at, ends, scores, limits, want_attention)


def _rows_of(state: Any) -> int:
    shape = state.shape() if callable(getattr(state, "shape", None)) else state.shape
    return int(shape[0])


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


def _sample(log_probs: np.ndarray, sampling: Sampling, input_ids: np.ndarray, t: int) -> np.ndarray:
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


def beam_search(step: Step, state: Any, limits: Limits, beam: int, nbest: int = 1, length_penalty: float = 0.0,
                want_attention: bool = False, take: Take = take_rows) -> list[list[Hypothesis]]:
    """n-best lists (best first) for every row of `state`.

    Hypotheses are ranked by score / (len + 1) ** length_penalty, len counting the
    tokens before </s>. With length_penalty 0 an input stops only when no live
    beam can beat its beam-th finished hypothesis, so a beam wide enough to hold
    every prefix is an exhaustive search.
    """
    n, k = _rows_of(state), beam
    items = np.arange(n)  # active inputs
    rows = np.repeat(items, k)  # input of each hypothesis row
    state = take(state, rows)
    scores = np.zeros((n, k))
    scores[:, 1:] = -np.inf  # all beams start as the same <s>; keep one
    history = np.zeros((n * k, 0), dtype=np.int64)
    attn_hist = None
    prev = np.full(n * k, limits.bos_id, dtype=np.int64)
    finished: list[list[tuple[float, Hypothesis]]] = [[] for _ in range(n)]
    best_finished = np.full((n, k), -np.inf)  # per input, its k best ranking scores, best first
    t = 0
    while items.size:
        out = step(prev, state, rows)
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
        state = take(state, new_origin)
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
                state = take(state, keep_rows)
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
