"""How often the JavaScript host samples other tokens than the Python runtime with the same seed.

    python -m seq2edge.bench.sampling_parity models/g2p-en [--words 12640]

Both hosts draw from (seed, input position, step) alone and compute the distribution in float32,
so they can differ only where a draw lands within float32 rounding of the line between two tokens
(numpy's float32 exp is not correctly rounded, JavaScript's Math.exp is double precision). For the
first `words` CMUdict test words and three settings (temperature 1.5; temperature 2 with top-k 5;
temperature 1.5 with top-p 0.8), Python's `decode` and `node hosts/js/cli.mjs` sample every word;
printed: each word that differs, then the counts. Needs `make js`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C

REPO = Path(__file__).resolve().parent.parent
SETTINGS = (dict(temperature=1.5, seed=3), dict(temperature=2.0, top_k=5, seed=4), dict(temperature=1.5, top_p=0.8, seed=5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--words", type=int, default=12640)
    args = parser.parse_args(argv)
    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][: args.words]
    model = Seq2Seq.load(args.bundle, providers="cpu", threads=1, unknown="unk")
    draws = differing = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "words.txt"
        path.write_text("\n".join(words) + "\n", encoding="utf-8")
        for settings in SETTINGS:
            flags = [x for name, value in settings.items() for x in (f"--{name.replace('_', '-')}", str(value))]
            proc = subprocess.run(["node", str(REPO / "hosts/js/cli.mjs"), str(args.bundle), "--input", str(path), "--jsonl",
                                   "--unknown", "unk", "--sample", *flags], capture_output=True, text=True, check=True)
            node = [json.loads(line)["tokens"] for line in proc.stdout.splitlines()]
            for result, tokens in zip(model.decode(words, sample=True, **settings), node, strict=True):
                draws += len(result.tokens) + 1
                if result.tokens != tokens:
                    differing += 1
                    print(f"{settings}: {result.input}: Python {' '.join(result.tokens)} | Node {' '.join(tokens)}")
    print(f"{len(words) * len(SETTINGS)} words sampled ({draws} draws), {differing} differing")


if __name__ == "__main__":
    main()
