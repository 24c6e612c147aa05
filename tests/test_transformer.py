"""Transformers through the same pipeline: a decoder state that grows by a step per step (bundle format 3).

examples/transformer_model.py (nn.TransformerEncoder, decoder layers with a key/value cache) is trained for a step
count, exported with no workaround, and decoded by the Python CLI, Node, the browser and the native host exactly as
PyTorch decodes it; the state grows with the decoded length; models whose state breaks the rules are refused in one
line that says which rule."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SEQ2EDGE
from test_js_host import JS, NODE, browser_decode, needs_node
from test_own_model import pytorch_greedy
from torch import nn

from seq2edge.export import export_model
from seq2edge.export.protocol import ProtocolError
from seq2edge.runtime import Seq2Seq

sys.path.insert(0, str(REPO / "examples"))
import transformer_model  # noqa: E402

NATIVE = REPO / "hosts" / "c" / "build" / "seq2edge-c"


def reference(transformer_bundle, words: list[str]) -> list[str]:
    model, source_vocab, target_vocab, _, _ = transformer_bundle
    index = {c: i for i, c in enumerate(source_vocab)}
    ids = pytorch_greedy(model, [[index[c] for c in w] for w in words], target_vocab.index("<s>"), target_vocab.index("</s>"),
                         [0, 1], max_len=63)
    return [" ".join(target_vocab[i] for i in row) for row in ids]


def test_the_bundle_lists_the_key_value_cache_as_a_growing_state_in_a_new_format(transformer_bundle):
    *_, bundle = transformer_bundle
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["format_version"] == 3 and meta["model"]["state_size"] == 0
    assert meta["state"] == [{"dtype": "float", "dims": [4, None, 16]}] * 4  # 2 layers x (keys, values), heads 4, head 16
    assert meta["parity"]["fp32"]["token_agreement"] == 1.0 and meta["parity"]["int8"]["measured"]
    assert set(meta["graphs"]["fp32"]) == {"encoder", "decoder", "greedy"} and meta["graphs"]["fp32"]["decoder"]["ort"]


def test_the_cli_decodes_the_transformer_as_pytorch_does(transformer_bundle, tmp_path):
    *_, words, bundle = transformer_bundle
    expected = reference(transformer_bundle, words)
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    for flags in ([], ["--no-greedy-graph", "--batch-size", "64"], ["--greedy-graph", "--batch-size", "1"],
                  ["--graph-format", "ort"], ["--workers", "2", "--no-greedy-graph"]):
        proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(tmp_path / "words.txt"), "--format", "tsv",
                               *flags], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert [line.split("\t")[1] for line in proc.stdout.splitlines()] == expected, flags


def test_each_step_attends_over_the_decoded_prefix_only(transformer_bundle):
    """The cost of a step follows the decoded length: after t steps the cache holds t positions, whatever max_tgt_len says."""
    *_, words, bundle = transformer_bundle
    model = Seq2Seq.load(bundle)
    ids = model._prepare(0, words[0]).ids
    stepper, state = model.stepper(np.array([ids]), np.array([len(ids)]))
    assert [s.shape for s in state] == [(1, 4, 0, 16)] * 4
    prev = np.array([model.config.bos_id])
    for t in range(1, 4):
        out = stepper(prev, state, np.array([0]))
        state, prev = out.state, np.array([out.best(np.zeros(model.config.tgt_vocab_size, np.float32))[1]])
        assert [s.shape for s in state] == [(1, 4, t, 16)] * 4


def test_beam_search_reorders_the_cache_with_its_hypotheses(transformer_bundle):
    """Beam n-best from the runtime against beams computed here in PyTorch, one hypothesis at a time from its own
    prefix (no cache shared between hypotheses): a cache that followed the wrong beam would change the scores."""
    model_t, source_vocab, target_vocab, words, bundle = transformer_bundle
    beams = Seq2Seq.load(bundle).decode(words[:20], beam_size=4, nbest=3)
    index = {c: i for i, c in enumerate(source_vocab)}
    for word, result in zip(words[:20], beams):
        src = torch.tensor([[index[c] for c in word]])
        for hyp in result.nbest:
            ids = [target_vocab.index(t) for t in hyp.tokens] + [target_vocab.index("</s>")]
            with torch.no_grad():
                memory, state = model_t.encode(src, torch.tensor([len(word)]))
                scores = model_t(src, torch.tensor([len(word)]), torch.tensor([[target_vocab.index("<s>"), *ids[:-1]]]))
            log_probs = torch.log_softmax(scores[0].double(), dim=-1)
            assert float(sum(log_probs[i, t] for i, t in enumerate(ids))) == pytest.approx(hyp.score, abs=1e-3)


def test_sampling_and_an_ensemble_with_a_recurrent_member_decode(transformer_bundle, tmp_path):
    """An ensemble's members may carry different states: the transformer's cache beside a GRU's packed state."""
    import tutorial_model

    *_, words, bundle = transformer_bundle
    torch.manual_seed(0)
    gru, source_vocab, target_vocab, _ = tutorial_model.train(steps=30, hidden=32)
    tutorial_model.export(gru, tmp_path / "gru", source_vocab, target_vocab, words[:20], log=lambda m: None)
    both = Seq2Seq.load(bundle, ensemble=[tmp_path / "gru"])
    greedy, beam = both.decode(words[:30]), both.decode(words[:30], beam_size=3, nbest=2)
    assert all(r.ok for r in greedy + beam) and all(len(r.nbest) == 2 for r in beam)
    assert greedy != Seq2Seq.load(bundle).decode(words[:30])
    sampled = Seq2Seq.load(bundle).decode(words[:30], sample=True, seed=4)
    again = Seq2Seq.load(bundle).decode(words[:30], sample=True, seed=4, batch_size=7)  # draws follow inputs, not batches
    assert [r.text for r in sampled] == [r.text for r in again] != [r.text for r in Seq2Seq.load(bundle).decode(words[:30])]


