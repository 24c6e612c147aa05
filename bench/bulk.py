"""Lines/s of bulk decoding: `seq2edge decode --workers 1|2` (fp32, int8) and the Ray Data recipe, one run.

    python -m seq2edge.bench.bulk [--lines 40000] [--bundle models/g2p-en] [--no-ray]

Inputs are CMUdict headwords (single words, as in a lexicon or a TTS corpus), repeated to --lines.
Times whole commands (start-up included) and prints docs/bulk.md's table, with the time a
200 MB file of such words (13.9 M lines, the size users reported) would take at each rate.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seq2edge.train import corpus as C

REPO = Path(__file__).resolve().parents[1]
LINES_IN_200_MB = 13_900_000


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=40_000)
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "g2p-en")
    parser.add_argument("--no-ray", action="store_true", help="Leave out the Ray Data rows.")
    args = parser.parse_args(argv)
    words = [e.source for e in C.load_cmudict().entries]
    work = Path(tempfile.mkdtemp(prefix="bulk-bench."))
    path = work / "words.txt"
    path.write_text("\n".join((words * (args.lines // len(words) + 1))[: args.lines]) + "\n")
    decode = [sys.executable, "-m", "seq2edge.runtime.cli", "decode", str(args.bundle), "--input", str(path), "--unknown", "unk",
              "--output", str(work / "out.txt")]
    print("| run | precision | lines/s | vs 1 worker | 200 MB of words |\n|---|---|---|---|---|")
    for precision in ("fp32", "int8"):
        one = args.lines / timed([*decode, "--precision", precision, "--workers", "1", "--threads", "1"])
        two = args.lines / timed([*decode, "--precision", precision, "--workers", "2"])
        for name, rate in (("--workers 1", one), ("--workers 2", two)):
            print(f"| {name} | {precision} | {rate:.0f} | {rate / one:.2f}x | {LINES_IN_200_MB / rate / 60:.0f} min |", flush=True)
    ray = [sys.executable, "-m", "seq2edge.runtime.ray_data", str(args.bundle), str(path), str(work / "ray"), "--concurrency", "2",
           "--cpus-per-actor", "0.5", "--unknown", "unk"]
    for precision in (() if args.no_ray else ("fp32", "int8")):
        rate = args.lines / timed([*ray, "--precision", precision, "--address", "local"])
        print(f"| Ray Data, 2 actors, local | {precision} | {rate:.0f} | | {LINES_IN_200_MB / rate / 60:.0f} min |", flush=True)
        subprocess.run(["rm", "-rf", str(work / "ray")], check=True)


if __name__ == "__main__":
    main()
