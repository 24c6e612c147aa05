"""--init-from with a larger --hidden/--embed: a wider model that starts as the checkpoint and then learns."""

import itertools
import json
import subprocess

import pytest
import torch
from conftest import SEQ2EDGE
from safetensors.torch import load_file

from seq2edge.runtime.config import ModelConfig
from seq2edge.train.model import Seq2SeqModule
from seq2edge.train.widen import new_positions, widen_state, widened_config

BASE = ModelConfig(src_vocab_size=11, tgt_vocab_size=13, embed=6, hidden=8, dropout=0.0)
SHAPES = list(itertools.product([True, False], [True, False], [1, 2], [1, 2]))  # input feed, bidirectional, layers


def _pair(cell, attention, feed, bidirectional, layers, decoder_layers, hidden=14, embed=9):
    old = ModelConfig.from_dict({**BASE.to_dict(), "cell": cell, "attention": attention, "input_feed": feed,
                                 "bidirectional": bidirectional, "layers": layers, "decoder_layers": decoder_layers})
    torch.manual_seed(0)
    trained = Seq2SeqModule(old).eval()
    for p in trained.parameters():  # away from the initialisation, as a trained model is
        p.data.add_(0.3 * torch.randn_like(p))
    new = widened_config(old, {"hidden": hidden, "embed": embed})
    wide = Seq2SeqModule(new).eval()
    wide.load_state_dict(widen_state(trained.state_dict(), old, wide))
    return trained, wide


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(4, 11, (3, 7), generator=g), torch.tensor([7, 4, 1]), torch.randint(1, 13, (3, 5), generator=g)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("attention", ["dot", "general", "additive"])
def test_a_widened_model_computes_what_the_checkpoint_computes(cell, attention):
    """Every old unit keeps its place in each gate block and each half of a bidirectional layout: a unit
    misplaced, or a new unit reaching an old one, changes the log-probabilities."""
    src, lengths, tgt = _batch()
    for shape in SHAPES:
        trained, wide = _pair(cell, attention, *shape)
        with torch.no_grad():
            assert torch.allclose(trained(src, lengths, tgt), wide(src, lengths, tgt), atol=1e-5), shape


@pytest.mark.parametrize("attention", ["dot", "general", "additive"])
def test_a_widened_models_new_units_learn(attention):
    """A few steps of training move every parameter's new part: no new unit is stuck where both the weights
    into it and out of it start at zero (which would keep the wider model the old one forever)."""
    trained, wide = _pair("gru", attention, True, True, 1, 1)
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    wide.train()
    optimizer = torch.optim.SGD(wide.parameters(), lr=0.5)
    src, lengths, tgt = _batch()
    for _ in range(6):  # the longest path from a new unit to the loss is a few steps long
        optimizer.zero_grad()
        (-wide(src, lengths, tgt).gather(2, tgt.roll(-1, 1).unsqueeze(2)).mean()).backward()
        optimizer.step()
    added_parts = new_positions(trained.config, wide)
    for name, value in wide.state_dict().items():
        rows, cols = added_parts[name]
        moved = (value - before[name]).abs()
        added = moved[rows] if rows.numel() else moved[:, cols]  # embeddings and the output layer: new columns
        assert added.numel() and added.max() > 0, name


def test_widening_refuses_a_narrower_size_and_other_options():
    with pytest.raises(ValueError, match="smaller than the checkpoint's 8"):
        widened_config(BASE, {"hidden": 6})
    with pytest.raises(ValueError, match="not layers"):
        widened_config(BASE, {"layers": 2})


@pytest.mark.slow  # several training runs (kept out of make test's 10 minutes; .ci/run runs it)
def test_train_init_from_with_a_larger_hidden_starts_at_the_checkpoints_dev_wer(tiny_checkpoint, tmp_path):
    """Through the CLI: the new run's config is the checkpoint's with the wider sizes, and with a learning
    rate too small to move the weights its first dev WER is the checkpoint's best."""
    out = tmp_path / "wide"
    proc = subprocess.run([*SEQ2EDGE, "train", "--init-from", str(tiny_checkpoint), "--out", str(out), "--epochs", "1",
                           "--hidden", "48", "--embed", "24", "--limit", "200", "--dev-limit", "100", "--lr", "1e-12"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "widening" in proc.stderr and "hidden 32 -> 48" in proc.stderr
    old_config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == {**old_config, "hidden": 48, "embed": 24}
    assert load_file(out / "model.safetensors")["cells.0.linear.weight"].shape[0] == 4 * 48  # the LSTM's four gates
    before = json.loads((tiny_checkpoint / "train.json").read_text())["history"]
    assert json.loads((out / "train.json").read_text())["history"][0]["dev_wer"] == min(h["dev_wer"] for h in before)

    resumed = subprocess.run([*SEQ2EDGE, "train", "--resume", "--out", str(out), "--epochs", "2"],
                             capture_output=True, text=True)  # a widened run resumes as the wider model
    assert resumed.returncode == 0, resumed.stderr
    assert len(json.loads((out / "train.json").read_text())["history"]) == 2
    assert load_file(out / "model.safetensors")["cells.0.linear.weight"].shape[0] == 4 * 48

    narrower = subprocess.run([*SEQ2EDGE, "train", "--init-from", str(tiny_checkpoint), "--out", str(tmp_path / "n"),
                               "--hidden", "16"], capture_output=True, text=True)
    assert narrower.returncode != 0 and "smaller than the checkpoint's 32" in narrower.stderr
    assert "Traceback" not in narrower.stderr and not (tmp_path / "n").exists()