@needs_node
def test_node_decodes_the_transformer_as_python_does(transformer_bundle, tmp_path):
    *_, words, bundle = transformer_bundle
    (tmp_path / "words.txt").write_text("\n".join(words[:150]) + "\n")
    for precision, fmt, flags in (("fp32", "onnx", []), ("int8", "onnx", []), ("fp32", "ort", []),
                                  ("fp32", "onnx", ["--beam", "3", "--nbest", "2"])):
        python = Seq2Seq.load(bundle, precision=precision, graph_format=fmt).decode(
            words[:150], **({"beam_size": 3, "nbest": 2} if flags else {}))
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(tmp_path / "words.txt"), "--jsonl",
                               "--precision", precision, "--graph-format", fmt, *flags], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        node = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["output"] for r in node] == [r.text for r in python], (precision, fmt, flags)
        assert max(abs(r["score"] - p.score) for r, p in zip(node, python)) < 1e-4


@pytest.mark.requires("node", "chromium")
def test_the_browser_decodes_the_transformer_as_python_does(transformer_bundle, tmp_path):
    *_, words, bundle = transformer_bundle
    page = browser_decode(bundle, words[:100], tmp_path)
    assert [r["text"] for r in page["results"]] == [r.text for r in Seq2Seq.load(bundle).decode(words[:100])]


@pytest.mark.requires("node", "chromium")
def test_the_browser_carries_an_int64_prefix_as_python_does(tmp_path):
    """The conformance corpus's growing bundle (a key/value cache and an int64 prefix) in onnxruntime-web, whose
    int64 tensors are BigInt64Arrays: the corpus itself runs in Node, not in a browser."""
    sys.path.insert(0, str(REPO / "tests" / "conformance"))
    from make_corpus import ATTENTION_INPUTS, BUNDLES

    page = browser_decode(BUNDLES / "growing", ATTENTION_INPUTS, tmp_path)
    python = Seq2Seq.load(BUNDLES / "growing").decode(ATTENTION_INPUTS, errors="return")
    assert [r["text"] for r in page["results"]] == [r.text if r.ok else None for r in python]


def test_the_native_cli_decodes_the_transformer_byte_for_byte_as_the_python_cli(transformer_bundle, tmp_path):
    *_, words, bundle = transformer_bundle
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    for flags in ([], ["--beam", "3", "--nbest", "2"], ["--precision", "int8"], ["--no-greedy-graph", "--batch-size", "1"],
                  ["--greedy-graph"], ["--sample", "--seed", "5"]):
        command = ["decode", str(bundle), "--input", str(tmp_path / "words.txt"), "--format", "jsonl", *flags]
        python = subprocess.run([*SEQ2EDGE, *command], capture_output=True)
        native = subprocess.run([str(NATIVE), *command], capture_output=True)
        assert native.returncode == python.returncode == 0, native.stderr
        assert native.stdout == python.stdout, flags


