"""Search: beam against exhaustive search, greedy equalities, sampling, streaming, threads."""

import random
import threading

import numpy as np
import pytest
from conftest import export_tiny, train_tiny

from seq2edge.runtime import Seq2EdgeError, Seq2Seq, search
from seq2edge.runtime.options import SearchOptions


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """A model whose target alphabet is {a, b, c} and outputs at most 3 tokens: small enough to enumerate."""
    rng = random.Random(7)
    table = {"x": "a", "y": "b", "z": "c", "w": "ab"}
    lines = set()
    while len(lines) < 400:
        src = "".join(rng.choice("xyzw") for _ in range(rng.randint(1, 5)))
        lines.add(f"{src}\t{''.join(table[c] for c in src)[:3]}\n")
    root = tmp_path_factory.mktemp("micro")
    (root / "micro.tsv").write_text("".join(sorted(lines)))
    ckpt = train_tiny(root / "ckpt", corpus=str(root / "micro.tsv"), epochs=2, limit=300, dev_limit=20,
                      embed=8, hidden=16, max_tgt_len=3, max_src_len=8)
    return Seq2Seq.load(export_tiny(ckpt, root / "bundle", parity_words=40), providers="cpu", threads=1)


def exhaustive(model, text, max_len):
    """Every output of at most max_len tokens (then </s>), scored through the decoder graph, best first."""
    backend, c = model.backend, model.config
    ids = model.bundle.source.encode(text)
    encoded = backend.encode(np.array([ids]), np.array([len(ids)]))
    memory, state, mask = encoded.memory, encoded.state, encoded.mask
    allowed = [i for i in range(c.tgt_vocab_size) if i not in (c.pad_id, c.bos_id)]
    found = []

    def walk(prefix, prev, state, score):
        out = backend.step(np.array([prev]), state, memory, mask)
        state, lp = out.state, out.raw_log_probs[0].astype(np.float64)
        found.append((prefix, score + lp[c.eos_id]))
        if len(prefix) < max_len:
            for token in allowed:
                if token != c.eos_id:
                    walk(prefix + [token], token, state, score + lp[token])

    walk([], c.bos_id, state, 0.0)
    found.sort(key=lambda pair: -pair[1])
    vocab = model.bundle.target.vocab.tokens
    return [([vocab[i] for i in p], s) for p, s in found]


@pytest.mark.parametrize("text", ["x", "wyz", "zzwx"])
def test_wide_beam_equals_exhaustive_search(micro_model, text):
    truth = exhaustive(micro_model, text, max_len=3)
    result = micro_model.decode([text], beam_size=100, nbest=6, max_len=3)[0]
    assert [r.tokens for r in result.nbest] == [t for t, _ in truth[:6]]
    for r, (_, score) in zip(result.nbest, truth):
        assert r.score == pytest.approx(score, abs=1e-4)


def test_narrow_beam_scores_are_exact_sums_of_log_probs(micro_model):
    truth = dict((tuple(t), s) for t, s in exhaustive(micro_model, "wyz", max_len=3))
    result = micro_model.decode(["wyz"], beam_size=3, nbest=3, max_len=3)[0]
    for r in result.nbest:
        assert r.score == pytest.approx(truth[tuple(r.tokens)], abs=1e-4)
    assert result.score >= micro_model.decode(["wyz"], max_len=3)[0].score - 1e-6


def test_beam_size_one_equals_greedy_exactly(tiny_model, dev_words):
    greedy = tiny_model.decode(dev_words[:150])
    beam1 = tiny_model.decode(dev_words[:150], beam_size=1, nbest=1)
    assert [(r.tokens, r.score) for r in greedy] == [(r.tokens, r.score) for r in beam1]
    # and the beam code path itself, with one beam, finds the greedy output
    from seq2edge.runtime import search
    model = tiny_model
    sources = [model._prepare(i, w) for i, w in enumerate(dev_words[:40])]
    options = SearchOptions(beam_size=1)
    limits, input_ids = model._limits(options, 0), np.arange(len(sources))
    hyps = search.beam(*model._encode(sources), input_ids, limits, options)
    alone = search.greedy(*model._encode(sources), input_ids, limits, options)
    assert [h[0].ids for h in hyps] == [h[0].ids for h in alone]
    assert np.allclose([h[0].score for h in hyps], [h[0].score for h in alone], atol=1e-5)


def test_beam_batches_equal_one_at_a_time(tiny_model, dev_words):
    words = dev_words[:40]
    batched = tiny_model.decode(words, beam_size=4, nbest=2, batch_size=16)
    for word, r in zip(words, batched):
        alone = tiny_model.decode([word], beam_size=4, nbest=2)[0]
        assert [h.tokens for h in r.nbest] == [h.tokens for h in alone.nbest]


