"""What flushing subnormal floats to zero does to a model with tiny weights: words/s with onnxruntime's
`session.set_denormal_as_zero` (what both hosts set) and without it, at batch 1 and 64, in alternation.

    python -m seq2edge.bench.subnormals models/g2p-en-small-checkpoint [--words 512] [--rounds 3]

The probe is the model of the report that found it: CHECKPOINT widened by half (`train --init-from --hidden`)
and trained one step at a learning rate of 1e-12, so that every weight a widening starts at zero is about 1e-12,
then exported; products of such weights underflow to subnormal floats. The checkpoint's own bundle (exported
beside it) is timed too. How much a subnormal costs depends on the CPU: docs/performance.md has the figures."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seq2edge.runtime import Seq2Seq, providers
from seq2edge.train import corpus as C

CLI = [sys.executable, "-m", "seq2edge.runtime.cli"]


def make_probe(checkpoint: Path, work: Path) -> dict[str, Path]:
    """{name: bundle} of the checkpoint as it is and widened with tiny weights."""
    hidden = json.loads((checkpoint / "config.json").read_text())["hidden"]
    run = lambda *args: subprocess.run([*CLI, *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run("train", "--corpus", "cmudict", "--out", work / "widened", "--init-from", checkpoint, "--hidden", hidden // 2 * 3,
        "--lr", "1e-12", "--max-steps", "1", "--epochs", "1", "--threads", "1", "--limit", "512", "--dev-limit", "32")
    bundles = {"checkpoint": work / "bundle", "tiny weights": work / "widened-bundle"}
    for source, bundle in ((checkpoint, bundles["checkpoint"]), (work / "widened", bundles["tiny weights"])):
        run("export", source, bundle, "--parity-words", "100")
    return bundles


def words_per_second(bundle: Path, words: list[str], batch: int, flush: bool) -> float:
    providers.FLUSH_SUBNORMALS = flush
    try:
        model = Seq2Seq.load(bundle, providers="cpu", threads=1, unknown="unk", greedy_graph=False)
    finally:
        providers.FLUSH_SUBNORMALS = True
    model.decode(words[:batch], batch_size=batch)  # warm-up
    started = time.perf_counter()
    model.decode(words, batch_size=batch)
    return len(words) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--words", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][: args.words]
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name, bundle in make_probe(args.checkpoint, Path(tmp)).items():
            for batch in (1, 64):
                timings: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(args.rounds):  # in alternation, so that a busy moment hits both alike
                    for flush in (False, True):
                        timings[flush].append(words_per_second(bundle, words, batch, flush))
                rows.append((name, batch, statistics.median(timings[False]), statistics.median(timings[True])))
    print(f"{'model':<14}{'batch':>6}{'words/s kept':>15}{'words/s flushed':>18}{'flushed/kept':>14}")
    for name, batch, kept, flushed in rows:
        print(f"{name:<14}{batch:>6}{kept:>15.0f}{flushed:>18.0f}{flushed / kept:>14.2f}")


if __name__ == "__main__":
    main()
