"""Measure int8 options against batch independence: does a word decode the same at batch 1 and batch 64?

    python tools/int8_options.py          # the shipped model, 1,000 CMUdict test words, one thread

Builds two alternatives to export's dynamic int8 from the shipped fp32 graphs and times all of them:
- row-wise: every activation row quantised with its own scale (exactly batch independent);
- weight-only: int8 weights dequantised when the session loads (fp32 arithmetic).
README "Export" gives the figures and why dynamic int8 stays the default.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from seq2edge.export.onnx import save_single_file, set_metadata
from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.interface import GRAPHS, graph_metadata
from seq2edge.runtime.schema import GraphEntry
from seq2edge.train import corpus as C

REPO = Path(__file__).resolve().parents[1]


def _int8(w: np.ndarray, axis=None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 values and scales of w (one scale, or one per slice along `axis` kept)."""
    scale = np.maximum(np.abs(w).max(axis=axis, keepdims=axis is not None), 1e-30) / 127.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


class _Builder:
    def __init__(self):
        self.nodes, self.initializers, self.count = [], [], 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_q{self.count}"

    def const(self, value: np.ndarray, base: str) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def dequantized(self, w: np.ndarray, base: str, axis=None) -> str:
        """int8 weights and their scales, turned back into float32 by Cast and Mul (folded at session load)."""
        values, scale = _int8(w, axis)
        cast = self.node("Cast", [self.const(values, base + "_int8")], to=TensorProto.FLOAT)
        return self.node("Mul", [cast, self.const(scale, base + "_scale")])

    def rowwise_matmul(self, x: str, w: np.ndarray, y: str, base: str) -> None:
        """y = x @ w with every row of x quantised with its own scale: no row depends on another."""
        wq, w_scale = _int8(w, axis=0)  # one scale per output column
        row_max = self.node("ReduceMax", [self.node("Abs", [x])], keepdims=1, axes=[1])
        row_scale = self.node("Max", [self.node("Div", [row_max, self.const(np.float32(127.0), "c127")]),
                                      self.const(np.float32(1e-30), "eps")])
        xq = self.node("Cast", [self.node("Round", [self.node("Div", [x, row_scale])])], to=TensorProto.INT8)
        acc = self.node("Cast", [self.node("MatMulInteger", [xq, self.const(wq, base + "_int8")])], to=TensorProto.FLOAT)
        self.node("Mul", [acc, self.node("Mul", [row_scale, self.const(w_scale.reshape(-1), base + "_scale")])], y)


def quantize_rowwise(src: str, dst: str, weight_only: bool = False) -> None:
    """int8 weights everywhere; matrix products either row-wise quantised (default) or in float32
    on dequantised weights (weight_only). RNN weights are dequantised in both."""
    model = onnx.load(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    b, replaced = _Builder(), set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1] if len(node.input) > 1 and node.input[1] in inits else None
        if node.op_type in ("Gemm", "MatMul") and weight and not attrs.get("transA", 0) \
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
            w = numpy_helper.to_array(inits[weight]).astype(np.float32)
            replaced.add(weight)
            if weight_only:
                node.input[1] = b.dequantized(w, weight)
                b.nodes.append(node)
                continue
            w = w.T if attrs.get("transB", 0) else w
            bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
            out = b.name(node.output[0] + "_nobias") if bias else node.output[0]
            b.rowwise_matmul(node.input[0], w, out, weight)
            if bias:
                b.node("Add", [out, bias], node.output[0])
            continue
        if node.op_type in ("LSTM", "GRU", "RNN"):
            for index in (1, 2):  # W and R
                if node.input[index] in inits:
                    name = node.input[index]
                    replaced.add(name)
                    node.input[index] = b.dequantized(numpy_helper.to_array(inits[name]).astype(np.float32), name, axis=2)
        b.nodes.append(node)
    kept = [t for t in graph.initializer if t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + b.initializers)
    del graph.node[:]
    graph.node.extend(b.nodes)
    onnx.checker.check_model(model)
    onnx.save(model, dst)


def variant(src: Path, work: Path, weight_only: bool) -> Path:
    """A copy of the bundle whose int8 graphs are rebuilt with quantize_rowwise."""
    dst = work / ("weight-only" if weight_only else "row-wise")
    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    for kind in GRAPHS:
        path = dst / f"{kind}.int8.onnx"
        quantize_rowwise(str(src / f"{kind}.onnx"), str(path), weight_only=weight_only)
        graph = onnx.load(str(path))
        set_metadata(graph, graph_metadata(meta["bundle_id"], meta["model"], "int8", kind))
        save_single_file(graph, path)
        meta["graphs"]["int8"][kind] = GraphEntry.of_file(path).to_dict()
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


def main() -> None:
    src = REPO / "models" / "g2p-en"
    work = Path(tempfile.mkdtemp(prefix="int8-options."))
    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][:1000]
    rows = [("dynamic int8 (export --int8)", src, "int8"), ("row-wise int8", variant(src, work, False), "int8"),
            ("weight-only int8", variant(src, work, True), "int8"), ("fp32", src, "fp32")]
    print("| graphs | inputs differing, batch 1 vs 64 | words/s batch 1 | words/s batch 64 | MB |\n|---|---|---|---|---|")
    for name, bundle, precision in rows:
        model = Seq2Seq.load(bundle, providers="cpu", precision=precision, threads=1, unknown="unk", too_long="truncate")
        one = [r.tokens for r in model.decode(words, batch_size=1)]
        many = [r.tokens for r in model.decode(words, batch_size=64)]
        start = time.perf_counter()
        model.decode(words[:300], batch_size=1)
        batch1 = 300 / (time.perf_counter() - start)
        start = time.perf_counter()
        model.decode(words, batch_size=64)
        batch64 = len(words) / (time.perf_counter() - start)
        size = sum(e.bytes or 0 for e in model.bundle.meta.graphs[precision].values()) / 1e6
        print(f"| {name} | {sum(a != b for a, b in zip(one, many))} of {len(words)} | {batch1:.0f} | {batch64:.0f} | {size:.2f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
