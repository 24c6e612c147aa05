"""Seq2Seq: the public runtime API. Load a bundle, decode texts, stream tokens.

    model = Seq2Seq.load("models/g2p-en")
    model.decode(["attention"])[0].text   # 'AH0 T EH1 N SH AH0 N'
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import search
from .bundle import Bundle, load_bundle
from .device import DeviceRunner, device_of
from .engine import Engine
from .errors import InputError, Seq2EdgeError
from .providers import ProviderSpec
from .tokenize import UNKNOWN_POLICIES

TOO_LONG_POLICIES = ("error", "truncate")


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
    error: str | None = None  # set instead of the output when this input could not be decoded

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Prepared:
    index: int
    ids: list[int]
    source_tokens: list[str]


class Seq2Seq:
    """A loaded bundle: tokenisers plus onnxruntime sessions for the encoder and decoder."""

    def __init__(self, bundle: Bundle, engine: Engine, unknown: str = "error", too_long: str = "error",
                 io_binding: bool | None = None):
        if unknown not in UNKNOWN_POLICIES:
            raise Seq2EdgeError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {unknown!r}")
        if too_long not in TOO_LONG_POLICIES:
            raise Seq2EdgeError(f"too_long must be one of {', '.join(TOO_LONG_POLICIES)}, not {too_long!r}")
        self.bundle = bundle
        self.config = bundle.config
        self._engine = engine
        self.unknown = unknown
        self.too_long = too_long
        if io_binding is None:  # keep decoding state on the device whenever the decoder runs on one
            io_binding = device_of(engine.providers) != "cpu"
        self._device = DeviceRunner(engine) if io_binding else None

    @classmethod
    def load(cls, path: str | Path, providers: ProviderSpec = "auto", precision: str = "fp32",
             threads: int | None = None, optimization: str = "all", unknown: str = "error",
             too_long: str = "error", io_binding: bool | None = None) -> Seq2Seq:
        """Load and verify a bundle directory.

        providers: "auto", "cpu", "cuda", another provider name, or an onnxruntime providers list.
        precision: "fp32", or "int8"/"fp16" when the bundle has those graphs.
        unknown: what to do with source tokens outside the vocabulary: "error", "unk" or "skip".
        too_long: inputs over the model's max_src_len: "error" or "truncate" (with a warning).
        io_binding: keep memory, mask and state on the device between steps (onnxruntime IOBinding);
            default: on when the decoder runs on an accelerator (CUDA), off on the CPU.
        """
        bundle = load_bundle(path)
        return cls(bundle, Engine(bundle, precision, providers, threads, optimization), unknown, too_long, io_binding)

    @property
    def providers(self) -> list[str]:
        """The execution providers onnxruntime really uses for the decoder."""
        return self._engine.providers

    def decode(self, texts: Sequence[str], beam_size: int = 1, nbest: int = 1, max_len: int | None = None,
               batch_size: int = 64, return_attention: bool = False, min_len: int = 0,
               length_penalty: float = 0.0, sample: bool = False, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int = 0, errors: str = "raise") -> list[Result]:
        """Decode every text; results come back in input order.

        Inputs are sorted by length and decoded `batch_size` at a time; results do
        not depend on the batching. beam_size 1 is greedy search; `sample=True`
        draws tokens (temperature, top_k, top_p) with draws fixed by `seed` and the
        input's position. errors="raise" raises InputError at the first bad input;
        errors="return" gives that input a Result with `error` set and decodes the rest.
        """
        if isinstance(texts, str):
            raise TypeError("decode() takes a list of texts; wrap a single text in a list")
        self._check_options(beam_size, nbest, batch_size, sample, temperature, top_k, top_p, errors, max_len, min_len)
        limits = self._limits(max_len, min_len)
        sampling = search.Sampling(temperature, top_k, top_p, seed) if sample else None
        results: list[Result | None] = [None] * len(texts)
        ready: list[_Prepared] = []
        for i, text in enumerate(texts):
            try:
                ready.append(self._prepare(i, text))
            except InputError as exc:
                if errors == "raise":
                    raise InputError(f"input {i}: {exc}") from None
                results[i] = Result(input=text if isinstance(text, str) else repr(text), error=str(exc))
        ready.sort(key=lambda p: len(p.ids))
        for start in range(0, len(ready), batch_size):
            chunk = ready[start : start + batch_size]
            for prepared, hyps in zip(chunk, self._decode_batch(chunk, limits, beam_size, nbest, length_penalty,
                                                                return_attention, sampling)):
                results[prepared.index] = self._result(texts[prepared.index], prepared, hyps)
        return results  # type: ignore[return-value]

    def stream(self, text: str, max_len: int | None = None, min_len: int = 0, sample: bool = False,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[str]:
        """Target tokens of one text as they are produced (greedy, or sampling with the same
        draws as decode([text], sample=True, seed=seed))."""
        self._check_options(1, 1, 1, sample, temperature, top_k, top_p, "raise", max_len, min_len)
        prepared = self._prepare(0, text)
        memory, state, mask = self._encode([prepared])
        step = self._stepper(memory, mask)
        sampling = search.Sampling(temperature, top_k, top_p, seed) if sample else None
        for token_id in search.stream(step, state, self._limits(max_len, min_len), sampling, take=self._take):
            yield self.bundle.target.vocab.tokens[token_id]

    # -- internals -------------------------------------------------------------------
    def _check_options(self, beam_size, nbest, batch_size, sample, temperature, top_k, top_p, errors, max_len, min_len):
        problems = []
        if beam_size < 1:
            problems.append("beam_size must be at least 1")
        if not 1 <= nbest <= max(beam_size, 1):
            problems.append(f"nbest must be between 1 and beam_size ({beam_size})")
        if batch_size < 1:
            problems.append("batch_size must be at least 1")
        if sample and beam_size > 1:
            problems.append("sampling and beam search cannot be combined; use beam_size=1 with sample=True")
        if temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
            problems.append("temperature must be > 0, top_k >= 0 and 0 < top_p <= 1")
        if errors not in ("raise", "return"):
            problems.append("errors must be 'raise' or 'return'")
        if max_len is not None and max_len < 0 or min_len < 0:
            problems.append("max_len and min_len must not be negative")
        if problems:
            raise Seq2EdgeError("; ".join(problems))

    def _limits(self, max_len: int | None, min_len: int) -> search.Limits:
        c = self.config
        return search.Limits(c.bos_id, c.eos_id, c.pad_id, c.tgt_vocab_size, min_len, c.max_tgt_len if max_len is None else max_len)

    def _prepare(self, index: int, text: str) -> _Prepared:
        if not isinstance(text, str):
            raise InputError(f"expected a string, got {type(text).__name__}")
        _check_text(text)
        tokens, ids = self.bundle.source.encode_tokens(text, self.unknown)
        limit = self.config.max_src_len
        if len(ids) > limit:
            if self.too_long == "error":
                raise InputError(f"{len(ids)} source tokens, over the model's max_src_len of {limit} (use too_long='truncate')")
            warnings.warn(f"input {index}: {len(ids)} source tokens truncated to max_src_len {limit}", stacklevel=3)
            tokens, ids = tokens[:limit], ids[:limit]
        return _Prepared(index, ids, tokens)

    def _encode(self, chunk: list[_Prepared]):
        lengths = np.array([len(p.ids) for p in chunk], dtype=np.int64)
        src = np.full((len(chunk), int(lengths.max())), self.config.pad_id, dtype=np.int64)
        for row, p in enumerate(chunk):
            src[row, : len(p.ids)] = p.ids
        mask = np.arange(src.shape[1])[None, :] < lengths[:, None]
        if self._device is not None:
            memory, state = self._device.encode(src, lengths)
            return memory, state, self._device.to_device(mask)
        memory, state = self._engine.encode(src, lengths)
        return memory, state, mask

    def _stepper(self, memory, mask) -> search.Step:
        """The search's step: feeds each hypothesis row its input's memory and mask,
        re-gathering them (on the device, under IOBinding) only when the set of rows changes."""
        engine, device = self._engine, self._device
        cache: dict[str, object] = {"rows": None}
        inputs = (memory.shape()[0] if device is not None else memory.shape[0])

        def step(prev_ids, state, rows):
            if rows is not cache["rows"]:
                cache["rows"] = rows
                if rows.size == inputs and bool((rows == np.arange(rows.size)).all()):
                    cache["memory"], cache["mask"] = memory, mask
                elif device is not None:
                    cache["memory"] = device.gather("GATHER_MEMORY", memory, rows)
                    cache["mask"] = device.gather("GATHER_MASK", mask, rows)
                else:
                    cache["memory"], cache["mask"] = memory[rows], mask[rows]
            if device is not None:
                return device.step(prev_ids, state, cache["memory"], cache["mask"])
            return search.HostStep(*engine.step(prev_ids, state, cache["memory"], cache["mask"]))

        return step

    @property
    def _take(self) -> search.Take:
        return self._device.take_state if self._device is not None else search.take_rows

    def _decode_batch(self, chunk, limits, beam_size, nbest, length_penalty, return_attention, sampling):
        memory, state, mask = self._encode(chunk)
        step = self._stepper(memory, mask)
        if beam_size == 1:
            input_ids = np.array([p.index for p in chunk])
            hyps = search.greedy(step, state, limits, return_attention, sampling, input_ids, take=self._take)
            return [[h] for h in hyps]
        return search.beam_search(step, state, limits, beam_size, nbest, length_penalty, return_attention, take=self._take)

    def _result(self, text: str, prepared: _Prepared, hyps: list[search.Hypothesis]) -> Result:
        target = self.bundle.target
        vocab = target.vocab.tokens
        src_len = len(prepared.ids)
        out = []
        for h in hyps:
            tokens = [vocab[i] for i in h.ids]  # searches never choose <pad> or <s>; </s> ends a hypothesis
            attention = h.attention[:, :src_len] if h.attention is not None else None
            out.append(Result(text, target.join(tokens), tokens, h.score, [], attention, prepared.source_tokens, h.truncated))
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
