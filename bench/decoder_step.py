"""One decoder step, traced or as one ONNX recurrent node per layer: nodes and µs per step.

    python -m seq2edge.bench.decoder_step CHECKPOINT [CHECKPOINT ...] [--batches 1,64] [--rounds 5]

Exports each checkpoint twice (`--decoder-step traced` and `node`, fp32 and int8, into a temporary
directory; both pass export's parity gate), then for each precision prints the decoder graph's
nodes after onnxruntime's optimisation (the runtime's session options) and the time of one
session.run of the decoder at each batch size: one thread, a source of 8 positions, the two
variants timed in turn (`--rounds` rounds of `--calls` calls; the best round counts).
docs/export.md, "The decoder step", gives a run.
"""

from __future__ import annotations

import collections
import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort

from seq2edge.export.bundle import export_bundle
from seq2edge.runtime.interface import BUNDLE_FILE, graph_file
from seq2edge.runtime.providers import session_options
from seq2edge.runtime.schema import BundleMeta

STEPS = ("traced", "node")


def optimised_nodes(path: Path, scratch: Path) -> collections.Counter:
    """The graph's nodes by op type after onnxruntime's optimisation, as the runtime loads it."""
    options = session_options(1)
    options.optimized_model_filepath = str(scratch / "optimised.onnx")
    options.log_severity_level = 3  # its warning that an optimised graph is tied to this CPU
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def step_feeds(config, batch: int, src_len: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    sizes, rng = config.axis_sizes, np.random.default_rng(seed)
    return {"prev_ids": rng.integers(4, sizes["vocab"], batch).astype(np.int64),
            "state": rng.normal(0, 0.3, (batch, sizes["state_size"])).astype(np.float32),
            "memory": rng.normal(0, 0.3, (batch, src_len, sizes["hidden"])).astype(np.float32),
            "src_mask": np.ones((batch, src_len), dtype=bool)}


def microseconds(sessions: dict, feeds: dict, rounds: int, calls: int) -> dict[str, float]:
    """Best round's µs per call for each session, the sessions timed in turn within each round."""
    best = dict.fromkeys(sessions, float("inf"))
    for session in sessions.values():
        session.run(None, feeds)
    for _ in range(rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            for _ in range(calls):
                session.run(None, feeds)
            best[name] = min(best[name], 1e6 * (time.perf_counter() - start) / calls)
    return best


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batches", default="1,64", show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--calls", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Calls per round at batch 1 (fewer for larger batches).")
@click.option("--parity-words", type=click.IntRange(min=1), default=100, show_default=True)
def main(checkpoints: tuple[Path, ...], batches: str, rounds: int, calls: int, parity_words: int) -> None:
    sizes = [int(b) for b in batches.split(",")]
    print("model                precision  step    nodes  " + "  ".join(f"batch {b:>3d} µs" for b in sizes))
    for checkpoint in checkpoints:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            # accept_int8: a model the int8 gate refuses still has steps to time
            bundles = {step: export_bundle(checkpoint, scratch / step, int8=True, accept_int8=True, decoder_step=step,
                                           parity_words=parity_words, log=lambda _: None) for step in STEPS}
            meta_path = bundles["traced"] / BUNDLE_FILE
            config = BundleMeta.from_dict(json.loads(meta_path.read_text()), str(meta_path)).model
            for precision in ("fp32", "int8"):
                paths = {step: bundles[step] / graph_file("decoder", precision) for step in STEPS}
                sessions = {step: ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
                            for step, p in paths.items()}
                times = {b: microseconds(sessions, step_feeds(config, b), rounds, max(20, calls // b)) for b in sizes}
                for step in STEPS:
                    nodes = sum(optimised_nodes(paths[step], scratch).values())
                    print(f"{checkpoint.name:20s} {precision:9s}  {step:6s}  {nodes:5d}  "
                          + "  ".join(f"{times[b][step]:12.1f}" for b in sizes))


if __name__ == "__main__":
    main()
