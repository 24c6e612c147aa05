"""Training data: tokenisers built from a corpus, id sequences, batches and their order.

`prepare` is the path from a corpus to what the training loop consumes:
corpus -> split -> tokenisers (SentencePiece trained here when asked) -> encoded pairs.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2edge.runtime.config import ModelConfig
from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.tokenize import SPECIALS, TextCodec, Vocabulary
from seq2edge.runtime.util import pad_batch, write_bytes_atomic

from .config import TrainConfig
from .corpus import Corpus, Entry, load_corpus, split, split_of
from .widen import widened_config


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
    write_bytes_atomic(out, model.getvalue())
    return out


def spm_pieces(path: Path) -> list[str]:
    """The pieces a SentencePiece model can split text into: its normal pieces (its <unk> is ours)."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
            if not (processor.is_unknown(i) or processor.is_control(i) or processor.is_unused(i) or processor.is_byte(i))]


def build_codec(kind: str, texts: Sequence[str], lowercase: bool, min_freq: int, max_size: int | None,
                spm_path: Path | None = None) -> TextCodec:
    """A codec whose vocabulary holds the tokens of `texts` seen at least `min_freq` times (at most
    `max_size` of them). For spm it holds every piece of the model at `spm_path`, which already chose
    them: pieces the training texts never needed (single characters, a lone word boundary) are what
    new words of known characters split into, and must not make those words unknown."""
    if kind == "spm":
        pieces = sorted(set(spm_pieces(spm_path)) - set(SPECIALS))
        return TextCodec(kind, Vocabulary([*SPECIALS, *pieces]), lowercase, spm_path)
    probe = TextCodec(kind, Vocabulary(SPECIALS), lowercase)
    counts = Counter(tok for text in texts for tok in probe.split(text))
    return TextCodec(kind, Vocabulary.build(counts, min_freq, max_size), lowercase)


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
    src_ids, lengths = pad_batch(src, pad)
    tgt_in, _ = pad_batch([[bos, *t] for t in tgt], pad)
    tgt_out, _ = pad_batch([[*t, eos] for t in tgt], pad)
    return Batch(torch.from_numpy(src_ids), torch.from_numpy(lengths), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out))


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


def rank_share(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's batches when `world` processes train together: every rank must take the same
    number of steps (each step is a collective gradient sum; a rank left with one batch more waits
    for a partner that has moved on), so the list is filled up to a multiple of `world` with its
    own first batches, as torch's DistributedSampler does, and dealt out round-robin."""
    if world <= 1:
        return batches
    short = -len(batches) % world
    return (batches + batches[:short])[rank::world]


@dataclass
class TrainingData:
    """What the training loop consumes: the model config, both codecs, encoded training pairs, dev entries."""

    model_config: ModelConfig
    source: TextCodec
    target: TextCodec
    train: Encoded
    dev: list[Entry]


def split_corpus(tc: TrainConfig, out: Path | None = None, log: Callable[[str], None] = print
                 ) -> tuple[Corpus, list[Entry], list[Entry]]:
    """The corpus and its training and dev parts, cut to the configured limits; with a teacher
    (tc.kd), the training part as the teacher labels it (train/distill.py; cached in `out`)."""
    corpus = load_corpus(tc.corpus)
    train_entries = split(corpus.entries, "train")[: tc.train_limit]
    dev = split(corpus.entries, "dev")[: tc.dev_limit]
    if not train_entries or not dev:
        raise Seq2EdgeError(f"{tc.corpus}: the split left {len(train_entries)} training and {len(dev)} dev entries; "
                            "the corpus is too small")
    if tc.kd is not None:
        from .distill import distilled_entries

        held_out = {e.source.casefold() for e in corpus.entries if split_of(e.source) != "train"} if tc.extra_inputs else ()
        train_entries = distilled_entries(tc, train_entries, out, log, held_out)
    return corpus, train_entries, dev


def prepare_from(tc: TrainConfig, checkpoint: Path, out: Path, log: Callable[[str], None] = print,
                 wider: dict[str, int] | None = None) -> TrainingData:
    """The corpus encoded with the model options and vocabularies of `checkpoint` (a resumed run's own
    directory, or the one --init-from names): nothing is rebuilt, so its weights fit. `wider`: sizes
    (hidden, embed) that grow the model (train/widen.py)."""
    from .checkpoint import load_codecs, read_json

    c = ModelConfig.from_dict(read_json(checkpoint / "config.json"), where=str(checkpoint / "config.json"))
    if wider:
        c = widened_config(c, wider)
    source, target = load_codecs(checkpoint, c)
    out.mkdir(parents=True, exist_ok=True)
    for spm in checkpoint.glob("*.spm.model"):  # SentencePiece tokenisers travel with their vocabularies
        if not (out / spm.name).exists():
            write_bytes_atomic(out / spm.name, spm.read_bytes())
    _, train_entries, dev = split_corpus(tc, out, log)
    encoded = encode_pairs(train_entries, source, target, c.max_src_len, c.max_tgt_len)
    if checkpoint != out:
        log(f"{tc.corpus}: {len(encoded.src)} training pairs, {len(dev)} dev inputs, vocabularies and model options of "
            f"{checkpoint}")
    return TrainingData(c, source, target, encoded, dev)


def prepare(tc: TrainConfig, arch: dict, out: Path, log: Callable[[str], None] = print) -> TrainingData:
    """Corpus -> split -> tokenisers (SentencePiece trained here when asked) -> encoded pairs.

    `arch` holds the ModelConfig fields chosen by the user (sizes, cell, tokenisers...)."""
    corpus, train_entries, dev = split_corpus(tc, out, log)
    for problem in corpus.problems:
        log(problem)
    src_kind = arch.pop("src_tokens", None) or corpus.src_tokens
    tgt_kind = arch.pop("tgt_tokens", None) or corpus.tgt_tokens
    lower = arch.pop("lowercase_source", None)
    lower = corpus.lowercase_source if lower is None else lower
    out.mkdir(parents=True, exist_ok=True)
    sources = [e.source for e in train_entries]
    targets = [r for e in train_entries for r in e.references]
    codecs = []
    for side, kind, texts, size, lowercase in (("source", src_kind, sources, tc.src_vocab_size, lower),
                                               ("target", tgt_kind, targets, tc.tgt_vocab_size, False)):
        spm = None
        if kind == "spm":
            spm = train_spm(texts, out / f"{side}.spm.model", size or 1000, lowercase)
            size = None  # the SentencePiece model already fixed the pieces
        codecs.append(build_codec(kind, texts, lowercase, tc.min_freq, size, spm))
    source, target = codecs
    config = ModelConfig(src_vocab_size=len(source.vocab), tgt_vocab_size=len(target.vocab),
                         src_tokens=src_kind, tgt_tokens=tgt_kind, lowercase_source=lower, **arch)
    encoded = encode_pairs(train_entries, source, target, config.max_src_len, config.max_tgt_len)
    if encoded.too_long:
        log(f"{encoded.too_long} training pairs are longer than max_src_len={config.max_src_len} "
            f"or max_tgt_len={config.max_tgt_len} tokens and were left out")
    if not encoded.src:
        raise Seq2EdgeError("no training pairs left within the length limits")
    log(f"{tc.corpus}: {len(encoded.src)} training pairs, {len(dev)} dev inputs, "
        f"vocabularies {len(source.vocab)} source / {len(target.vocab)} target")
    return TrainingData(config, source, target, encoded, dev)
