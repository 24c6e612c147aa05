"""Every cell x attention x {1, 2} layers x {uni, bi} encoder trains, exports and passes parity."""

import itertools
import json

import pytest
from conftest import export_tiny, train_tiny

COMBINATIONS = list(itertools.product(("rnn", "lstm", "gru"), ("dot", "general", "additive"), (1, 2), (False, True)))


@pytest.mark.parametrize("cell,attention,layers,bidirectional", COMBINATIONS,
                         ids=[f"{c}-{a}-{n}L-{'bi' if b else 'uni'}" for c, a, n, b in COMBINATIONS])
def test_combination_exports_with_parity(tmp_path, cell, attention, layers, bidirectional):
    # Input feeding, a 2-layer decoder and dropout ride along on some combinations.
    extra = {"input_feed": layers == 2, "decoder_layers": 2 if (bidirectional and layers == 2) else 1, "dropout": 0.1}
    ckpt = train_tiny(tmp_path / "ckpt", epochs=1, limit=96, dev_limit=16, batch_size=32, cell=cell, attention=attention,
                      layers=layers, bidirectional=bidirectional, max_tgt_len=12, **extra)
    bundle = export_tiny(ckpt, tmp_path / "bundle", parity_words=64)
    parity = json.loads((bundle / "bundle.json").read_text())["parity"]["fp32"]
    assert parity["token_agreement"] == 1.0
    assert parity["max_abs_log_prob_diff"] <= parity["tolerance"] and parity["float32_noise"] > 0
    assert parity["steps"] >= 64


RECURRENT_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


@pytest.mark.parametrize("cell", ("rnn", "lstm", "gru"))
def test_decoder_step_as_recurrent_nodes_passes_parity_with_one_node_per_layer(tmp_path, cell):
    """--decoder-step node: each of two decoder layers (input feeding on) becomes one ONNX recurrent node
    that export's parity gate accepts; a wrong gate order or a mistranslated GRU variant would be refused.
    int8 keeps the nodes (DynamicQuantizeLSTM for LSTM)."""
    import onnx

    ckpt = train_tiny(tmp_path / "ckpt", epochs=1, limit=96, dev_limit=16, batch_size=32, cell=cell, attention="general",
                      layers=1, bidirectional=True, decoder_layers=2, input_feed=True, max_tgt_len=12)
    bundle = export_tiny(ckpt, tmp_path / "bundle", parity_words=64, int8=True, accept_int8=True, decoder_step="node")
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["parity"]["fp32"]["token_agreement"] == 1.0 and meta["exported_with"]["decoder_step"] == "node"
    ops = [n.op_type for n in onnx.load(str(bundle / "decoder.onnx")).graph.node]
    assert ops.count(RECURRENT_OPS[cell]) == 2
    int8_ops = [n.op_type for n in onnx.load(str(bundle / "decoder.int8.onnx")).graph.node]
    assert int8_ops.count("DynamicQuantizeLSTM" if cell == "lstm" else RECURRENT_OPS[cell]) == 2


def test_decoder_step_node_is_refused_where_it_cannot_apply(tmp_path, tiny_checkpoint):
    from seq2edge.runtime.errors import Seq2EdgeError

    with pytest.raises(Seq2EdgeError, match="needs seq2edge's own model and the torchscript exporter"):
        export_tiny(tiny_checkpoint, tmp_path / "bundle", exporter="dynamo", decoder_step="node")
    assert not (tmp_path / "bundle").exists()
