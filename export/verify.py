"""Parity: every figure that compares exported graphs with what they came from.

fp32 graphs against the PyTorch model (`check_parity`, the export gate), two
checks on the same words:
- every decoder step: PyTorch and onnxruntime are fed the same previous tokens
  (PyTorch's greedy choices) and their whole log-probability vectors compared;
- end to end: the runtime's own greedy decode must give PyTorch's tokens for every word.
A fault that shifts one step (a mistranslated GRU, a batch axis fixed to 1)
cannot hide behind tokens that happen to agree.
Reduced-precision graphs (int8, fp16) against the fp32 graphs
(`compare_precision`): token agreement, WER against the references, size.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from seq2edge.runtime.backend import ONNXRUNTIME_ERRORS, HostBackend
from seq2edge.runtime.errors import BundleError, InputError
from seq2edge.runtime.model import Seq2Seq
from seq2edge.runtime.schema import BundleMeta
from seq2edge.runtime.util import pad_batch
from seq2edge.train.model import Seq2SeqModule, greedy_decode, source_mask

from .limits import onnxruntime_problem

# The log-probability gate scales with what float32 arithmetic does to this model on these inputs:
# the same steps are also run by a float64 copy of the PyTorch model, and PyTorch's own float32
# rounding (its largest |float32 - float64| log-prob difference, `float32_noise`) sets the scale.
# onnxruntime's float32 kernels sum in other orders, so their rounding is of the same size but
# independent: honest exports stay within a few times the noise (see docs/export.md, "The parity gate"), a defect
# (a wrong weight, a mistranslated gate) is orders of magnitude above it.
NOISE_FACTOR = 10.0
TOLERANCE_FLOOR = 1e-4  # never gate tighter than this, whatever the measured noise
# Entries less likely than e^-10 in PyTorch are left out of the gated figure: no search can pick
# them, and float32 rounding moves them most. They are still compared (max_abs_log_prob_diff_all).
RELEVANT_LOG_PROB = -10.0


@dataclass(frozen=True)
class ParityInput:
    """A parity input and its reference outputs, if any (a corpus entry: train.corpus.Entry has the same fields)."""

    source: str
    references: tuple[str, ...] = ()


@dataclass
class Parity:
    words: int
    steps: int  # decoder steps compared
    token_agreement: float  # share of words whose greedy tokens are identical
    max_abs_log_prob_diff: float  # every step, every entry with log-prob >= RELEVANT_LOG_PROB in PyTorch
    max_abs_log_prob_diff_all: float  # every step, every vocabulary entry
    max_abs_memory_diff: float
    float32_noise: float  # the same gated figure between PyTorch float32 and float64
    tolerance: float  # the limit max_abs_log_prob_diff was held to
    tolerance_rule: str  # how the limit was set
    disagreements: list[str]  # up to 5 inputs whose tokens differ

    @property
    def passed(self) -> bool:
        return self.token_agreement == 1.0 and self.max_abs_log_prob_diff <= self.tolerance

    def to_dict(self) -> dict:
        d = asdict(self)
        d["relevant_log_prob"] = RELEVANT_LOG_PROB
        return d


def tolerance_for(noise: float, atol: float | None) -> tuple[float, str]:
    """The log-prob limit and how it was set: `atol` when given, else NOISE_FACTOR x the float32 noise."""
    if atol is not None:
        return atol, "--atol"
    return max(TOLERANCE_FLOOR, NOISE_FACTOR * noise), f"max({TOLERANCE_FLOOR:g}, {NOISE_FACTOR:g} x float32 noise)"


class GraphFailed(Exception):
    """onnxruntime failed running an exported graph on a parity input: `graph` (its file), the longest source of
    the batch and onnxruntime's first line."""

    def __init__(self, graph: str, longest: int, problem: str):
        super().__init__(problem)
        self.graph, self.longest, self.problem = graph, longest, problem


def _run_graph(graph: str, longest: int, call, *args):
    try:
        return call(*args)
    except ONNXRUNTIME_ERRORS as exc:
        raise GraphFailed(graph, longest, onnxruntime_problem(exc)) from None


