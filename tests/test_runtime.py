import numpy as np
import pytest

from seq2edge.runtime import BundleError, InputError, Result, Seq2Seq


def test_decode_returns_results_in_input_order(tiny_model):
    results = tiny_model.decode(["edge", "attention", "a"])
    assert [r.input for r in results] == ["edge", "attention", "a"]
    for r in results:
        assert isinstance(r, Result) and r.ok
        assert r.text == " ".join(r.tokens)
        assert r.score < 0 and np.isfinite(r.score)


def test_batch_decode_equals_one_at_a_time(tiny_model, dev_words):
    words = dev_words[:120]
    batched = tiny_model.decode(words, batch_size=32)
    for word, r in zip(words, batched):
        alone = tiny_model.decode([word], batch_size=1)[0]
        assert r.tokens == alone.tokens
        assert r.score == pytest.approx(alone.score, abs=1e-4)


def test_batch_size_does_not_change_results(tiny_model, dev_words):
    a = tiny_model.decode(dev_words[:200], batch_size=7)
    b = tiny_model.decode(dev_words[:200], batch_size=200)
    assert [r.tokens for r in a] == [r.tokens for r in b]


def test_decoding_always_stops_at_the_length_limit(tiny_model, dev_words):
    for r in tiny_model.decode(dev_words[:50], max_len=2):
        assert len(r.tokens) <= 2
    r = tiny_model.decode(["attention"], max_len=0)[0]
    assert r.tokens == [] and r.truncated


def test_score_is_the_sum_of_token_and_end_log_probs(tiny_model):
    r = tiny_model.decode(["edge"], return_attention=True)[0]
    assert r.attention.shape == (len(r.tokens) + 1, len("edge"))
    np.testing.assert_allclose(r.attention.sum(axis=1), 1.0, atol=1e-5)
    backend, c = tiny_model.backend, tiny_model.config
    ids = tiny_model.bundle.source.encode("edge")
    encoded = backend.encode(np.array([ids]), np.array([len(ids)]))
    state = encoded.state
    target = [tiny_model.bundle.target.vocab.index[t] for t in r.tokens] + [c.eos_id]
    prev, total = c.bos_id, 0.0
    for token in target:
        out = backend.step(np.array([prev]), state, encoded.memory, encoded.mask)
        state = out.state
        total += float(out.raw_log_probs[0, token])
        prev = token
    assert r.score == pytest.approx(total, abs=1e-4)


def test_bad_inputs_fail_alone_with_clear_messages(tiny_model):
    results = tiny_model.decode(["edge", "", "caf\u00e9\u4e2d", "a\x00b", "edge"], errors="return")
    assert results[0].ok and results[4].ok and results[0].tokens == results[4].tokens
    assert results[1].error == "empty input"
    assert "not in the source vocabulary" in results[2].error and "'中'" in results[2].error
    assert "control character U+0000" in results[3].error


def test_bad_input_raises_input_error_naming_its_position(tiny_model):
    with pytest.raises(InputError, match="input 1: empty input"):
        tiny_model.decode(["edge", "   "])


def test_unknown_policy_unk_decodes_an_unk_in_place_and_skip_decodes_without_it(tiny_bundle):
    skip = Seq2Seq.load(tiny_bundle, providers="cpu", unknown="skip")
    assert skip.decode(["ed\u4e2dge"])[0].tokens == skip.decode(["edge"])[0].tokens
    unk = Seq2Seq.load(tiny_bundle, providers="cpu", unknown="unk")
    source = unk.bundle.source
    ids = source.encode("ed\u4e2dge", "unk")
    assert ids == [*source.encode("ed"), unk.config.unk_id, *source.encode("ge")]
    assert unk.decode(["ed\u4e2dge"])[0].ok


def test_too_long_inputs_error_or_truncate_and_say_so(tiny_bundle, tiny_model):
    limit = tiny_model.config.max_src_len
    long = "a" * (limit + 5)
    error = tiny_model.decode([long], errors="return")[0].error
    assert f"{limit + 5} source tokens, over the model's max_src_len of {limit}" in error and "too_long='truncate'" in error
    model = Seq2Seq.load(tiny_bundle, providers="cpu", too_long="truncate")
    short, cut = model.decode(["edge", long])
    assert short.source_truncated_from is None
    assert cut.ok and cut.source_truncated_from == limit + 5 and len(cut.source_tokens) == limit


def test_decode_rejects_a_bare_string(tiny_model):
    with pytest.raises(TypeError, match="list of texts"):
        tiny_model.decode("edge")


def test_missing_bundle_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="no such bundle directory"):
        Seq2Seq.load(tmp_path / "nothing")


def test_a_decode_the_greedy_graph_serves_alone_never_creates_the_step_sessions():
    """One word, "auto": greedy.onnx decodes it, and the encoder's and decoder's weights are never loaded beside it
    (the big model's one-word peak was 126 MB with all three, 106 MB with the graph alone); their checks ran at load."""
    from conftest import REPO

    model = Seq2Seq.load(REPO / "models" / "g2p-en-small", providers="cpu")
    assert not model.backend.sessions  # every graph checked from its bytes, none created
    model.decode(["attention"])
    assert set(model.backend.sessions) == {"greedy"}
    model.decode(["edge"], beam_size=2)  # beam search steps the decoder
    assert set(model.backend.sessions) == {"greedy", "encoder", "decoder"}
