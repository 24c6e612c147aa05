"""int8 for recurrent cells onnxruntime has no integer kernel for: GRU and RNN weights stored as int8,
and in an encoder a Loop of integer matmuls beside the fused node, which batches run."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import export_tiny
from onnx import TensorProto, helper, numpy_helper

from seq2edge.export.quantize import quantize_recurrent_weights
from seq2edge.export.recurrent_loop import INT8_WEIGHT_LIMIT, loop_recurrences_int8


def _gru_graph(weights: np.ndarray, recurrence: np.ndarray, hidden: int) -> onnx.ModelProto:
    inputs = weights.shape[-1]
    node = helper.make_node("GRU", ["x", "W", "R"], ["y", "y_h"], hidden_size=hidden, direction="bidirectional")
    graph = helper.make_graph([node], "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, inputs])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, None, hidden])],
                              [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(recurrence, "R")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_gru_weights_become_int8_rows_and_decode_like_the_float_weights():
    rng = np.random.default_rng(0)
    hidden, inputs = 16, 8
    weights = rng.normal(0, 0.5, (2, 3 * hidden, inputs)).astype(np.float32)
    weights[1, 5] *= 1e-3  # a row of tiny weights: a scale shared with the other rows would round it to zeros
    recurrence = rng.normal(0, 0.5, (2, 3 * hidden, hidden)).astype(np.float32)
    model = _gru_graph(weights, recurrence, hidden)
    x = rng.normal(0, 1, (5, 1, inputs)).astype(np.float32)
    expected = _run(model, x)

    assert quantize_recurrent_weights(model) == 2
    onnx.checker.check_model(model)
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert {n for n, a in stored.items() if a.dtype == np.float32 and a.size > 2 * hidden} == {"W_scale", "R_scale"}
    assert stored["W_int8"].dtype == np.int8 and stored["W_int8"].shape == (2 * 3 * hidden, inputs)
    widened = stored["W_int8"].astype(np.float32) * stored["W_scale"][:, None]
    row = weights.reshape(-1, inputs)[3 * hidden + 5]
    np.testing.assert_allclose(widened[3 * hidden + 5], row, atol=np.abs(row).max() / 127)
    np.testing.assert_allclose(_run(model, x), expected, atol=2e-2)


def test_graphs_without_gru_or_rnn_are_left_as_they_are():
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    before = model.SerializeToString()
    assert quantize_recurrent_weights(model) == 0 and model.SerializeToString() == before


def test_a_gru_bundles_int8_encoder_is_under_half_the_float_size_with_its_loop_and_decodes_alike_as_ort(tmp_path):
    import json

    from conftest import export_tiny, train_tiny

    ckpt = train_tiny(tmp_path / "ckpt", epochs=1, limit=96, dev_limit=16, cell="gru", bidirectional=True, hidden=128)
    parity_words = 64
    bundle = export_tiny(ckpt, tmp_path / "bundle", int8=True, parity_words=parity_words, ort=True)
    sizes = {p: (bundle / f).stat().st_size for p, f in (("fp32", "encoder.onnx"), ("int8", "encoder.int8.onnx"))}
    assert sizes["int8"] < 0.5 * sizes["fp32"]
    encoder = onnx.load(str(bundle / "encoder.int8.onnx"))
    (branches,) = [n for n in encoder.graph.node if n.op_type == "If"]
    inside = {a.name: [n.op_type for n in a.g.node] for a in branches.attribute}
    assert inside["else_branch"] == ["GRU"] and "Loop" in inside["then_branch"]
    assert _threshold(encoder) == 48  # 64 units per direction
    # the ORT-format copy (mobile builds) runs the Loop's contrib kernel inside If and Loop alike
    from seq2edge.runtime import Seq2Seq
    from seq2edge.train import corpus as C

    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][:128]
    decoded = [[r.tokens for r in Seq2Seq.load(bundle, precision="int8", graph_format=f, unknown="unk").decode(words, batch_size=64)]
               for f in ("onnx", "ort")]
    assert decoded[0] == decoded[1]
    # the agreement export stored is the one measured on its parity inputs (dev words), fp32 against int8
    from seq2edge.export.bundle import parity_entries

    parity = [e.source for e in parity_entries(ckpt, None, parity_words)]
    fp32, int8 = (Seq2Seq.load(bundle, precision=p, unknown="unk", greedy_graph=False).decode(parity, errors="return")
                  for p in ("fp32", "int8"))
    agreement = sum(a.ok and b.ok and a.tokens == b.tokens for a, b in zip(fp32, int8)) / len(parity)
    assert json.loads((bundle / "bundle.json").read_text())["parity"]["int8"]["token_agreement_with_fp32"] == agreement
    assert _integer_weight_range(bundle) == INT8_WEIGHT_LIMIT  # the Loop's weights too


# The weight inputs of onnxruntime's integer kernels, multiplied with 8-bit activations.
_INTEGER_WEIGHTS = {"MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,), "DynamicQuantizeLSTM": (1, 2)}


def _integer_weight_range(bundle) -> int:
    """The largest |int8 weight| any integer kernel of the bundle's int8 graphs reads, subgraphs included."""
    largest = 0

    def walk(graph: onnx.GraphProto, stored: dict) -> None:
        nonlocal largest
        stored = {**stored, **{t.name: numpy_helper.to_array(t) for t in graph.initializer}}
        for node in graph.node:
            for slot in _INTEGER_WEIGHTS.get(node.op_type, ()):
                weights = stored[node.input[slot]]
                assert weights.dtype == np.int8, (node.op_type, node.input[slot], weights.dtype)
                largest = max(largest, int(np.abs(weights.astype(np.int32)).max()))
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g, stored)

    for graph in ("encoder", "decoder"):
        walk(onnx.load(str(bundle / f"{graph}.int8.onnx")).graph, {})
    return largest