# ---- states that break the rules: one line each


class GrowingState(nn.Module):
    """A tiny model whose state is one tensor made by `grow` at encode (t = 0) and after each step."""

    def __init__(self, grow):
        super().__init__()
        self.grow = grow
        self.embedding = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 10)

    def encode(self, src_ids, src_lengths):
        memory = self.embedding(src_ids)
        return memory, self.grow(memory.new_zeros(src_ids.shape[0], 0, 8), 0)

    def step(self, prev_ids, state, memory, src_mask):
        x = self.embedding(prev_ids)
        scores = self.out(x + (memory * src_mask[:, :, None]).sum(1))
        return scores, self.grow(state, state.shape[1] + 1 if state.dim() == 3 else 0), None


VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize("grow, message", [
    (lambda s, t: s.new_zeros(s.shape[0], 2 * t, 8),
     r"state tensor 0 has shape \(0, 8\) after encode\(\) and \(2, 8\), \(6, 8\) after one and two steps .*grow along one "
     r"axis by one per step from length 0"),
    (lambda s, t: s.new_zeros(s.shape[0], t, t + 8),
     r"state tensor 0 has shape \(0, 8\) after encode\(\) and \(1, 9\), \(2, 10\)"),
    (lambda s, t: s.new_zeros(s.shape[0], t, 8, dtype=torch.int32),
     r"encode\(\)'s state is torch.int32: state tensors must be floating point or int64"),
    (lambda s, t: s.new_zeros(s.shape[0], t, 8, dtype=torch.float64),
     r"state tensor 0 is torch.float64: a state with int64 or growing tensors holds float32 and int64 tensors only"),
])
def test_a_state_that_breaks_the_rules_is_refused_in_one_line(tmp_path, grow, message):
    with pytest.raises(ProtocolError, match=message) as refused:
        export_model(GrowingState(grow), tmp_path / "out", source_vocab=VOCAB, target_vocab=VOCAB, parity_sources=["abc"],
                     log=lambda m: None)
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()


def test_an_int64_prefix_grows_and_decodes_as_pytorch_does(tmp_path):
    """A state of the ids decoded so far ([B, t] int64) beside a fixed float tensor: both listed, both carried."""

    class Prefix(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10, 8)
            self.out = nn.Linear(8, 10)

        def encode(self, src_ids, src_lengths):
            memory = self.embedding(src_ids)
            mean = (memory * (torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None])[:, :, None]).sum(1)
            return memory, (src_ids.new_zeros(src_ids.shape[0], 0), mean / src_lengths[:, None])

        def step(self, prev_ids, state, memory, src_mask):
            prefix, mean = state
            prefix = torch.cat([prefix, prev_ids[:, None]], dim=1)
            seen = nn.functional.one_hot(prefix, 10).sum(1).float()  # what was decoded so far lowers its score
            scores = self.out(torch.tanh(mean + self.embedding(prev_ids))) - 2.0 * seen
            return scores, (prefix, mean * 0.9), None

    torch.manual_seed(3)
    model = Prefix().eval()
    out = export_model(model, tmp_path / "prefix", source_vocab=VOCAB, target_vocab=VOCAB, source_tokens="char",
                       target_tokens="char", parity_sources=["abc", "fed", "aaaaab"], max_tgt_len=8, greedy_graph=True,
                       log=lambda m: None)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["state"] == [{"dtype": "int64", "dims": [None]}, {"dtype": "float", "dims": [8]}]
    expected = pytorch_greedy(model, [[VOCAB.index(c) for c in w] for w in ["abc", "fed", "cab"]], 1, 2, [0, 1], max_len=8)
    for greedy_graph in (False, True):
        results = Seq2Seq.load(out, greedy_graph=greedy_graph).decode(["abc", "fed", "cab"], max_len=8)
        assert [[VOCAB.index(t) for t in r.tokens] for r in results] == expected


