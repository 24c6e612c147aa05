"""int8 for recurrent cells onnxruntime has no integer kernel for: GRU and RNN weights stored as int8."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from seq2edge.export.quantize import quantize_recurrent_weights


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


def test_a_gru_bundle_ships_its_encoder_in_int8_at_under_half_the_float_size(tmp_path):
    import json

    from conftest import export_tiny, train_tiny

    ckpt = train_tiny(tmp_path / "ckpt", epochs=1, limit=96, dev_limit=16, cell="gru", bidirectional=True, hidden=128)
    bundle = export_tiny(ckpt, tmp_path / "bundle", int8=True, parity_words=64)
    sizes = {p: (bundle / f).stat().st_size for p, f in (("fp32", "encoder.onnx"), ("int8", "encoder.int8.onnx"))}
    assert sizes["int8"] < 0.5 * sizes["fp32"]
    encoder = onnx.load(str(bundle / "encoder.int8.onnx"))
    assert all(i.endswith("_float") for n in encoder.graph.node if n.op_type == "GRU" for i in n.input[1:3])
    assert json.loads((bundle / "bundle.json").read_text())["parity"]["int8"]["token_agreement_with_fp32"] > 0.5


def test_the_runtime_widens_int8_recurrent_weights_once_at_load_not_on_every_call(tmp_path):
    """The runtime's session options let constant folding replace each weight's DequantizeLinear by
    float weights; left in the graph, it would run on every encoder call."""
    from conftest import REPO

    from seq2edge.runtime.providers import session_options

    graph = REPO / "models" / "g2p-en-small" / "encoder.int8.onnx"
    weights = {t.name for t in onnx.load(str(graph)).graph.initializer}
    widened_per_call = []
    for options in (ort.SessionOptions(), session_options(1)):
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
        widened_per_call.append(sum(n.op_type == "DequantizeLinear" and n.input[0] in weights for n in nodes))
    assert widened_per_call[0] > 0 and widened_per_call[1] == 0