def test_integer_kernels_read_weights_within_64_so_cpus_without_vnni_sum_them_without_saturating(tiny_checkpoint, tmp_path):
    """x86 CPUs without VNNI add pairs of uint8 x int8 products in 16 bits with saturation: weights
    up to 127 changed a GRU layer's outputs by 0.54 there and 28 of 400 words of the small model
    against wasm. An LSTM bundle's integer kernels (DynamicQuantizeLSTM, MatMulInteger) read
    weights within +-64, and use that range (a scale twice too large would leave it at 32)."""
    from conftest import export_tiny

    bundle = export_tiny(tiny_checkpoint, tmp_path / "bundle", int8=True, parity_words=40)
    assert _integer_weight_range(bundle) == INT8_WEIGHT_LIMIT


def test_the_runtime_widens_int8_recurrent_weights_once_at_load_not_on_every_call(tmp_path):
    """The runtime's session options let constant folding replace each weight's DequantizeLinear by
    float weights; left in the graph, it would run on every encoder call."""
    from seq2edge.runtime.providers import session_options

    rng = np.random.default_rng(1)
    model = _gru_graph(rng.normal(0, 0.5, (2, 48, 8)).astype(np.float32), rng.normal(0, 0.5, (2, 48, 16)).astype(np.float32), 16)
    quantize_recurrent_weights(model)
    weights = {t.name for t in model.graph.initializer}
    widened_per_call = []
    for options in (ort.SessionOptions(), session_options(1)):
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
        widened_per_call.append(sum(n.op_type == "DequantizeLinear" and n.input[0] in weights for n in nodes))
    assert widened_per_call[0] > 0 and widened_per_call[1] == 0


# -- the encoder's Loop of integer matmuls (export/recurrent_loop.py) --------------------------------

