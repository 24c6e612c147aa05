"""Search over decoder steps: greedy, beam and sampling, vectorised over the batch.

The searches know nothing of onnxruntime: they call a `Step` function and
work on numpy arrays. Every result is complete: when a hypothesis reaches
`max_len` tokens without </s>, one more step scores a forced </s>, so a score
is always the sum of log-probabilities of the tokens and </s>.

Rows of `state`/`memory`/`mask` are hypotheses. Finished inputs leave the
active batch, so late steps run on fewer rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass

import numpy as np

# step(prev_ids [n], state [n, d], rows [n]) -> (log_probs [n, V], new_state [n, d], attention [n, S])
# `rows` says which encoded input each hypothesis belongs to, so the caller can
# feed the matching memory and mask rows; a new `rows` object means the rows changed.
Step = Callable[[np.ndarray, Any, np.ndarray], tuple[np.ndarray, Any, np.ndarray]]
# take(state, index) -> the state rows at index (numpy here; a device-side gather on GPU).
Take = Callable[[Any, np.ndarray], Any]


def take_rows(state: np.ndarray, index: np.ndarray) -> np.ndarray:
    return state[index]


@dataclass
class Hypothesis:
    ids: list[int]  # target ids, without <s> and </s>
    score: float  # sum of log-probs of ids and </s>
    attention: np.ndarray | None = None  # [len(ids) + 1, src_len]
    truncated: bool = False  # </s> was forced at max_len


@dataclass(frozen=True)
class Limits:
    """Which ids may be chosen at a step: never pad or <s>; </s> not before min_len; only </s> at max_len."""

    bos_id: int
    eos_id: int
    pad_id: int
    min_len: int = 0
    max_len: int = 64

    def mask(self, log_probs: np.ndarray, t: int) -> np.ndarray:
        """Copy of log_probs with forbidden ids at -inf (in place when already a private copy)."""
        log_probs[:, self.pad_id] = -np.inf
        log_probs[:, self.bos_id] = -np.inf
        if t >= self.max_len:
            eos = log_probs[:, self.eos_id].copy()
            log_probs[:] = -np.inf
            log_probs[:, self.eos_id] = eos
        elif t < self.min_len:
            log_probs[:, self.eos_id] = -np.inf
        return log_probs


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
    for event in _greedy_steps(step, state, limits, want_attention, sampling, input_ids, take):
        pass
    return event


def stream(step: Step, state: Any, limits: Limits, sampling: Sampling | None = None,
           input_id: int = 0, take: Take = take_rows) -> Iterator[int]:
    """Ids of the single row of `state` as they are chosen; </s> is not yielded."""
    for event in _greedy_steps(step, state, limits, False, sampling, np.array([input_id]), take):
        if isinstance(event, np.ndarray):
            token = int(event[0])
            if token != limits.eos_id:
                yield token


def _greedy_steps(step, state, limits, want_attention, sampling, input_ids, take):
    """Generator of each step's chosen ids (first row only matters for streaming), then the hypotheses."""
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
        log_probs, state, attention = step(prev, state, rows)
        log_probs = limits.mask(np.array(log_probs, dtype=np.float32, copy=True), t)
        if sampling is None:
            ids = log_probs.argmax(axis=1)
        else:
            ids = _sample(log_probs, sampling, input_ids[rows], t)
        scores[rows] += log_probs[np.arange(rows.size), ids]
        chosen.append(ids)
        active_at.append(rows)
        if want_attention:
            attn_at.append(np.asarray(attention, dtype=np.float32))
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
    n = ends.size
    steps = len(chosen)
    table = np.full((n, steps), limits.eos_id, dtype=np.int64)
    for t, (rows, ids) in enumerate(zip(active_at, chosen)):
        table[rows, t] = ids
    attn_table = None
    if want_attention:
        src_len = attn_at[0].shape[1]
        attn_table = np.zeros((n, steps, src_len), dtype=np.float32)
        for t, (rows, att) in enumerate(zip(active_at, attn_at)):
            attn_table[rows, t] = att
    out = []
    for i in range(n):
        end = int(ends[i])
        ids = table[i, :end].tolist()
        att = attn_table[i, : end + 1] if want_attention else None
        out.append(Hypothesis(ids, float(scores[i]), att, truncated=end >= limits.max_len))
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
        log_probs, state, attention = step(prev, state, rows)
        log_probs = limits.mask(np.array(log_probs, dtype=np.float32, copy=True), t)
        a, vocab = items.size, log_probs.shape[1]
        cand = (scores[:, :, None] + log_probs.reshape(a, k, vocab)).reshape(a, k * vocab)
        width = min(2 * k, k * vocab)
        top = np.argpartition(-cand, width - 1, axis=1)[:, :width]
        top_scores = np.take_along_axis(cand, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        origin = top // vocab + (np.arange(a) * k)[:, None]  # hypothesis row each candidate extends
        token = top % vocab
        is_eos = token == limits.eos_id
        if want_attention:
            step_attn = np.asarray(attention, dtype=np.float32)[:, None, :]
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
