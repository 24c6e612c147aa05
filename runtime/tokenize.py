"""Tokenisers and vocabularies, shared by training and the device.

A `TextCodec` turns one side's text into ids and back: it splits text into
tokens (characters, whitespace-separated words, or SentencePiece pieces) and
maps tokens to ids through a `Vocabulary`. Training builds them; the bundle
stores their settings; the runtime rebuilds the same codec from the bundle.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import AnyModelConfig
from .errors import BundleError, InputError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
UNKNOWN_POLICIES = ("error", "unk", "skip")
_DROPPED_IDS = (0, 1, 2)  # ids of <pad>, <s>, </s>: every vocabulary starts with SPECIALS


class Vocabulary:
    """Token <-> id, with the four specials at ids 0-3."""

    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[:4]) != SPECIALS:
            raise BundleError(f"vocabulary must start with {SPECIALS}, found {tuple(tokens[:4])}")
        if len(set(tokens)) != len(tokens):
            raise BundleError("vocabulary has duplicate tokens")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, counts: dict[str, int], min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """The specials, then the tokens seen at least `min_freq` times in alphabetical order.

        With `max_size`, only the most frequent tokens are kept (ties broken alphabetically);
        they are still listed alphabetically, so ids do not depend on counts."""
        kept = sorted((t for t, n in counts.items() if n >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *sorted(kept)])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index


class TextCodec:
    """Text <-> ids for one side of a model."""

    def __init__(self, kind: str, vocab: Vocabulary, lowercase: bool = False, spm_path: Path | None = None,
                 space_symbol: str = ""):
        self.kind = kind
        self.vocab = vocab
        self.lowercase = lowercase
        # Character level only: the token a space is written as (JoeyNMT's "▁"; conventions.space_symbol).
        self.space_symbol = space_symbol if kind == "char" else ""
        self._spm = _load_spm(spm_path) if kind == "spm" else None
        # What a token of text may become: <pad>, <s> and </s> are control ids, never text, so a
        # "<pad>" in the input is an unknown token like any other (<unk> typed as text stays <unk>).
        self._from_text = {t: i for t, i in vocab.index.items() if i not in _DROPPED_IDS}

    def normalize(self, text: str) -> str:
        """The normalisation applied before splitting, identical in training and on the device."""
        text = unicodedata.normalize("NFC", text).strip()
        return text.lower() if self.lowercase else text

    def split(self, text: str) -> list[str]:
        text = self.normalize(text)
        if self.kind == "char":
            return list(text.replace(" ", self.space_symbol) if self.space_symbol else text)
        if self.kind == "word":
            return text.split()
        return self._spm.encode(text, out_type=str)

    def join(self, tokens: Sequence[str]) -> str:
        if self.kind == "char":
            text = "".join(tokens)
            return text.replace(self.space_symbol, " ") if self.space_symbol else text
        if self.kind == "word":
            return " ".join(tokens)
        return self._spm.decode_pieces(list(tokens))

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Ids of `text` (no <s> or </s>). Tokens outside the vocabulary follow `unknown`:
        "error" raises InputError naming them, "unk" maps them to <unk>, "skip" drops them."""
        return self.encode_tokens(text, unknown)[1]

    def encode_tokens(self, text: str, unknown: str = "error") -> tuple[list[str], list[int]]:
        """(tokens, ids) of `text`, after the unknown-token policy."""
        tokens = self.split(text)
        if not tokens:
            raise InputError("empty input")
        index = self._from_text
        ids = [index.get(t, -1) for t in tokens]
        if -1 not in ids:
            return tokens, ids
        missing = [t for t, i in zip(tokens, ids) if i < 0]
        if unknown == "error":
            shown = ", ".join(repr(t) for t in dict.fromkeys(missing))
            raise InputError(f"{_describe(text)}: not in the source vocabulary: {shown}", option=("unknown", ("unk", "skip")))
        if unknown == "skip":
            tokens = [t for t, i in zip(tokens, ids) if i >= 0]
            if not tokens:
                raise InputError(f"{_describe(text)}: nothing left after skipping unknown tokens")
            return tokens, [i for i in ids if i >= 0]
        return tokens, [self.vocab.index[UNK] if i < 0 else i for i in ids]

    def ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Tokens of `ids`; <pad>, <s> and </s> dropped, <unk> kept so that it stays visible."""
        return [self.vocab.tokens[i] for i in ids if i not in _DROPPED_IDS]


def codec_pair(config: AnyModelConfig, source_vocab: Sequence[str], target_vocab: Sequence[str],
               spm_paths: Sequence[Path | None] = (None, None), space_symbol: str = "") -> tuple[TextCodec, TextCodec]:
    """The source and target codecs the model config describes (one place for checkpoints and bundles).
    spm_paths: each side's SentencePiece model, for a side whose tokeniser is spm; space_symbol: a
    character-level side's token for a space (a bundle's conventions)."""
    codecs = []
    for side, kind, vocab, lower, spm in (("source", config.src_tokens, source_vocab, config.lowercase_source, spm_paths[0]),
                                          ("target", config.tgt_tokens, target_vocab, False, spm_paths[1])):
        try:
            tokens = Vocabulary(vocab)
        except BundleError as exc:
            raise BundleError(f"{side} {exc}") from None
        codecs.append(TextCodec(kind, tokens, lower, spm if kind == "spm" else None, space_symbol))
    return codecs[0], codecs[1]


def _describe(text: str, limit: int = 40) -> str:
    shown = text if len(text) <= limit else text[: limit - 3] + "..."
    return repr(shown)


def _load_spm(path: Path | None):
    if path is None:
        raise BundleError("an spm tokeniser needs its model file")
    try:
        import sentencepiece
    except ImportError:
        raise BundleError(f"{path.name}: this model uses a SentencePiece tokeniser; install it with: pip install 'seq2edge[spm]'") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read the SentencePiece model: {exc.strerror}") from None
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)  # parsed as protobuf, never executed
    except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError on bad protos
        raise BundleError(f"{path}: not a valid SentencePiece model ({exc})") from None
    return processor