class CachedWithPrefix(transformer_model.TransformerSeq2Seq):
    """The example's Transformer with the ids decoded so far in its state too ([B, t] int64, growing): each id seen
    lowers its score, so the prefix changes what is decoded. The conformance corpus's growing-state bundle."""

    def encode(self, src_ids, src_lengths):
        memory, caches = super().encode(src_ids, src_lengths)
        return memory, (src_ids.new_zeros(src_ids.shape[0], 0), caches)

    def step(self, prev_ids, state, memory, src_mask):
        prefix, caches = state
        scores, caches, weights = super().step(prev_ids, caches, memory, src_mask)
        prefix = torch.cat([prefix, prev_ids[:, None]], dim=1)
        seen = nn.functional.one_hot(prefix, scores.shape[1]).sum(1).to(scores.dtype)
        return scores - 0.5 * seen, (prefix, caches), weights


class PlainTransformer(nn.Module):
    """torch's nn.Transformer as written, no cache: each step re-runs its decoder over the ids decoded so far, kept in
    the state as an int64 prefix that grows by one per step."""

    def __init__(self, src_vocab: int, tgt_vocab: int, size: int = 32, heads: int = 4):
        super().__init__()
        self.transformer = nn.Transformer(size, heads, 2, 2, 64, dropout=0.0, batch_first=True)
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, size), nn.Embedding(tgt_vocab, size)
        self.register_buffer("positions", transformer_model.sinusoids(64, size), persistent=False)
        self.out = nn.Linear(size, tgt_vocab)

    def encode(self, src_ids, src_lengths):
        padding = torch.arange(src_ids.shape[1])[None, :] >= src_lengths[:, None]
        memory = self.transformer.encoder(self.src_embed(src_ids) + self.positions[: src_ids.shape[1]],
                                          src_key_padding_mask=padding)
        return memory, src_ids.new_zeros(src_ids.shape[0], 0)

    def step(self, prev_ids, prefix, memory, src_mask):
        prefix = torch.cat([prefix, prev_ids[:, None]], dim=1)
        tgt = self.tgt_embed(prefix) + self.positions[: prefix.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(prefix.shape[1])
        out = self.transformer.decoder(tgt, memory, tgt_mask=causal, memory_key_padding_mask=~src_mask)
        return self.out(out[:, -1]), prefix, None


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # PyTorch's own fast path, in the reference run
def test_a_plain_nn_transformer_exports_as_written(tmp_path):
    """The whole nn.Transformer, its encoder and decoder called as documented, with nothing written for export: the
    fast path, the frozen key length and the growing prefix are export's to handle."""
    target = ["<pad>", "<s>", "</s>", "<unk>", "x", "y", "z", "w"]
    texts = ["abc", "fed", "a", "bead", "abcdef", "fedcba" * 5]
    torch.manual_seed(0)
    model = PlainTransformer(len(VOCAB), len(target)).eval()
    out = export_model(model, tmp_path / "plain", source_vocab=VOCAB, target_vocab=target, target_tokens="word",
                       parity_sources=texts, max_src_len=60, max_tgt_len=20, greedy_graph=True, log=lambda m: None)
    assert json.loads((out / "bundle.json").read_text())["state"] == [{"dtype": "int64", "dims": [None]}]
    expected = pytorch_greedy(model, [[VOCAB.index(c) for c in t] for t in texts], 1, 2, [0, 1], max_len=20)
    for greedy_graph in (False, True):
        got = Seq2Seq.load(out, greedy_graph=greedy_graph).decode(texts, max_len=20)
        assert [[target.index(t) for t in r.tokens] for r in got] == expected


def test_a_reader_of_an_older_format_refuses_the_bundle(transformer_bundle, monkeypatch):
    """Format 3 is what a reader without the state list refuses, in its own words, rather than decode it wrongly."""
    from seq2edge.runtime import schema
    from seq2edge.runtime.errors import BundleError

    *_, bundle = transformer_bundle
    monkeypatch.setattr(schema, "FORMAT_VERSION", 2)
    with pytest.raises(BundleError, match="format version 3 is newer than this seq2edge reads \\(2\\); upgrade seq2edge"):
        Seq2Seq.load(bundle)


def test_the_device_resident_loop_carries_the_cache_as_the_numpy_loop_does(transformer_bundle):
    """IOBinding (what a GPU decodes with; here on the CPU provider): the listed state stays in OrtValues and is
    reordered by the helper Gather graphs of its types."""
    *_, words, bundle = transformer_bundle
    host, device = Seq2Seq.load(bundle), Seq2Seq.load(bundle, io_binding=True)
    for options in ({}, {"beam_size": 3, "nbest": 2}, {"sample": True, "seed": 2}):
        assert [r.text for r in device.decode(words[:40], **options)] == [r.text for r in host.decode(words[:40], **options)]