def check_parity(model: Seq2SeqModule, runtime: Seq2Seq, texts: Sequence[str], batch_size: int = 64,
                 atol: float | None = None) -> Parity:
    """Compare PyTorch and the runtime on `texts` (unknown tokens mapped to <unk>)."""
    model = model.eval()
    c = model.config
    texts, ids = _sources(runtime, texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    reference, no_reference = _float64_copy(model, *pad_batch([ids[i] for i in order[:batch_size]], c.pad_id))
    torch_tokens: list[list[int]] = [[] for _ in ids]
    steps, worst = 0, {"lp": 0.0, "all": 0.0, "memory": 0.0, "noise": 0.0}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src, lengths = pad_batch([ids[i] for i in idx], c.pad_id)
        tokens, n, figures = _compare_batch(model, reference, runtime, src, lengths, _rules(runtime, lengths))
        for row, i in enumerate(idx):
            torch_tokens[i] = tokens[row]
        steps += n
        worst = {k: max(v, figures[k]) for k, v in worst.items()}
    decoded = runtime.decode(list(texts), batch_size=batch_size, errors="return")
    target = runtime.bundle.target
    agree, disagreements = 0, []
    for text, result, tokens in zip(texts, decoded, torch_tokens):
        expected = target.ids_to_tokens(tokens)
        if result.ok and result.tokens == expected:
            agree += 1
        elif len(disagreements) < 5:
            disagreements.append(f"{text!r}: pytorch {' '.join(expected)!r}, onnxruntime {result.text if result.ok else result.error!r}")
    tolerance, rule = tolerance_for(worst["noise"], atol)
    if no_reference and atol is None:
        tolerance, rule = FALLBACK_TOLERANCE, f"fixed, as no float64 copy of the model runs ({no_reference})"
    return Parity(len(texts), steps, agree / max(len(texts), 1), worst["lp"], worst["all"], worst["memory"], worst["noise"],
                  tolerance, rule, disagreements)


def _sources(runtime: Seq2Seq, texts: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """The texts the runtime takes whole (not empty, not too long) and the ids its encoder receives for them."""
    kept, ids = [], []
    for text in texts:
        try:
            ids.append(runtime.source_ids(text))
        except InputError:
            continue
        kept.append(text)
    return kept, ids


def _rules(runtime: Seq2Seq, lengths: np.ndarray) -> dict:
    """greedy_decode's length and token rules for these source lengths: the runtime's defaults (the bundle's conventions)."""
    c, rules = runtime.config, runtime.bundle.meta.conventions
    return {"max_len": [rules.max_len(int(n), c.max_tgt_len) for n in lengths], "min_len": rules.min_len,
            "never": [runtime.bundle.target.vocab.index[t] for t in rules.never_emit]}


# The limit when the model cannot run in float64 (code that makes float32 tensors of its own); --atol overrides it.
FALLBACK_TOLERANCE = 1e-3


@contextlib.contextmanager
def _float64_defaults():
    """Tensors a model makes itself (torch.zeros(...) for a first state) follow its float64 weights."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@torch.no_grad()
def _float64_copy(model, src: np.ndarray, lengths: np.ndarray):
    """(a float64 copy of the model, None), or (None, why) when the copy cannot run a step."""
    try:
        reference = copy.deepcopy(model).double()
        src_t, len_t = torch.from_numpy(src), torch.from_numpy(lengths)
        with _float64_defaults():
            memory, state = reference.encode(src_t, len_t)
            prev = torch.full((len(lengths),), model.config.bos_id, dtype=torch.long)
            reference.step(prev, state, memory, source_mask(len_t, src.shape[1]))
        return reference, None
    except Exception as exc:  # user code that insists on float32 somewhere
        return None, f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _state_difference(state, state_t) -> float:
    """The largest |difference| between onnxruntime's first state and PyTorch's (packed, or a listed state's tensors,
    which may be empty along a step axis)."""
    pairs = zip(state, state_t) if isinstance(state, tuple) else [(state, state_t)]
    return max(float(np.max(np.abs(a - b.numpy()), initial=0.0)) for a, b in pairs)


@torch.no_grad()
def _compare_batch(model: Seq2SeqModule, reference: Seq2SeqModule | None, runtime: Seq2Seq, src: np.ndarray, lengths: np.ndarray,
                   rules: dict):
    """PyTorch greedy tokens for the batch (under the bundle's length and token rules), then PyTorch
    (float32 and float64) and onnxruntime stepped on those tokens -> (tokens, steps compared, worst differences)."""
    c = model.config
    src_t, len_t = torch.from_numpy(src), torch.from_numpy(lengths)
    tokens, _ = greedy_decode(model, src_t, len_t, **rules)
    memory_t, state_t = model.encode(src_t, len_t)
    if reference is not None:
        with _float64_defaults():
            memory_r, state_r = reference.encode(src_t, len_t)
    mask_t = source_mask(len_t, src.shape[1])
    host = HostBackend(runtime.engine)  # numpy arrays, whatever backend the runtime decodes with
    encoded = _run_graph("encoder.onnx", src.shape[1], host.encode, src, lengths)
    memory, state, mask = encoded.memory, encoded.state, encoded.mask
    real = mask[:, :, None]
    worst = {"memory": max(float(np.abs(np.where(real, memory - memory_t.numpy(), 0)).max()),
                           _state_difference(state, state_t)),
             "lp": 0.0, "all": 0.0, "noise": 0.0}
    n_steps = max(len(t) for t in tokens) + 1
    prev = np.full(len(tokens), c.bos_id, dtype=np.int64)
    compared = 0
    for t in range(n_steps):
        prev_t = torch.from_numpy(prev)
        lp_t, state_t, _ = model.step(prev_t, state_t, memory_t, mask_t)
        if reference is not None:
            with _float64_defaults():
                lp_r, state_r, _ = reference.step(prev_t, state_r, memory_r, mask_t)
        out = _run_graph("decoder.onnx", src.shape[1], host.step, prev, state, memory, mask)
        lp, state = out.raw_log_probs, out.state
        live = np.array([t <= len(row) for row in tokens])  # steps up to and including </s>
        expected = lp_t.numpy()[live]
        relevant = expected >= RELEVANT_LOG_PROB
        diff = np.abs(lp[live] - expected)
        worst["all"] = max(worst["all"], float(diff.max()))
        worst["lp"] = max(worst["lp"], float(diff[relevant].max()))
        if reference is not None:
            worst["noise"] = max(worst["noise"], float(np.abs(lp_r.numpy()[live] - expected)[relevant].max()))
        compared += int(live.sum())
        prev = np.array([row[t] if t < len(row) else c.eos_id for row in tokens], dtype=np.int64)
    return tokens, compared, worst


def check_greedy_graph(bundle_dir: Path, precision: str, texts: Sequence[str], batch_size: int = 64) -> dict:
    """greedy.onnx against the step-by-step runtime on the same words and at the same batch size
    (1, then `batch_size`): the same tokens, and scores within SCORE_TOLERANCE.

    fp32 must match on every word at both batch sizes, and int8 on every word at batch 1 (its scores within
    INT8_SCORE_TOLERANCE: onnxruntime optimises a Loop's body apart from the decoder graph, and an activation
    that differs in its last float32 bit may be quantised one step apart). Batched,
    int8 activations are quantised with one scale per batch, and the graph keeps finished rows in the
    batch (fed <pad>) where the runtime drops them: scores move with that (by up to 0.1 on a barely
    trained model whose tokens all agree), and a near tie may round the other way. So int8 batched is
    held to its tokens: they must agree on at least 1 - INT8_BATCHING_BOUND of the words, or, for a
    model whose own int8 decoding changes more than that between batch 1 and the batch (measured here
    on the same words), on all but twice that share. Measured against the runtime at the same batch
    size, so a correct but batch-sensitive model is not refused, while a graph that mishandles batches
    still is (fp32 always; int8 where it changes far more than the model itself does)."""
    steps = Seq2Seq.load(bundle_dir, providers="cpu", precision=precision, unknown="unk", too_long="truncate", greedy_graph=False,
                         threads=1)
    graph = Seq2Seq.load(bundle_dir, providers="cpu", precision=precision, unknown="unk", too_long="truncate", greedy_graph=True,
                         threads=1)
    figures: dict = {"words": len(texts)}
    references = {}
    for name, size in (("batch_1", 1), ("batched", batch_size)):
        reference = references[name] = steps.decode(list(texts), batch_size=size, errors="return")
        got = graph.decode(list(texts), batch_size=size, errors="return")
        pairs = [(a, b) for a, b in zip(reference, got) if a.ok and b.ok]
        diffs = [abs(a.score - b.score) for a, b in pairs if a.tokens == b.tokens]
        figures[f"token_agreement_{name}"] = len(diffs) / max(len(pairs), 1)
        figures[f"max_abs_score_diff_{name}"] = max(diffs, default=0.0)
        tolerance = INT8_SCORE_TOLERANCE if precision == "int8" else SCORE_TOLERANCE
        figures[f"matching_{name}"] = sum(d <= tolerance for d in diffs) / max(len(pairs), 1)
    if precision == "int8":
        own = [a.tokens != b.tokens for a, b in zip(references["batch_1"], references["batched"]) if a.ok and b.ok]
        figures["runtime_batch_sensitivity"] = sum(own) / max(len(own), 1)
        bound = max(INT8_BATCHING_BOUND, 2 * figures["runtime_batch_sensitivity"])
        figures["passed"] = figures["matching_batch_1"] == 1.0 and figures["token_agreement_batched"] >= 1.0 - bound
    else:
        figures["passed"] = figures["matching_batch_1"] == 1.0 and figures["matching_batched"] == 1.0
    figures["batched_speedup"] = round(batched_speedup(steps, graph, list(texts), batch_size), 3)
    return figures


def batched_speedup(steps: Seq2Seq, graph: Seq2Seq, texts: list[str], batch_size: int, rounds: int = 7) -> float:
    """Step-by-step time over greedy-graph time, batched, one thread: the median of `rounds` ratios,
    the two timed in turn within each round (after a warm-up), so that a change in the machine's speed
    moves both. The runtime uses the graph on batches where this is above GREEDY_GRAPH_BATCHED_SPEEDUP
    (small models, whose steps cost less than the Python around them)."""
    def seconds(model: Seq2Seq) -> float:
        start = time.perf_counter()
        model.decode(texts, batch_size=batch_size, errors="return")
        return time.perf_counter() - start

    seconds(steps), seconds(graph)
    ratios = []
    for i in range(rounds):  # each goes first in every other round
        if i % 2:
            took_graph, took_steps = seconds(graph), seconds(steps)
        else:
            took_steps, took_graph = seconds(steps), seconds(graph)
        ratios.append(took_steps / took_graph)
    return statistics.median(ratios)


# Scores are sums of up to max_tgt_len float32 log-probs: the graph adds them in float32, the runtime
# in float64. 1e-3 is far above that rounding (measured at most ~1e-5 on the shipped model) and far
# below any difference in what was chosen.
SCORE_TOLERANCE = 1e-3
# int8 at batch 1: a quantisation step of an activation moved a score by 0.0015 and 0.016 (two OpenNMT-py
# Transformers' greedy.int8.onnx, the same tokens on all 300 words). A tenth of a nat, as the device check's near-tie
# bound: far above such steps, far below a difference in what was chosen.
INT8_SCORE_TOLERANCE = 0.1
# share of inputs int8 may decode differently batched (docs/export.md "Batch independence", docs/hosts.md "The greedy graph")
INT8_BATCHING_BOUND = 0.015


def compare_precision(bundle_dir: Path, meta: BundleMeta, precision: str, entries: Sequence[ParityInput],
                      reference: Sequence, fp32: Seq2Seq) -> dict:
    """Figures of the `precision` graphs against the fp32 ones (`reference`: fp32 results on `entries`).
    fp16 graphs that the CPU provider cannot run are "not measured here" (they are for GPUs); int8 graphs
    always run on the CPU, so any failure to decode with them is an error, never a figure."""
    sizes = {p: sum(entry.bytes or 0 for entry in meta.graphs[p].values()) for p in ("fp32", precision)}
    figures: dict = {"size_ratio": round(sizes[precision] / sizes["fp32"], 4), "bytes": sizes[precision]}
    try:
        model = Seq2Seq.load(bundle_dir, providers="cpu", precision=precision, unknown="unk")
        results = model.decode([e.source for e in entries], errors="return")
    except (RuntimeError, BundleError) as exc:  # onnxruntime's Fail / NotImplemented: an fp16 kernel the CPU lacks
        if precision == "int8":
            raise
        return {**figures, "measured": False, "reason": f"the CPU provider cannot run these graphs: {str(exc).splitlines()[0]}"}
    target = fp32.bundle.target
    agree = sum(a.ok and b.ok and a.tokens == b.tokens for a, b in zip(reference, results))
    figures.update(measured=True, provider="CPUExecutionProvider", words=len(entries),
                   token_agreement_with_fp32=agree / max(len(entries), 1))
    if all(e.references for e in entries):  # parity sources given without references (export_model) have no WER
        from seq2edge.train.metrics import score  # a corpus with references: seq2edge's own checkpoints

        refs = [[target.split(r) for r in e.references] for e in entries]
        figures["wer"] = round(score([r.tokens for r in results], refs).wer, 3)
        figures["fp32_wer"] = round(score([r.tokens for r in reference], refs).wer, 3)
    return figures


# The int8 gate (docs/export.md, "The int8 gate"). Dynamic int8 moves near ties: honest int8 graphs measured here
# decode 95.8% (the small shipped model) to 99.3% of their parity inputs exactly as fp32 does, and their WER on
# them is within noise of fp32's (0.4-0.8 points better for both shipped models). A defective graph (a wrong scale,
# a mistranslated node) changes most outputs. The gate sits well below every honest figure and far above a defect.
INT8_MIN_AGREEMENT = 0.90
INT8_MAX_WER_INCREASE = 1.0  # points, on the parity inputs, where they have references


def int8_gate(figures: dict) -> str | None:
    """Why the int8 figures refuse the graphs, or None."""
    if figures["token_agreement_with_fp32"] < INT8_MIN_AGREEMENT:
        return (f"int8 graphs decode {100 * figures['token_agreement_with_fp32']:.2f}% of the parity inputs as fp32 does "
                f"(the gate needs {100 * INT8_MIN_AGREEMENT:.0f}%)")
    if "wer" in figures and figures["wer"] > figures["fp32_wer"] + INT8_MAX_WER_INCREASE:
        return (f"int8 WER on the parity inputs is {figures['wer']:.2f}%, over fp32's {figures['fp32_wer']:.2f}% by more "
                f"than {INT8_MAX_WER_INCREASE:g} point")
    return None