def test_nbest_is_sorted_distinct_and_bounded_by_the_beam(tiny_model):
    r = tiny_model.decode(["attention"], beam_size=5, nbest=5)[0]
    assert len(r.nbest) == 5 and r.nbest[0].tokens == r.tokens
    assert len({tuple(h.tokens) for h in r.nbest}) == 5
    assert [h.score for h in r.nbest] == sorted((h.score for h in r.nbest), reverse=True)
    with pytest.raises(Seq2EdgeError, match="nbest must be between 1 and beam_size"):
        tiny_model.decode(["edge"], beam_size=2, nbest=3)


def test_length_penalty_ranks_by_normalised_score_and_favours_longer_outputs(tiny_model, dev_words):
    alpha = 2.0
    plain = tiny_model.decode(dev_words[:60], beam_size=4, nbest=4)
    long = tiny_model.decode(dev_words[:60], beam_size=4, nbest=4, length_penalty=alpha)
    for r in long:
        ranks = [h.score / (len(h.tokens) + 1) ** alpha for h in r.nbest]
        assert ranks == sorted(ranks, reverse=True)
    assert sum(len(r.tokens) for r in long) > sum(len(r.tokens) for r in plain)


def test_min_len_is_respected(tiny_model, dev_words):
    for beam in (1, 3):
        for r in tiny_model.decode(dev_words[:30], beam_size=beam, min_len=6, max_len=10):
            assert len(r.tokens) >= 6


def test_sampling_is_reproducible_and_independent_of_batching(tiny_model, dev_words):
    words = dev_words[:50]
    a = tiny_model.decode(words, sample=True, seed=11, batch_size=50)
    b = tiny_model.decode(words, sample=True, seed=11, batch_size=3)
    c = tiny_model.decode(words, sample=True, seed=12)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]


def test_positions_let_a_job_cut_into_calls_sample_as_one_call(tiny_model, dev_words):
    words = dev_words[:20]
    whole = [r.tokens for r in tiny_model.decode(words, sample=True, seed=4)]
    parts = [r.tokens for start, end in ((0, 7), (7, 14), (14, 20))
             for r in tiny_model.decode(words[start:end], sample=True, seed=4, positions=range(start, end))]
    assert parts == whole
    assert [r.tokens for r in tiny_model.decode(words[7:14], sample=True, seed=4)] != whole[7:14]
    for bad in ([0], [0, -1], [0, 1.5], [0, "1"]):
        with pytest.raises(Seq2EdgeError, match="positions must be 2 non-negative integers"):
            tiny_model.decode(words[:2], positions=bad)


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(tiny_model, dev_words):
    greedy = [r.tokens for r in tiny_model.decode(dev_words[:40])]
    assert [r.tokens for r in tiny_model.decode(dev_words[:40], sample=True, top_k=1, seed=3)] == greedy
    assert [r.tokens for r in tiny_model.decode(dev_words[:40], sample=True, top_p=1e-6, seed=3)] == greedy


def test_sampling_draws_only_within_top_k(tiny_model):
    from seq2edge.runtime.search import _sample

    rng = np.random.default_rng(0)
    log_probs = np.log(rng.dirichlet(np.ones(30), size=200)).astype(np.float32)
    ids = _sample(log_probs, SearchOptions(sample=True, top_k=3, seed=1), np.arange(200), 0)
    top3 = np.argsort(-log_probs, axis=1)[:, :3]
    assert all(i in row for i, row in zip(ids, top3))
    ids = _sample(log_probs, SearchOptions(sample=True, top_p=0.5, seed=1), np.arange(200), 0)
    probs = np.exp(log_probs)
    for row, i in zip(probs, ids):
        better = row[row > row[i]].sum()
        assert better < 0.5


def test_stream_yields_the_greedy_tokens_one_by_one(tiny_model, dev_words):
    for word in dev_words[:20]:
        assert list(tiny_model.stream(word)) == tiny_model.decode([word])[0].tokens
    sampled = tiny_model.decode(["attention"], sample=True, seed=5, temperature=1.5)[0].tokens
    assert list(tiny_model.stream("attention", sample=True, seed=5, temperature=1.5)) == sampled


def test_one_model_used_from_eight_threads_gives_serial_results(tiny_model, dev_words):
    words = dev_words[:200]
    serial = [(r.tokens, r.score) for r in tiny_model.decode(words, batch_size=16)]
    serial_beam = [r.tokens for r in tiny_model.decode(words[:40], beam_size=3)]
    outputs, errors = {}, []

    def work(i):
        try:
            if i % 2:
                outputs[i] = [(r.tokens, r.score) for r in tiny_model.decode(words, batch_size=16)]
            else:
                outputs[i] = [r.tokens for r in tiny_model.decode(words[:40], beam_size=3)]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, out in outputs.items():
        assert out == (serial if i % 2 else serial_beam)


