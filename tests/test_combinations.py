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