def _encoder_layer(op: str, direction: str, weights, recurrence, bias) -> onnx.ModelProto:
    """One recurrent node as encoder_graph.py writes it: X [S, B, I], sequence_lens -> Y, Y_h."""
    directions, rows, inputs = weights.shape
    hidden = recurrence.shape[-1]
    attributes = {"hidden_size": hidden, "direction": direction}
    if op == "GRU":
        attributes["linear_before_reset"] = 1
    node = helper.make_node(op, ["x", "W", "R", "B", "lengths"], ["y", "y_h"], **attributes)
    graph = helper.make_graph(
        [node], "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, inputs]),
         helper.make_tensor_value_info("lengths", TensorProto.INT32, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(recurrence, "R"), numpy_helper.from_array(bias, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_layer(model: onnx.ModelProto, x: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    from seq2edge.runtime.providers import session_options

    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x, "lengths": lengths})


def _rows_to_int8(weights: np.ndarray) -> np.ndarray:
    """The weights as int8 within +-INT8_WEIGHT_LIMIT with one scale per row (output unit), widened
    back: what both branches compute with."""
    limit = INT8_WEIGHT_LIMIT
    scale = np.maximum(np.abs(weights).max(axis=-1, keepdims=True), np.finfo(np.float32).tiny) / limit
    return (np.clip(np.rint(weights / scale), -limit, limit) * scale).astype(np.float32)


@pytest.mark.parametrize("op, direction", [("GRU", "bidirectional"), ("GRU", "forward"), ("RNN", "bidirectional")])
def test_an_int8_encoder_layer_runs_the_fused_node_for_small_batches_and_a_loop_for_large_ones(op, direction):
    """Below the threshold the node computes with the int8 weights exactly (any transposition or gate
    mix-up of the stored weights shows); at or above it the Loop does, within what quantising the
    activations to 8 bits moves (measured: at most 0.027, the same on CPUs with VNNI and on AVX2
    alone, where weights beyond +-64 made the integer sums saturate and moved it by 0.54; a
    swapped gate or an unreversed backward direction moves it by 0.45 and more),
    with zeros past every length and each direction's state at its own end."""
    rng = np.random.default_rng(0)
    gates, hidden, inputs, steps, directions = {"GRU": 3, "RNN": 1}[op], 24, 12, 7, 2 if direction == "bidirectional" else 1
    weights = rng.normal(0, 0.4, (directions, gates * hidden, inputs)).astype(np.float32)
    recurrence = rng.normal(0, 0.2, (directions, gates * hidden, hidden)).astype(np.float32)
    bias = rng.normal(0, 0.2, (directions, 2 * gates * hidden)).astype(np.float32)
    rounded = _encoder_layer(op, direction, _rows_to_int8(weights), _rows_to_int8(recurrence), bias)
    model = _encoder_layer(op, direction, weights, recurrence, bias)
    assert loop_recurrences_int8(model, min_batch=4) == 1
    assert [n.op_type for n in model.graph.node][-1] == "If"
    stored = [numpy_helper.to_array(t) for t in model.graph.initializer]
    assert not any(a.dtype == np.float32 and a.size >= recurrence.size for a in stored), "a float copy of the weights"

    for batch in (3, 9):
        x = rng.normal(0, 1, (steps, batch, inputs)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, batch).astype(np.int32)
        lengths[:2] = steps, 1
        got, expected = _run_layer(model, x, lengths), _run_layer(rounded, x, lengths)
        padding = np.arange(steps)[:, None] >= lengths[None, :]  # [S, B]
        assert np.all(got[0].transpose(0, 2, 1, 3)[padding] == 0)
        if batch < 4:
            np.testing.assert_allclose(got[0], expected[0], atol=1e-5)
            np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
        else:
            for g, e in zip(got, expected):
                assert np.abs(g - e).max() < 0.1 and np.abs(g - e).mean() < 0.01


def _threshold(model: onnx.ModelProto) -> int:
    (if_node,) = [n for n in model.graph.node if n.op_type == "If"]
    (compare,) = [n for n in model.graph.node if n.output[0] == if_node.input[0]]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return int(stored[compare.input[1]])


def test_the_loop_takes_over_from_the_batch_where_it_wins_and_small_layers_keep_their_node():
    """seq2edge.bench.loop_crossover: a 128-unit GRU's Loop wins from batch 12, a 64-unit one's from 32-48,
    a 32-unit one's not below 128; an RNN's sooner. A fixed threshold would slow small layers down."""
    from seq2edge.export.recurrent_loop import loop_min_batch

    assert [loop_min_batch("GRU", h) for h in (32, 64, 128, 256)] == [None, 48, 12, 12]
    assert [loop_min_batch("RNN", h) for h in (32, 64)] == [48, 12]
    rng = np.random.default_rng(0)
    for hidden, expected in ((128, 12), (64, 48)):
        model = _encoder_layer("GRU", "bidirectional", rng.normal(0, 0.4, (2, 3 * hidden, 8)).astype(np.float32),
                               rng.normal(0, 0.1, (2, 3 * hidden, hidden)).astype(np.float32),
                               np.zeros((2, 6 * hidden), np.float32))
        assert loop_recurrences_int8(model) == 1 and _threshold(model) == expected
    small = _encoder_layer("GRU", "bidirectional", rng.normal(0, 0.4, (2, 96, 8)).astype(np.float32),
                           rng.normal(0, 0.1, (2, 96, 32)).astype(np.float32), np.zeros((2, 192), np.float32))
    assert loop_recurrences_int8(small) == 0 and [n.op_type for n in small.graph.node] == ["GRU"]


def test_recurrent_nodes_with_an_initial_state_keep_their_node():
    rng = np.random.default_rng(0)
    model = _encoder_layer("GRU", "forward", rng.normal(0, 0.4, (1, 12, 4)).astype(np.float32),
                           rng.normal(0, 0.4, (1, 12, 4)).astype(np.float32), np.zeros((1, 24), np.float32))
    model.graph.node[0].input.append("h0")
    model.graph.input.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, None, 4]))
    assert loop_recurrences_int8(model, min_batch=4) == 0 and model.graph.node[0].op_type == "GRU"


