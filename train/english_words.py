"""Write unlabelled English words for the small model's distillation (`--extra-inputs`).

    python -m seq2edge.train.english_words build/english-words.txt [--count 150000]

The `count` most frequent words of wordfreq's large English list (web, subtitles, books, Wikipedia)
that are not CMUdict headwords and are spelt only with the letters, apostrophes and hyphens that
CMUdict's headwords use, lowercased, one per line, most frequent first. The teacher labels them; the
student learns from its outputs on words no dictionary entry covers (models/g2p-en-small/README.md).
`seq2edge train` itself keeps only those of the training part, so no dev or test word gets in.
wordfreq's data is msgpack inside the package: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from seq2edge.runtime.util import write_text_atomic
from seq2edge.train.corpus import load_cmudict

WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")


def new_words(candidates: Iterable[str], headwords: set[str], count: int) -> list[str]:
    """The first `count` candidates that are no headword and are spelt like one (letters, inner ' and -)."""
    letters = set("".join(headwords))
    words = []
    for word in candidates:
        if word not in headwords and WORD.fullmatch(word) and set(word) <= letters:
            words.append(word)
            if len(words) == count:
                break
    return words


def english_words(count: int) -> list[str]:
    try:
        import wordfreq
    except ImportError:
        sys.exit("seq2edge.train.english_words needs wordfreq: pip install wordfreq")
    headwords = {e.source for e in load_cmudict().entries}
    return new_words(wordfreq.top_n_list("en", 10**7, wordlist="large"), headwords, count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=150_000)
    args = parser.parse_args(argv)
    words = english_words(args.count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(words) + "\n")
    print(f"{args.out}: {len(words)} words")


if __name__ == "__main__":
    main()
