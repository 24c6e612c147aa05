"""Where a batch-1 decode spends its time: one word per call, as a device app calls (docs/performance.md).

    python -m seq2edge.bench.profile_batch1 BUNDLE [--words 2000]

For each precision of BUNDLE, step by step and (where the bundle has one) through the greedy graph,
one thread: words/s, the share of the time inside onnxruntime's session.run and the Python side per
word (with the decoder steps a word takes), measured without a profiler; then the functions with the
most time of their own under cProfile.
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
from seq2edge.train import corpus as C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args(argv)
    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][: args.words]
    for precision in ("fp32", "int8"):
        for greedy_graph in (False, True):
            try:
                model = Seq2Seq.load(args.bundle, providers="cpu", threads=1, precision=precision, unknown="unk",
                                     too_long="truncate", greedy_graph=greedy_graph)
            except Exception as exc:  # a precision the bundle does not have
                print(f"{precision}: skipped ({exc})")
                break
            if greedy_graph and not model.bundle.has_graph("greedy", precision):
                continue
            one_at_a_time = lambda model=model: [model.decode([w]) for w in words]  # noqa: E731
            steps = sum(len(r[0].tokens) + 1 for r in one_at_a_time()) / len(words)  # and a warm-up
            with SessionTimer(model) as timer:
                start = time.perf_counter()
                one_at_a_time()
                total = time.perf_counter() - start
            name = f"{precision} {'greedy graph' if greedy_graph else 'step by step'}"
            print(f"{name}: {len(words) / total:.0f} words/s, {1e6 * total / len(words):.0f} us/word, "
                  f"{100 * timer.seconds / total:.1f}% inside session.run, Python side {1e6 * (total - timer.seconds) / len(words):.0f} "
                  f"us/word ({steps:.2f} decoder steps a word)")
            profile = cProfile.Profile()
            profile.enable()
            one_at_a_time()
            profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue().split("\n", 6)[-1])


if __name__ == "__main__":
    main()