def test_the_int8_gate_refuses_a_planted_bad_int8_graph_and_accept_int8_writes_it_saying_so(tiny_checkpoint, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from seq2edge.export import quantize
    from seq2edge.export.bundle import ExportError

    honest = quantize.CONVERTERS["int8"]

    def damaged(src, dst, kind):
        """int8 graphs whose decoder reads every weight at three times its scale: a wrong scale, planted."""
        honest(src, dst, kind)
        if kind == "decoder":
            graph = onnx.load(str(dst))
            for i, init in enumerate(graph.graph.initializer):
                if init.name.endswith("scale") and init.data_type == onnx.TensorProto.FLOAT:
                    graph.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3, init.name))
            onnx.save_model(graph, str(dst))

    monkeypatch.setitem(quantize.CONVERTERS, "int8", damaged)
    with pytest.raises(ExportError, match=r"int8 graphs decode \d+\.\d+% of the parity inputs as fp32 does \(the gate needs 90%\)"
                                          r".*pass accept_int8=True to write them anyway"):
        export_tiny(tiny_checkpoint, tmp_path / "refused", int8=True, parity_words=60)
    assert not (tmp_path / "refused").exists()
    from click.testing import CliRunner

    from seq2edge.export.cli import export

    result = CliRunner().invoke(export, [str(tiny_checkpoint), str(tmp_path / "cli"), "--int8", "--parity-words", "60"])
    assert result.exit_code != 0 and "pass --accept-int8 to write them anyway" in str(result.exception)
    bundle = export_tiny(tiny_checkpoint, tmp_path / "accepted", int8=True, parity_words=60, accept_int8=True)
    figures = json.loads((bundle / "bundle.json").read_text())["parity"]["int8"]
    assert figures["gate"].startswith(f"overridden by accept_int8=True: int8 graphs decode "
                                      f"{100 * figures['token_agreement_with_fp32']:.2f}% of the parity inputs")
    meta = json.loads((bundle / "bundle.json").read_text())
    size = {p: sum(e["bytes"] for e in meta["graphs"][p].values()) for p in ("fp32", "int8")}
    assert figures["bytes"] == size["int8"] and figures["size_ratio"] == round(size["int8"] / size["fp32"], 4) < 0.5


def test_int8_graphs_that_cannot_run_fail_the_export_and_fp16_graphs_are_not_measured(tiny_checkpoint, tmp_path, monkeypatch):
    """A CPU provider may lack fp16 kernels (those graphs are for GPUs): "not measured here". int8 graphs always
    run on the CPU, so a failure to run them is the export's failure, never a figure."""
    from seq2edge.export import verify

    class LacksKernels(verify.Seq2Seq):
        @classmethod
        def load(cls, path, *args, precision="fp32", **kwargs):
            if precision != "fp32":
                raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation\nmore")
            return super().load(path, *args, precision=precision, **kwargs)

    monkeypatch.setattr(verify, "Seq2Seq", LacksKernels)
    with pytest.raises(RuntimeError, match="NOT_IMPLEMENTED"):
        export_tiny(tiny_checkpoint, tmp_path / "int8", int8=True, parity_words=40)
    assert not (tmp_path / "int8").exists()
    bundle = export_tiny(tiny_checkpoint, tmp_path / "fp16", fp16=True, parity_words=40)
    figures = json.loads((bundle / "bundle.json").read_text())["parity"]["fp16"]
    assert figures["measured"] is False
    assert figures["reason"] == "the CPU provider cannot run these graphs: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : " \
                                "Could not find an implementation"


@pytest.mark.parametrize("figures, refused", [
    ({"token_agreement_with_fp32": 0.90}, None),
    ({"token_agreement_with_fp32": 0.899}, "int8 graphs decode 89.90% of the parity inputs as fp32 does (the gate needs 90%)"),
    ({"token_agreement_with_fp32": 0.95, "wer": 31.0, "fp32_wer": 30.0}, None),
    ({"token_agreement_with_fp32": 0.95, "wer": 30.5, "fp32_wer": 30.0}, None),
    ({"token_agreement_with_fp32": 0.95, "wer": 31.01, "fp32_wer": 30.0},
     "int8 WER on the parity inputs is 31.01%, over fp32's 30.00% by more than 1 point"),
])
def test_the_int8_gate_allows_90_percent_agreement_and_one_point_of_wer(figures, refused):
    from seq2edge.export.verify import int8_gate

    assert int8_gate(figures) == refused
