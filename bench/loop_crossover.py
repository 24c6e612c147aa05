"""Where an int8 encoder's GRU Loop (export/recurrent_loop.py) overtakes the fused GRU node.

    python -m seq2edge.bench.loop_crossover [--op GRU|RNN] [--directions 2|1] [--hidden 32,64,96,128,192,256] [--steps 8,30]

For each hidden size per direction and source length: a GRU or RNN layer (64 inputs, random
weights) written as export writes it, rewritten with the Loop for every batch and for none, timed
at batch sizes 1-256, one thread, the two in turn (best of 5 runs of 40 calls each). Prints the
Loop's speed-up over the node at each batch size.
"""

from __future__ import annotations

import time

import click
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from seq2edge.export.recurrent_loop import loop_recurrences_int8
from seq2edge.runtime.providers import session_options

BATCHES = (1, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


def layer(op: str, directions: int, hidden: int, inputs: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    gates = {"GRU": 3, "RNN": 1}[op]
    w = rng.normal(0, 0.3, (directions, gates * hidden, inputs)).astype(np.float32)
    r = rng.normal(0, 0.3 / np.sqrt(hidden / 16), (directions, gates * hidden, hidden)).astype(np.float32)
    b = rng.normal(0, 0.1, (directions, 2 * gates * hidden)).astype(np.float32)
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    node = helper.make_node(op, ["x", "W", "R", "B", "lengths"], ["y", "y_h"], hidden_size=hidden,
                            direction="bidirectional" if directions == 2 else "forward", **extra)
    graph = helper.make_graph([node], "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, inputs]),
                               helper.make_tensor_value_info("lengths", TensorProto.INT32, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (r, "R"), (b, "B"))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(op: str, directions: int, hidden: int, min_batch: int) -> ort.InferenceSession:
    model = layer(op, directions, hidden)
    loop_recurrences_int8(model, min_batch)
    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def seconds(s: ort.InferenceSession, feeds: dict, calls: int = 40) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        s.run(None, feeds)
    return (time.perf_counter() - start) / calls


@click.command()
@click.option("--op", type=click.Choice(["GRU", "RNN"]), default="GRU", show_default=True)
@click.option("--directions", type=click.Choice(["1", "2"]), default="2", show_default=True)
@click.option("--hidden", default="32,64,96,128,192,256", show_default=True)
@click.option("--steps", default="8,30", show_default=True)
@click.option("--batches", default=",".join(map(str, BATCHES)), show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True, help="Timed runs per setting (the best counts).")
@click.option("--calls", type=click.IntRange(min=1), default=40, show_default=True, help="Calls per timed run.")
def main(op: str, directions: str, hidden: str, steps: str, batches: str, rounds: int, calls: int) -> None:
    rng = np.random.default_rng(1)
    sizes = [int(b) for b in batches.split(",")]
    print("hidden  steps  " + "  ".join(f"{b:>5d}" for b in sizes) + "   (Loop speed-up over the node, by batch size)")
    for h in (int(x) for x in hidden.split(",")):
        node, loop = session(op, int(directions), h, 10**9), session(op, int(directions), h, 1)
        for s in (int(x) for x in steps.split(",")):
            row = []
            for batch in sizes:
                feeds = {"x": rng.normal(0, 1, (s, batch, 64)).astype(np.float32),
                         "lengths": rng.integers(max(1, s - 3), s + 1, batch).astype(np.int32)}
                seconds(node, feeds, 3), seconds(loop, feeds, 3)
                best = {"node": 1e9, "loop": 1e9}
                for _ in range(rounds):
                    best["node"] = min(best["node"], seconds(node, feeds, calls))
                    best["loop"] = min(best["loop"], seconds(loop, feeds, calls))
                row.append(best["node"] / best["loop"])
            print(f"{h:6d}  {s:5d}  " + "  ".join(f"{x:5.2f}" for x in row))


if __name__ == "__main__":
    main()
