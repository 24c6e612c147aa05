"""Where a long batch-64 run of single words spends its time, per precision (docs/bulk.md).

    python -m seq2edge.bench.profile_bulk [--words 12000] [--bundle models/g2p-en]

Decodes CMUdict headwords in 4,096-line chunks exactly as `seq2edge decode --format jsonl` does
(runtime.bulk.decode_chunk), one thread, under cProfile, and prints the share of time inside
onnxruntime's session.run and the functions with the most time of their own.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

from seq2edge.bench.measure import SessionTimer
from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.bulk import Job, decode_chunk
from seq2edge.runtime.options import SearchOptions
from seq2edge.train import corpus as C

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=12000)
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "g2p-en")
    args = parser.parse_args(argv)
    words = [e.source for e in C.load_cmudict().entries][: args.words]
    lines = [(i + 1, w, None) for i, w in enumerate(words)]
    for precision in ("fp32", "int8"):
        model = Seq2Seq.load(args.bundle, providers="cpu", threads=1, precision=precision, unknown="unk")
        job = Job("", {}, SearchOptions(errors="return"), "jsonl")
        profile = cProfile.Profile()
        with SessionTimer(model) as timer:
            start = time.perf_counter()
            profile.enable()
            for first in range(0, len(lines), 4096):
                decode_chunk(model, job, lines[first : first + 4096])
            profile.disable()
            total = time.perf_counter() - start
        print(f"{precision}: {len(words) / total:.0f} lines/s under the profiler, {100 * timer.seconds / total:.1f}% inside "
              "session.run")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
        print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
