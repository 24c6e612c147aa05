"""One decoder step, traced or as one ONNX recurrent node per layer: nodes and µs per step.

    python -m seq2edge.bench.decoder_step CHECKPOINT [CHECKPOINT ...] [--batches 1,64] [--rounds 5]

Exports each checkpoint twice (`--decoder-step traced` and `node`, fp32 and int8, into a temporary
directory; both pass export's parity gate), then for each precision prints the decoder graph's
nodes after onnxruntime's optimisation (the runtime's session options), the time of one
session.run of the decoder at each batch size (one thread, a source of 8 positions) and the time
per input of a whole step-by-step greedy decode of `--inputs` inputs (encoder, steps and search);
the two variants timed in turn (`--rounds` rounds; the best round counts). Last, the
floor: one session.run of a graph with the step's inputs and outputs and no arithmetic.
docs/export.md, "The decoder step", gives a run.
"""

from __future__ import annotations

import collections
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort

from seq2edge.export.bundle import export_bundle, parity_entries
from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.interface import graph_file
from seq2edge.runtime.providers import session_options

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


def floor_graph(config) -> onnx.ModelProto:
    """A graph with the decoder step's inputs and outputs and no arithmetic: what one session.run costs
    before any node of a step does work (each output a Cast or Identity of an input)."""
    from onnx import TensorProto, helper

    sizes = config.axis_sizes
    ins = [helper.make_tensor_value_info("prev_ids", TensorProto.INT64, ["batch"]),
           helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", sizes["state_size"]]),
           helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["batch", "src_len", sizes["hidden"]]),
           helper.make_tensor_value_info("src_mask", TensorProto.BOOL, ["batch", "src_len"])]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("log_probs", "new_state", "attention")]
    nodes = [helper.make_node("Cast", ["prev_ids"], ["log_probs"], to=TensorProto.FLOAT),
             helper.make_node("Identity", ["state"], ["new_state"]),
             helper.make_node("Cast", ["src_mask"], ["attention"], to=TensorProto.FLOAT)]
    return helper.make_model(helper.make_graph(nodes, "floor", ins, outs), opset_imports=[helper.make_opsetid("", 17)])


def best_in_turn(calls: dict[str, Callable[[], object]], rounds: int, repeat: int = 1) -> dict[str, float]:
    """Best round's µs per call of each function, the functions timed in turn within each round
    (`repeat` calls a round) after one untimed call each."""
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(repeat):
                call()
            best[name] = min(best[name], 1e6 * (time.perf_counter() - start) / repeat)
    return best


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batches", default="1,64", show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--calls", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Calls per round at batch 1 (fewer for larger batches).")
@click.option("--parity-words", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--inputs", type=click.IntRange(min=1), default=500, show_default=True,
              help="Inputs decoded for the µs per word (the checkpoint corpus's dev inputs first, as export's parity takes them).")
def main(checkpoints: tuple[Path, ...], batches: str, rounds: int, calls: int, parity_words: int, inputs: int) -> None:
    sizes = [int(b) for b in batches.split(",")]
    print("model                    precision  step    nodes  " + "  ".join(f"µs/step b{b:<3d}" for b in sizes) + "  "
          + "  ".join(f"µs/word b{b:<3d}" for b in sizes))
    for checkpoint in checkpoints:
        with tempfile.TemporaryDirectory() as scratch_dir:
            scratch = Path(scratch_dir)
            # accept_int8: a model the int8 gate refuses still has steps to time
            bundles = {step: export_bundle(checkpoint, scratch / step, int8=True, accept_int8=True, decoder_step=step,
                                           parity_words=parity_words, log=lambda _: None) for step in STEPS}
            texts = [e.source for e in parity_entries(checkpoint, None, inputs)]
            for precision in ("fp32", "int8"):
                paths = {step: bundles[step] / graph_file("decoder", precision) for step in STEPS}
                sessions = {step: ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
                            for step, p in paths.items()}
                models = {step: Seq2Seq.load(bundles[step], providers="cpu", threads=1, precision=precision, greedy_graph=False,
                                             unknown="unk", too_long="truncate") for step in STEPS}
                config = models["traced"].config
                times, words = {}, {}
                for b in sizes:
                    feeds = step_feeds(config, b)
                    times[b] = best_in_turn({step: partial(s.run, None, feeds) for step, s in sessions.items()}, rounds,
                                            max(20, calls // b))
                    per_call = best_in_turn({step: partial(m.decode, texts, batch_size=b) for step, m in models.items()}, rounds)
                    words[b] = {step: t / len(texts) for step, t in per_call.items()}
                for step in STEPS:
                    nodes = sum(optimised_nodes(paths[step], scratch).values())
                    print(f"{checkpoint.name:24s} {precision:9s}  {step:6s}  {nodes:5d}  "
                          + "  ".join(f"{times[b][step]:12.1f}" for b in sizes) + "  "
                          + "  ".join(f"{words[b][step]:12.1f}" for b in sizes))
            floor = ort.InferenceSession(floor_graph(config).SerializeToString(), session_options(1),
                                         providers=["CPUExecutionProvider"])
            floors = [best_in_turn({"floor": partial(floor.run, None, step_feeds(config, b))}, rounds, max(20, calls // b))["floor"]
                      for b in sizes]
            print(f"{checkpoint.name:24s} session.run with the step's inputs and outputs, no arithmetic: "
                  + ", ".join(f"{f:.1f} µs at batch {b}" for f, b in zip(floors, sizes)))


if __name__ == "__main__":
    main()
