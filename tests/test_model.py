import torch

from seq2edge.runtime.config import ModelConfig
from seq2edge.train.model import Seq2SeqModule, greedy_decode, reverse_padded, source_mask


def _model(**kw):
    torch.manual_seed(0)
    return Seq2SeqModule(ModelConfig(src_vocab_size=12, tgt_vocab_size=9, embed=8, hidden=16, **kw)).eval()


def test_reverse_padded_reverses_each_row_within_its_length():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3])).squeeze(2)
    assert out.tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_padding_does_not_change_a_bidirectional_encoding():
    model = _model(bidirectional=True, layers=2, cell="gru")
    src = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0]])
    mem1, state1 = model.encode(src, torch.tensor([3]))
    mem2, state2 = model.encode(padded, torch.tensor([3]))
    assert torch.allclose(mem1, mem2[:, :3], atol=1e-6)
    assert torch.allclose(state1, state2, atol=1e-6)


@torch.no_grad()
def test_attention_ignores_padded_source_positions():
    model = _model(attention="additive")
    memory, state = model.encode(torch.tensor([[5, 6, 0, 0]]), torch.tensor([2]))
    _, _, weights = model.step(torch.tensor([1]), state, memory, source_mask(torch.tensor([2]), 4))
    assert weights[0, 2:].abs().max() == 0
    assert abs(float(weights.sum()) - 1) < 1e-6


def test_state_size_matches_the_packed_decoder_state():
    for kw in ({"cell": "lstm", "input_feed": True, "decoder_layers": 2}, {"cell": "gru"}, {"cell": "rnn", "input_feed": True}):
        model = _model(**kw)
        _, state = model.encode(torch.tensor([[5, 6]]), torch.tensor([2]))
        assert state.shape == (1, model.config.state_size)


def test_greedy_decode_stops_within_the_length_limit():
    model = _model()
    ids, scores = greedy_decode(model, torch.tensor([[5, 6, 7]]), torch.tensor([3]), max_len=4)
    assert len(ids[0]) <= 4 and scores[0] < 0
