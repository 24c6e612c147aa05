"""Words/s of the Python runtime, the JavaScript host and the native host on the same words, one thread, in one run.

    python -m seq2edge.bench.hosts BUNDLE [--words 1000]

BUNDLE must have greedy graphs (`seq2edge export CKPT BUNDLE --greedy-graph`). Prints docs/hosts.md's
table: per-step and greedy-graph decoding at batch 1 and 64, in Python
(onnxruntime), Node (onnxruntime-node), Node with onnxruntime-web's wasm and the native host (hosts/c, where
`make c` built it; its library called once per decode through its C API).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C

from .measure import native_model

REPO = Path(__file__).resolve().parents[1]


def decode_rate(model, words: list[str], batch: int) -> float:
    """Words/s of model.decode (the Python runtime's or the native host's) at `batch`: the median of 3 runs after a warm-up."""
    model.decode(words[:50], batch_size=batch)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.decode(words, batch_size=batch)
        times.append(time.perf_counter() - start)
    return len(words) / statistics.median(times)


def python_rate(bundle: Path, words: list[str], batch: int, graph: bool) -> float:
    model = Seq2Seq.load(bundle, providers="cpu", threads=1, greedy_graph=graph, unknown="unk", too_long="truncate")
    return decode_rate(model, words, batch)


def native_rate(bundle: Path, words: list[str], batch: int, graph: bool) -> float | None:
    model = native_model(bundle, greedy_graph=graph)
    return None if model is None else decode_rate(model, words, batch)


def node_rate(bundle: Path, words_file: Path, batch: int, backend: str, graph: bool) -> float:
    out = subprocess.run(["node", str(REPO / "hosts" / "js" / "bench.mjs"), str(bundle), str(words_file), str(batch), backend,
                          "graph" if graph else "steps"], capture_output=True, text=True, check=True)
    return float(out.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--words", type=int, default=1000)
    args = parser.parse_args(argv)
    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][: args.words]
    words_file = Path(tempfile.mkdtemp()) / "words.txt"
    words_file.write_text("\n".join(words) + "\n")
    print("| host | loop | batch 1 words/s | batch 64 words/s | vs Python per-step (1 / 64) |\n|---|---|---|---|---|")
    base = {b: python_rate(args.bundle, words, b, False) for b in (1, 64)}
    rows = [("Python (onnxruntime)", "per-step", base),
            ("Python (onnxruntime)", "greedy graph", {b: python_rate(args.bundle, words, b, True) for b in (1, 64)})]
    for host, backend in (("Node (onnxruntime-node)", "node"), ("Node (onnxruntime-web, wasm)", "wasm")):
        for graph in (False, True):
            rows.append((host, "greedy graph" if graph else "per-step",
                         {b: node_rate(args.bundle, words_file, b, backend, graph) for b in (1, 64)}))
    for graph in (False, True):
        native = {b: native_rate(args.bundle, words, b, graph) for b in (1, 64)}
        if native[1] is not None:
            rows.append(("native host (hosts/c)", "greedy graph" if graph else "per-step", native))
    for host, loop, rates in rows:
        print(f"| {host} | {loop} | {rates[1]:.0f} | {rates[64]:.0f} | {rates[1] / base[1]:.2f}x / {rates[64] / base[64]:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
