"""Seq2Seq: the public runtime API. Load a bundle, decode texts, stream tokens.

    model = Seq2Seq.load("models/g2p-en")
    model.decode(["attention"])[0].text   # 'AH0 T EH1 N SH AH0 N'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import search
from .backend import ONNXRUNTIME_ERRORS, Backend, DeviceBackend, HostBackend, Stepper, device_of
from .bundle import Bundle, load_bundle
from .engine import Engine
from .ensemble import EnsembleStepper, check_members
from .errors import OPTION_STYLES, InputError, OptionError, Seq2EdgeError
from .fpenv import flushing
from .options import SearchOptions
from .providers import ProviderSpec
from .tokenize import UNKNOWN_POLICIES
from .util import pad_batch

TOO_LONG_POLICIES = ("error", "truncate")
# With greedy_graph=None ("auto"), the one-call greedy graph decodes chunks of at most this many
# inputs; larger batches go step by step, where finished rows leave the batch, unless export measured
# the graph faster batched too on the CPU (small models: docs/hosts.md, "The greedy graph").
GREEDY_GRAPH_MAX_BATCH = 1
# The speed-up export must have measured for auto to use the graph on batches: a margin over the
# noise of a 500-word timing, so that a bundle does not switch paths on a coin toss.
GREEDY_GRAPH_BATCHED_SPEEDUP = 1.15


@dataclass
class Result:
    """One decoded input. `score` is the sum of log-probabilities of `tokens` and </s>."""

    input: str
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    score: float = float("nan")
    nbest: list[Result] = field(default_factory=list)  # best first, when nbest > 1
    attention: np.ndarray | None = None  # [len(tokens) + 1, len(source_tokens)] when asked
    source_tokens: list[str] = field(default_factory=list)
    truncated: bool = False  # reached max_len; </s> was forced
    source_truncated_from: int | None = None  # the input's token count when too_long="truncate" cut it to max_src_len
    error: str | None = None  # set instead of the output when this input could not be decoded

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Source:
    """One input, tokenised: its position in the decode call, source ids and tokens."""

    index: int
    ids: list[int]
    tokens: list[str]
    truncated_from: int | None = None


class Seq2Seq:
    """A loaded bundle: tokenisers plus onnxruntime sessions for the encoder and decoder."""

    def __init__(self, bundle: Bundle, engine: Engine, unknown: str = "error", too_long: str = "error",
                 io_binding: bool | None = None, option_style: str = "python", greedy_graph: bool | None = None,
                 members: Sequence[Seq2Seq] = ()):
        if unknown not in UNKNOWN_POLICIES:
            raise Seq2EdgeError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {unknown!r}")
        if too_long not in TOO_LONG_POLICIES:
            raise Seq2EdgeError(f"too_long must be one of {', '.join(TOO_LONG_POLICIES)}, not {too_long!r}")
        self.bundle = bundle
        self.config = bundle.config
        self.engine = engine
        self.members = list(members)  # the other bundles of an ensemble (runtime/ensemble.py)
        if self.members:
            check_members(bundle, [m.bundle for m in self.members])
            configs = [bundle.config] + [m.config for m in self.members]
            self.config = replace(bundle.config, max_src_len=min(c.max_src_len for c in configs),
                                  max_tgt_len=min(c.max_tgt_len for c in configs))
        if option_style not in OPTION_STYLES:
            raise Seq2EdgeError(f"option_style must be one of {', '.join(OPTION_STYLES)}, not {option_style!r}")
        self.unknown = unknown
        self.too_long = too_long
        self.option_style = option_style  # how input errors name the option that would decode them anyway
        self.greedy_graph = greedy_graph
        if io_binding is None:  # keep decoding state on the device whenever the decoder runs on one
            io_binding = device_of(engine.providers) != "cpu"
        self.backend: Backend = DeviceBackend(engine) if io_binding else HostBackend(engine)

    @classmethod
    def load(cls, path: str | Path, providers: ProviderSpec = "auto", precision: str = "fp32",
             threads: int | None = None, optimization: str = "all", unknown: str = "error",
             too_long: str = "error", io_binding: bool | None = None, option_style: str = "python",
             greedy_graph: bool | None = None, graph_format: str = "auto", ensemble: Sequence[str | Path] = ()) -> Seq2Seq:
        """Load and verify a bundle directory.

        providers: "auto", "cpu", "cuda", another provider name, or an onnxruntime providers list.
        precision: "fp32", or "int8"/"fp16" when the bundle has those graphs.
        unknown: what to do with source tokens outside the vocabulary: "error", "unk" or "skip".
        too_long: inputs over the model's max_src_len: "error", or "truncate" (the Result says
            `source_truncated_from`).
        io_binding: keep memory, mask and state on the device between steps (onnxruntime IOBinding);
            default: on when the decoder runs on an accelerator (CUDA), off on the CPU.
        option_style: how input errors name the setting that would decode them anyway:
            "python" (unknown='unk') or "cli" (--unknown unk).
        greedy_graph: decode plain greedy searches with the bundle's greedy.onnx (one call per batch):
            True always, False never, None when it is faster (batches of up to GREEDY_GRAPH_MAX_BATCH).
        graph_format: "onnx", "ort" (the export --ort copies), or "auto" (.onnx when present, else .ort).
        ensemble: other bundles of the same task, loaded with the same settings, that decode together
            with this one: every step searches the log of the members' mean probability. They must
            share this bundle's vocabularies; limits are the smallest of theirs. Greedy graphs are
            not used (they hold one model).
        """
        _check_load_types(threads, greedy_graph, ensemble)
        if ensemble and greedy_graph:
            raise Seq2EdgeError("a greedy graph holds one model, and an ensemble decodes step by step: ask for one or the other")
        bundle = load_bundle(path)
        if ensemble:
            greedy_graph = False
        engine = Engine(bundle, precision, providers, threads, optimization, graph_format, greedy_graph)
        members = [cls.load(p, providers=providers, precision=precision, threads=threads, optimization=optimization,
                            io_binding=io_binding, greedy_graph=False, graph_format=graph_format) for p in ensemble]
        return cls(bundle, engine, unknown, too_long, io_binding, option_style, greedy_graph, members)

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime really uses for the decoder."""
        return self.engine.providers

    def decode(self, texts: Sequence[str], options: SearchOptions | None = None, *,
               positions: Sequence[int] | None = None, **keywords: Any) -> list[Result]:
        """Decode every text; results come back in input order.

        Settings come as a SearchOptions value, as keywords (its field names: beam_size,
        nbest, max_len, batch_size, return_attention, min_len, length_penalty, sample,
        temperature, top_k, top_p, seed, errors), or both (keywords win).
        Inputs are sorted by length and decoded `batch_size` at a time; results do
        not depend on the batching. beam_size 1 is greedy search; `sample=True`
        draws tokens (temperature, top_k, top_p) with draws fixed by `seed`, the
        input's position and the step. Positions are the texts' indices unless
        `positions` gives them (non-negative integers, one per text): a job decoded
        over several calls passes each input's place in the job (the CLI: its line
        number - 1), so its draws do not depend on how the job was cut.
        errors="raise" raises InputError at the first bad input;
        errors="return" gives that input a Result with `error` set and decodes the rest.
        """
        with flushing():  # subnormals flushed while onnxruntime computes; the caller's environment given back
            return self._decode(texts, options, positions=positions, **keywords)

    def _decode(self, texts: Sequence[str], options: SearchOptions | None = None, *,
                positions: Sequence[int] | None = None, **keywords: Any) -> list[Result]:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise OptionError("decode() takes a list of texts; wrap a single text in a list")
        if positions is not None:
            positions = list(positions)
            if len(positions) != len(texts) or not all(isinstance(p, (int, np.integer)) and 0 <= p < 2**63 for p in positions):
                raise OptionError(f"positions must be {len(texts)} non-negative integers, one per text")
        options = SearchOptions.of(options, **keywords)
        if options.return_attention and not self.config.gives_attention:
            raise OptionError(NO_ATTENTION)
        results: list[Result | None] = [None] * len(texts)
        ready: list[_Source] = []
        for i, text in enumerate(texts):
            try:
                ready.append(self._prepare(i, text))
            except InputError as exc:
                if options.errors == "raise":
                    raise InputError(f"input {i}: {exc.problem}", exc.option, self.option_style) from None
                results[i] = Result(input=text if isinstance(text, str) else repr(text), error=str(exc))
        ready.sort(key=lambda p: len(p.ids))
        strategy = search.STRATEGIES[options.strategy]
        position_of = range(len(texts)) if positions is None else positions  # sampling draws follow these
        def search_chunk(chunk: list[_Source], limits: search.Limits) -> list[list[search.Hypothesis]]:
            if self._greedy_graph_decodes(options, len(chunk)):
                return self._greedy_graph(chunk, limits)
            stepper, state = self._encode(chunk)
            return strategy(stepper, state, np.array([position_of[p.index] for p in chunk], dtype=np.int64), limits, options)

        for chunk, limits in self._chunks(ready, options):
            try:
                found: list = search_chunk(chunk, limits)
            except ONNXRUNTIME_ERRORS:  # one input the graphs cannot take: decode the batch's inputs one by one
                found = []
                for source in chunk:
                    try:
                        found.append(search_chunk([source], limits)[0])
                    except ONNXRUNTIME_ERRORS as exc:
                        problem = f"the model failed on this input (onnxruntime: {str(exc).strip().splitlines()[0][:200]})"
                        if options.errors == "raise":
                            raise InputError(f"input {source.index}: {problem}") from None
                        found.append(InputError(problem))
            for source, hyps in zip(chunk, found):
                text = texts[source.index]
                results[source.index] = (Result(input=text, error=str(hyps)) if isinstance(hyps, InputError)
                                         else self._result(text, source, hyps))
        return results  # type: ignore[return-value]

    def stream(self, text: str, options: SearchOptions | None = None, **keywords: Any) -> Iterator[str]:
        """Target tokens of one text as they are produced (greedy, or sampling with the same
        draws as decode([text], sample=True, seed=seed)). Beam search cannot stream."""
        options = SearchOptions.of(options, **keywords)
        if options.beam_size > 1:
            raise Seq2EdgeError("stream() decodes greedily or by sampling; use decode() for beam search")
        tokens = self._stream(text, options)
        while True:
            with flushing():  # as decode(), token by token: the caller's code runs between them
                token = next(tokens, None)
            if token is None:
                return
            yield token

    def _stream(self, text: str, options: SearchOptions) -> Iterator[str]:
        source = self._prepare(0, text)
        try:
            stepper, state = self._encode([source])
            for token_id in search.stream(stepper, state, self._limits(options, len(source.ids)), options):
                yield self.bundle.target.vocab.tokens[token_id]
        except ONNXRUNTIME_ERRORS as exc:
            raise InputError(f"the model failed on this input (onnxruntime: {str(exc).strip().splitlines()[0][:200]})") from None

    def source_ids(self, text: str) -> list[int]:
        """The ids the encoder receives for `text`: tokenised, under the unknown and too-long policies and
        the bundle's conventions (an appended </s>). InputError for an input this model cannot take."""
        return self._prepare(0, text).ids

    # -- internals -------------------------------------------------------------------
    def _limits(self, options: SearchOptions, source_ids: int) -> search.Limits:
        """The length rules for an input of `source_ids` ids: the options', else the bundle's conventions'."""
        c, rules = self.config, self.bundle.meta.conventions
        max_len = rules.max_len(source_ids, c.max_tgt_len) if options.max_len is None else options.max_len
        return search.Limits(c.bos_id, c.eos_id, c.pad_id, c.tgt_vocab_size, max(options.min_len, rules.min_len), max_len,
                             self._never)

    @functools.cached_property
    def _never(self) -> tuple[int, ...]:
        index = self.bundle.target.vocab.index
        return tuple(index[t] for t in self.bundle.meta.conventions.never_emit)

    def _chunks(self, ready: list[_Source], options: SearchOptions) -> Iterator[tuple[list[_Source], search.Limits]]:
        """Batches of at most batch_size inputs (sorted by length) that share their length limits: one run
        of inputs unless the bundle's conventions set each input's output limit from its length."""
        rules, most = self.bundle.meta.conventions, self.config.max_tgt_len
        per_input = options.max_len is None and rules.max_len_ratio > 0
        start = 0
        while start < len(ready):
            limits = self._limits(options, len(ready[start].ids))
            end = min(start + options.batch_size, len(ready))
            if per_input:
                end = next((i for i in range(start + 1, end) if rules.max_len(len(ready[i].ids), most) != limits.max_len), end)
            yield ready[start:end], limits
            start = end

    def _prepare(self, index: int, text: str) -> _Source:
        """Tokenise one input; an InputError names the option that would decode it in this model's option_style."""
        if not isinstance(text, str):
            raise InputError(f"expected a string, got {type(text).__name__}")
        _check_text(text)
        try:
            tokens, ids = self.bundle.source.encode_tokens(text, self.unknown)
        except InputError as exc:
            raise exc.restyled(self.option_style) from None
        limit = self.config.max_src_len
        source_eos = self.bundle.meta.conventions.source_eos
        if source_eos:  # the model was trained with </s> after every source (it counts toward max_src_len)
            c = self.config
            tokens, ids = [*tokens, self.bundle.source.vocab.tokens[c.eos_id]], [*ids, c.eos_id]
        if len(ids) <= limit:
            return _Source(index, ids, tokens)
        if self.too_long == "error":
            raise InputError(f"{len(ids)} source tokens, over the model's max_src_len of {limit}",
                             option=("too_long", ("truncate",)), style=self.option_style)
        keep = limit - source_eos
        return _Source(index, ids[:keep] + ids[-1:] * source_eos, tokens[:keep] + tokens[-1:] * source_eos, truncated_from=len(ids))

    def _encode(self, chunk: list[_Source]) -> tuple[Stepper, Any]:
        return self.stepper(*pad_batch([p.ids for p in chunk], self.config.pad_id))

    def stepper(self, src: np.ndarray, lengths: np.ndarray) -> tuple[Stepper | EnsembleStepper, Any]:
        """Encode a padded batch of source ids -> the search's stepper over it and the first decoder
        state (an ensemble's: every member's). For code that steps the decoder itself, such as
        distillation's teacher forcing."""
        encoded = [backend.encode(src, lengths) for backend in self._backends()]
        if not self.members:
            return Stepper(self.backend, encoded[0]), encoded[0].state
        steppers = [Stepper(backend, e) for backend, e in zip(self._backends(), encoded)]
        return EnsembleStepper(steppers, self.config.tgt_vocab_size), tuple(e.state for e in encoded)

    def _backends(self) -> list[Backend]:
        return [self.backend] + [m.backend for m in self.members]

    def _greedy_graph_decodes(self, options: SearchOptions, rows: int) -> bool:
        """Whether greedy.onnx decodes this chunk: a plain greedy search it can do, and wanted."""
        if self.greedy_graph is False or self.members or not self.bundle.has_graph("greedy", self.engine.precision):
            return False
        if options.strategy != "greedy" or options.return_attention or options.min_len:
            return False
        return self.greedy_graph is True or rows <= GREEDY_GRAPH_MAX_BATCH or self._greedy_graph_batches

    @property
    def _greedy_graph_batches(self) -> bool:
        """Export found the greedy graph faster than step-by-step batched too, on the CPU, where this runs."""
        if self.providers[0] != "CPUExecutionProvider":
            return False
        figures = self.bundle.meta.parity.get(self.engine.precision, {}).get("greedy_graph", {})
        return figures.get("batched_speedup", 0.0) >= GREEDY_GRAPH_BATCHED_SPEEDUP

    def _greedy_graph(self, chunk: list[_Source], limits: search.Limits) -> list[list[search.Hypothesis]]:
        """Greedy search in one onnxruntime call: encoder and a Loop of decoder steps in greedy.onnx."""
        src, lengths = pad_batch([p.ids for p in chunk], self.config.pad_id)
        tokens, found, scores = self.backend.sessions["greedy"].run(
            None, {"src_ids": src, "src_lengths": lengths, "max_len": np.array(limits.max_len, dtype=np.int64)})
        return [[search.Hypothesis(tokens[row, :n].tolist(), float(scores[row]), truncated=n >= limits.max_len)]
                for row, n in enumerate(found.tolist())]

    def _result(self, text: str, source: _Source, hyps: list[search.Hypothesis]) -> Result:
        target = self.bundle.target
        vocab = target.vocab.tokens
        src_len = len(source.ids)
        out = []
        for h in hyps:
            tokens = [vocab[i] for i in h.ids]  # searches never choose <pad> or <s>; </s> ends a hypothesis
            attention = h.attention[:, :src_len] if h.attention is not None else None
            out.append(Result(text, target.join(tokens), tokens, h.score, [], attention, source.tokens, h.truncated,
                              source.truncated_from))
        best = out[0]
        if len(out) > 1:
            best.nbest = out
        return best


_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _check_text(text: str) -> None:
    """Reject what no tokeniser should see: NUL and other control characters, lone surrogates."""
    found = _FORBIDDEN.search(text)
    if found:
        code = ord(found.group())
        if 0xD800 <= code <= 0xDFFF:
            raise InputError(f"lone surrogate U+{code:04X} (the text is not valid Unicode)")
        raise InputError(f"control character U+{code:04X} in the input")


NO_ATTENTION = ("this model gives no attention weights (its step() returned None for attention when it was exported), "
                "so there is no attention to return or plot")


def _check_load_types(threads: Any, greedy_graph: Any, ensemble: Any) -> None:
    """Settings of Seq2Seq.load whose wrong type would otherwise surface as a TypeError deep inside onnxruntime."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise OptionError(f"threads must be None or a whole number of at least 1, not {threads!r}")
    if greedy_graph not in (None, True, False):
        raise OptionError(f"greedy_graph must be None, True or False, not {greedy_graph!r}")
    if isinstance(ensemble, (str, Path)) or not isinstance(ensemble, Sequence):
        raise OptionError("ensemble takes a list of bundle paths (the other members), not a single path")
