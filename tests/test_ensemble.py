"""Ensemble decoding: several bundles searched as one model (runtime/ensemble.py)."""

import subprocess

import numpy as np
import pytest
from conftest import SEQ2EDGE, export_tiny, train_tiny

from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.util import pad_batch


@pytest.fixture(scope="module")
def gru_bundle(tmp_path_factory):
    """Another architecture (GRU, unidirectional, another seed's weights) on the same 800 words: the same vocabularies."""
    root = tmp_path_factory.mktemp("gru")
    return export_tiny(train_tiny(root / "ckpt", cell="gru", epochs=3, limit=800), root / "bundle", int8=False)


def test_a_bundle_in_an_ensemble_with_itself_decodes_as_it_does_alone(tiny_bundle, dev_words):
    alone = Seq2Seq.load(tiny_bundle, providers="cpu", threads=1, greedy_graph=False)
    twice = Seq2Seq.load(tiny_bundle, providers="cpu", threads=1, ensemble=[tiny_bundle])
    for options in ({"beam_size": 1}, {"beam_size": 4, "nbest": 2}):
        for a, b in zip(alone.decode(dev_words[:120], **options), twice.decode(dev_words[:120], **options)):
            assert a.tokens == b.tokens and a.score == pytest.approx(b.score, abs=1e-4)
            assert [n.tokens for n in a.nbest] == [n.tokens for n in b.nbest]


def test_every_step_searches_the_log_of_the_members_mean_probability(tiny_bundle, gru_bundle, dev_words):
    """The ensemble's greedy output, replayed through each member's own decoder: every token is the argmax of
    log(mean(p_lstm, p_gru)) and the score is the sum of those at the chosen tokens."""
    ensemble = Seq2Seq.load(tiny_bundle, providers="cpu", threads=1, ensemble=[gru_bundle])
    members = [Seq2Seq.load(b, providers="cpu", threads=1, greedy_graph=False) for b in (tiny_bundle, gru_bundle)]
    words = dev_words[:40]
    results = ensemble.decode(words)
    alone = [m.decode(words) for m in members]
    assert any(r.tokens != a.tokens for r, a in zip(results, alone[0])), "the GRU member changed nothing"
    c = members[0].config
    for word, result in zip(words, results):
        ids = members[0].bundle.source.encode(word, "error")
        src, lengths = pad_batch([ids], c.pad_id)
        encoded = [m.backend.encode(src, lengths) for m in members]
        states = [e.state for e in encoded]
        prev, total = c.bos_id, 0.0
        for target in [members[0].bundle.target.vocab.index[t] for t in result.tokens] + [c.eos_id]:
            steps = [m.backend.step(np.array([prev]), s, e.memory, e.mask) for m, s, e in zip(members, states, encoded)]
            probs = np.mean([np.exp(s.raw_log_probs[0].astype(np.float64)) for s in steps], axis=0)
            probs[[c.pad_id, c.bos_id]] = 0.0
            assert int(probs.argmax()) == target
            total += float(np.log(probs[target]))
            states, prev = [s.state for s in steps], target
        assert result.score == pytest.approx(total, abs=1e-4)


def test_members_that_tokenise_differently_are_refused(tiny_bundle, tmp_path):
    micro = tmp_path / "micro.tsv"
    words = [a + b for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu") for b in ("ba", "de", "fi", "go", "hu", "jy")]
    micro.write_text("".join(f"{w}\t{w.upper()}\n" for w in words))  # upper-case targets: another target vocabulary
    other = export_tiny(train_tiny(tmp_path / "ckpt", corpus=str(micro), epochs=1, limit=40, dev_limit=5), tmp_path / "b",
                        int8=False, parity_words=5)
    with pytest.raises(Seq2EdgeError, match="vocabulary or tokeniser differs"):
        Seq2Seq.load(tiny_bundle, providers="cpu", ensemble=[other])
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--ensemble", str(other), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "differs from" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(Seq2EdgeError, match="a greedy graph holds one model"):
        Seq2Seq.load(tiny_bundle, providers="cpu", ensemble=[tiny_bundle], greedy_graph=True)


def test_decode_and_eval_take_ensembles_from_the_cli(tiny_bundle, gru_bundle, dev_words):
    ensemble = Seq2Seq.load(tiny_bundle, providers="cpu", ensemble=[gru_bundle])
    words = dev_words[:20]
    expected = [r.text for r in ensemble.decode(words, beam_size=3)]
    for workers in ("1", "2"):
        proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--ensemble", str(gru_bundle), "--beam", "3",
                               "--workers", workers], input="\n".join(words) + "\n", capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [f"{w} -> {t}" for w, t in zip(words, expected)]
    proc = subprocess.run([*SEQ2EDGE, "eval", str(tiny_bundle), "--ensemble", str(gru_bundle), "--split", "dev", "--limit", "50"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "50 inputs" in proc.stdout, proc.stderr


def test_a_teacher_given_twice_is_the_ensemble_of_both(tiny_bundle, gru_bundle, tmp_path):
    """--teacher A --teacher B: the labels are the ensemble's beam outputs and the per-step targets its
    distributions (cached under a key of both bundles); the student trains on them."""
    import json

    from seq2edge.train.config import TrainConfig
    from seq2edge.train.loop import Trainer

    out = tmp_path / "student"
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(out), "--teacher", str(tiny_bundle), "--teacher", str(gru_bundle),
                           "--kd", "seq+token", "--kd-beam", "3", "--kd-top-k", "4", "--corpus", "cmudict", "--limit", "60",
                           "--dev-limit", "10", "--embed", "8", "--hidden", "16", "--epochs", "1", "--max-src-len", "32",
                           "--max-tgt-len", "24"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (labels_file,) = (out / "teacher").glob("seq-ensemble-*-beam3.jsonl")
    assert list((out / "teacher").glob("token-ensemble-*-k4-*.safetensors"))
    labels = {r["source"]: r["output"] for r in map(json.loads, labels_file.read_text().splitlines())}
    ensemble = Seq2Seq.load(tiny_bundle, providers="cpu", unknown="unk", too_long="truncate", ensemble=[gru_bundle])
    sources = sorted(labels)[:30]
    assert [labels[s] for s in sources] == [r.text for r in ensemble.decode(sources, beam_size=3)]
    tc = TrainConfig(**json.loads((out / "train.json").read_text())["train_config"])
    assert tc.teacher_ensemble == [str(gru_bundle.resolve())]
    trainer = Trainer(tc, {}, out, resume=True, log=lambda m: None)  # the targets, from the cache
    data, targets = trainer.prepared, trainer.teacher
    source = ensemble.bundle.source.vocab.index
    src = [source.get(data.source.vocab.tokens[i], source["<unk>"]) for i in data.train.src[0]]
    stepper, state = ensemble.stepper(*pad_batch([src], 0))
    step = stepper(np.array([ensemble.config.bos_id]), state, np.arange(1))
    log_probs = step.log_probs(np.zeros(ensemble.config.tgt_vocab_size, dtype=np.float32))[0]
    best = np.argsort(-log_probs, kind="stable")[:4]
    teacher_tokens = ensemble.bundle.target.vocab.tokens
    assert targets.ids[0].tolist() == [data.target.vocab.index.get(teacher_tokens[i], -1) for i in best]
    np.testing.assert_allclose(targets.probs[0], np.exp(log_probs[best]), rtol=1e-5)