def test_search_options_are_validated_once_and_pick_the_strategy():
    assert SearchOptions().strategy == "greedy"
    assert SearchOptions(beam_size=3).strategy == "beam"
    assert SearchOptions(sample=True).strategy == "sampling"
    for bad, message in (({"beam_size": 0}, "beam_size must be at least 1"), ({"batch_size": 0}, "batch_size"),
                         ({"sample": True, "beam_size": 2}, "cannot be combined"), ({"top_p": 0.0}, "top_p"),
                         ({"errors": "ignore"}, "errors must be one of"), ({"min_len": -1}, "must not be negative")):
        with pytest.raises(Seq2EdgeError, match=message):
            SearchOptions(**bad)


def test_decode_takes_an_options_value_or_keywords_alike(tiny_model, dev_words):
    words = dev_words[:20]
    options = SearchOptions(beam_size=3, nbest=2)
    assert ([[h.tokens for h in r.nbest] for r in tiny_model.decode(words, options)]
            == [[h.tokens for h in r.nbest] for r in tiny_model.decode(words, beam_size=3, nbest=2)])
    # keywords override the value they come with
    assert [r.tokens for r in tiny_model.decode(words, options, beam_size=1, nbest=1)] == [r.tokens for r in tiny_model.decode(words)]
    with pytest.raises(TypeError, match="unknown search option"):
        tiny_model.decode(words, beam=3)


@pytest.mark.parametrize("limits", [{}, {"min_len": 4}, {"max_len": 3}, {"min_len": 2, "max_len": 2}])
def test_one_input_greedy_equals_the_array_search_bit_for_bit(tiny_model, dev_words, limits):
    """A single input takes the scalar batch-1 path (search._greedy_one); asking for attention keeps it on
    the array path (search._greedy_steps), with the same onnxruntime numbers: the same tokens, the same
    float64 score to the last bit and the same truncation, under every length rule."""
    results = []
    for word in dev_words[:60]:
        scalar = tiny_model.decode([word], **limits)[0]
        array = tiny_model.decode([word], return_attention=True, **limits)[0]
        assert (scalar.tokens, scalar.score, scalar.truncated) == (array.tokens, array.score, array.truncated)
        results.append(scalar)
    assert any(r.truncated for r in results) == ("max_len" in limits)
    assert all(len(r.tokens) >= limits.get("min_len", 0) for r in results)


def test_beam_search_at_the_length_limit_finishes_every_input_with_truncated_hypotheses(tiny_model, dev_words):
    """The step after max_len tokens allows only </s>: every input still gets its beam of finished hypotheses,
    those cut at the limit marked truncated and only those (a search that stopped a step early would leave
    them unfinished)."""
    hypotheses = []
    for r in tiny_model.decode(["a", "i", "o", "ah", "ok", "be", *dev_words[:20]], beam_size=3, nbest=3, max_len=4):
        assert len(r.nbest) == 3 and all(len(h.tokens) <= 4 for h in r.nbest)
        assert all(h.truncated == (len(h.tokens) == 4) for h in r.nbest)
        hypotheses += r.nbest
    assert any(h.truncated for h in hypotheses) and any(not h.truncated for h in hypotheses)


def test_beam_search_returns_each_hypothesis_attention_over_its_source(tiny_model):
    for r in tiny_model.decode(["attention", "edge"], beam_size=3, nbest=3, return_attention=True):
        for h in r.nbest:
            assert h.attention.shape == (len(h.tokens) + 1, len(r.input))
            assert np.allclose(h.attention.sum(axis=1), 1.0, atol=1e-5)
        assert r.attention is r.nbest[0].attention or np.array_equal(r.attention, r.nbest[0].attention)


def test_sampling_with_top_k_draws_only_and_all_of_the_k_best_of_a_large_vocabulary():
    """top_k keeps exactly the k most likely ids, whatever the vocabulary size (numpy's partition must be
    asked for the right place)."""
    rng = np.random.default_rng(3)
    log_probs = np.log(rng.dirichlet(np.ones(1000), size=4)).astype(np.float32)
    options = SearchOptions(sample=True, top_k=5, temperature=3.0, seed=7)
    best = np.argsort(-log_probs, axis=1)[:, :5]
    drawn = [search._sample(log_probs, options, np.arange(4), t) for t in range(300)]
    for row in range(4):
        assert {int(d[row]) for d in drawn} == set(best[row].tolist())
