"""Bring your own model: export_model takes any module with encode() and step() (docs/own-model.md).

The tutorial model (examples/tutorial_model.py, written the way the PyTorch seq2seq tutorial writes
one) is trained briefly, exported, and decoded by the CLI and by Node exactly as PyTorch decodes it.
A hand-written LSTM with a nested state and its own special-token order goes the same way. Models
that break the protocol are refused in one line that names the problem, before anything is written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, SEQ2EDGE
from test_js_host import JS, NODE, needs_node
from torch import nn

from seq2edge.export import export_model
from seq2edge.export.bundle import ExportError
from seq2edge.export.protocol import ProtocolError
from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.conventions import Conventions
from seq2edge.runtime.errors import OptionError, Seq2EdgeError

sys.path.insert(0, str(REPO / "examples"))
import tutorial_model  # noqa: E402


@torch.no_grad()
def pytorch_greedy(model: nn.Module, src: list[list[int]], bos: int, eos: int, never: list[int], max_len: int = 60) -> list[list[int]]:
    """Greedy decoding written here, one input at a time, in the model's own ids (the reference)."""
    outputs = []
    for ids in src:
        memory, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
        mask = torch.ones(1, len(ids), dtype=torch.bool)
        prev, out = bos, []
        for _ in range(max_len):
            scores, state, _ = model.step(torch.tensor([prev]), state, memory, mask)
            scores[0, never] = float("-inf")
            prev = int(scores[0].argmax())
            if prev == eos:
                break
            out.append(prev)
        outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    torch.manual_seed(0)
    model, source_vocab, target_vocab, held_out = tutorial_model.train(steps=300)  # a step count, not a time: repeatable
    out = tmp_path_factory.mktemp("own") / "tutorial"
    tutorial_model.export(model, out, source_vocab, target_vocab, held_out[:200], int8=True, greedy_graph=True, ort=True,
                          log=lambda m: None)
    return model, source_vocab, target_vocab, held_out, out


def test_the_tutorial_model_decodes_from_the_cli_as_pytorch_does(tutorial, tmp_path):
    model, source_vocab, target_vocab, words, bundle = tutorial
    index = {c: i for i, c in enumerate(source_vocab)}
    expected = pytorch_greedy(model, [[index[c] for c in w] for w in words], target_vocab.index("<s>"),
                              target_vocab.index("</s>"), [0, 1])
    expected_text = [" ".join(target_vocab[i] for i in ids) for ids in expected]
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    for flags in ([], ["--no-greedy-graph", "--batch-size", "64"], ["--greedy-graph", "--batch-size", "1"]):
        proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(tmp_path / "words.txt"), "--format", "tsv",
                               *flags], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert [line.split("\t")[1] for line in proc.stdout.splitlines()] == expected_text, flags
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["origin"] == "examples/tutorial_model.py" and "cell" not in meta["model"]
    assert meta["parity"]["fp32"]["token_agreement"] == 1.0
    assert meta["parity"]["int8"]["measured"] and "wer" not in meta["parity"]["int8"]  # no references were given


@needs_node
def test_node_decodes_the_tutorial_bundle_as_python_does_in_fp32_int8_and_ort_format(tutorial, tmp_path):
    *_, words, bundle = tutorial
    (tmp_path / "words.txt").write_text("\n".join(words) + "\n")
    for precision, fmt in (("fp32", "onnx"), ("int8", "onnx"), ("fp32", "ort")):
        python = Seq2Seq.load(bundle, precision=precision, graph_format=fmt).decode(words)
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(tmp_path / "words.txt"), "--jsonl",
                               "--precision", precision, "--graph-format", fmt], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        node = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["output"] for r in node] == [r.text for r in python], (precision, fmt)


def test_beam_nbest_and_sampling_work_on_an_external_bundle(tutorial):
    *_, words, bundle = tutorial
    model = Seq2Seq.load(bundle)
    greedy = model.decode(words[:50])
    beams = model.decode(words[:50], beam_size=4, nbest=3)
    assert all(len(r.nbest) == 3 and r.text == r.nbest[0].text and [h.score for h in r.nbest] == sorted(
        (h.score for h in r.nbest), reverse=True) for r in beams)
    assert [r.text for r in model.decode(words[:50], beam_size=1)] == [r.text for r in greedy]
    sampled = model.decode(words[:50], sample=True, seed=3, temperature=0.5)
    assert sampled == model.decode(words[:50], sample=True, seed=3, temperature=0.5)
    assert model.decode(words[:3], return_attention=True)[0].attention.shape[1] == len(words[0])


# ---- a hand-written LSTM: two layers, state ((h1, c1), (h2, c2)), special tokens in JoeyNMT's order, named its own way


class TwoLayerLSTM(nn.Module):
    """Dot attention over a unidirectional LSTM encoder; gives no attention weights back."""

    def __init__(self, src_vocab: int, tgt_vocab: int, hidden: int = 24, sharpen: float = 6.0):
        super().__init__()
        self.hidden = hidden
        self.src_embed = nn.Embedding(src_vocab, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.tgt_embed = nn.Embedding(tgt_vocab, hidden)
        self.cells = nn.ModuleList([nn.LSTMCell(2 * hidden, hidden), nn.LSTMCell(hidden, hidden)])
        self.out = nn.Linear(2 * hidden, tgt_vocab)
        with torch.no_grad():  # an untrained model with decided preferences, so no step is a near tie
            self.out.weight.mul_(sharpen)

    def encode(self, src_ids, src_lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.src_embed(src_ids), src_lengths, batch_first=True, enforce_sorted=False)
        memory, (h, c) = self.encoder(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(memory, batch_first=True, total_length=src_ids.shape[1])
        zeros = torch.zeros(src_ids.shape[0], self.hidden)
        # code that insists on float32: the parity gate then cannot run a float64 copy of the model
        return memory.float(), ((h[0], c[0]), (zeros, zeros))

    def step(self, prev_ids, state, memory, src_mask):
        (h1, c1), (h2, c2) = state
        scores = torch.bmm(memory, h2.unsqueeze(2)).squeeze(2).masked_fill(~src_mask, float("-inf"))
        context = torch.bmm(F.softmax(scores, dim=1).unsqueeze(1), memory).squeeze(1)
        h1, c1 = self.cells[0](torch.cat([self.tgt_embed(prev_ids), context], dim=1), (h1, c1))
        h2, c2 = self.cells[1](h1, (h2, c2))
        return self.out(torch.cat([h2, context], dim=1)), ((h1, c1), (h2, c2)), None


JOEY_ORDER = ["<unk>", "<blank>", "<bos>", "<eos>"]
SOURCE = JOEY_ORDER + list("abcdefghij")
TARGET = JOEY_ORDER + ["x", "y", "z", "w", "v", "u"]
TEXTS = ["abc", "jihgf", "a", "bbbbbbb", "cafe", "hgfedcba", "jj", "ded", "fig", "bead", "dig", "jab"] * 3


def export_lstm(out: Path, model: nn.Module | None = None, **options) -> Path:
    torch.manual_seed(1)
    return export_model(model or TwoLayerLSTM(len(SOURCE), len(TARGET)).eval(), out, source_vocab=SOURCE, target_vocab=TARGET,
                        pad="<blank>", bos="<bos>", eos="<eos>", unk="<unk>", target_tokens="word", parity_sources=TEXTS,
                        max_tgt_len=30, log=lambda m: None, **options)


def test_a_nested_lstm_state_and_its_own_special_ids_decode_as_pytorch_does(tmp_path):
    torch.manual_seed(1)
    model = TwoLayerLSTM(len(SOURCE), len(TARGET)).eval()
    bundle = export_lstm(tmp_path / "lstm", model, greedy_graph=True)
    expected = pytorch_greedy(model, [[SOURCE.index(c) for c in t] for t in TEXTS], 2, 3, [1, 2], max_len=30)
    got = Seq2Seq.load(bundle).decode(TEXTS, max_len=30)
    assert [r.text for r in got] == [" ".join(TARGET[i] for i in ids) for ids in expected]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["target"]["vocab"][:4] == ["<pad>", "<s>", "</s>", "<unk>"] and meta["target"]["vocab"][4:] == TARGET[4:]
    assert meta["model"]["state_size"] == 4 * 24 and meta["model"]["attention_weights"] is False
    assert meta["parity"]["fp32"]["tolerance_rule"].startswith("fixed, as no float64 copy of the model runs")
    with pytest.raises(OptionError, match="gives no attention weights"):
        Seq2Seq.load(bundle).decode(["abc"], return_attention=True)
    proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "abc", "--plot-attention", str(tmp_path / "a.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "gives no attention weights" in proc.stderr and "Traceback" not in proc.stderr


# ---- models that break the protocol: one line each, and nothing written


class Broken(TwoLayerLSTM):
    def __init__(self, fault: str):
        super().__init__(len(SOURCE), len(TARGET))
        self.fault = fault

    def encode(self, src_ids, src_lengths):
        memory, state = super().encode(src_ids, src_lengths)
        if self.fault == "int memory":
            memory = memory.long()
        if self.fault == "state not batch first":
            (h1, c1), second = state
            state = ((h1.unsqueeze(0), c1), second)
        if self.fault == "reads padding":  # an encoder that runs over the padding too
            memory = memory + memory.mean(dim=1, keepdim=True)
        return memory, state

    def step(self, prev_ids, state, memory, src_mask):
        if self.fault == "state not batch first":
            (h1, c1), second = state
            state = ((h1.squeeze(0), c1), second)
        scores, new_state, attention = super().step(prev_ids, state, memory, src_mask)
        if self.fault == "state not batch first":
            (h1, c1), second = new_state
            new_state = ((h1.unsqueeze(0), c1), second)
        if self.fault == "scores too wide":
            scores = torch.cat([scores, scores[:, :1]], dim=1)
        if self.fault == "dropout left on":
            scores = F.dropout(scores, 0.1, training=True)
        if self.fault == "state dropped":
            new_state = new_state[0]
        if self.fault == "untraceable":
            scores = scores - torch.kthvalue(scores, 2, dim=1, keepdim=True)[0]
        if self.fault == "branches on data" and bool((prev_ids == 2).all()):  # traced once: the graph never takes it
            scores = scores * 2
        return scores, new_state, attention


@pytest.mark.parametrize("fault, message", [
    ("int memory", r"encode\(\)'s memory is torch.int64, it must be floating point"),
    ("scores too wide", r"step\(\)'s scores has shape \(3, 11\), expected \(3, 10\) here"),
    ("state not batch first",
     r"encode\(\)'s state \(tensor 0 of 4\) has shape \(1, 3, 24\) for a batch of 3: the batch must be the first axis"),
    ("state dropped", r"step\(\)'s new_state has another structure or type than the state it was given"),
    ("dropout left on", r"give different scores on the same input twice in eval mode"),
    ("reads padding",
     r"scores depend on padded positions or on the other inputs of the batch: .* step\(\) must ignore positions where src_mask"),
    ("untraceable", r"step\(\) cannot be exported to ONNX: Exporting the operator 'aten::kthvalue' .*, at "
                    r".*test_own_model.py:\d+: scores = scores - torch.kthvalue"),
    ("branches on data", r"exported graphs do not match PyTorch"),
])
def test_a_model_that_breaks_the_protocol_is_refused_in_one_line_and_nothing_is_written(tmp_path, capfd, fault, message):
    torch.manual_seed(1)
    with pytest.raises((ProtocolError, ExportError), match=message) as refused:
        export_lstm(tmp_path / "out", Broken(fault).eval())
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    shown = capfd.readouterr()
    assert "Torch IR graph" not in shown.out + shown.err  # the exporter's dump of the traced graph is not shown


@pytest.mark.parametrize("change, message", [
    (dict(source_vocab=SOURCE[1:]), r"source_vocab has no unk token '<unk>': pass unk= with the token the model uses"),
    (dict(target_vocab=TARGET + ["x"]), r"target_vocab holds 'x' twice"),
    (dict(target_vocab=TARGET[:-1] + ["<pad>"]), r"target_vocab has '<pad>' as an ordinary token"),
    (dict(parity_sources=[" "]), r"parity_sources holds no text"),
    (dict(target_tokens="missing.model"), r"target_tokens must be \"char\", \"word\" or the path of a SentencePiece model"),
])
def test_vocabularies_and_options_that_cannot_work_are_named(tmp_path, change, message):
    options = dict(source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>", eos="<eos>", target_tokens="word",
                   parity_sources=TEXTS, log=lambda m: None)
    with pytest.raises(ProtocolError, match=message):
        export_model(TwoLayerLSTM(len(SOURCE), len(TARGET)), tmp_path / "out", **{**options, **change})
    assert not (tmp_path / "out").exists()


def test_a_module_without_the_protocol_methods_is_told_what_is_missing(tmp_path):
    with pytest.raises(ProtocolError, match=r"Linear has no encode\(\) method"):
        export_model(nn.Linear(2, 2), tmp_path / "out", source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>",
                     eos="<eos>", parity_sources=TEXTS)


@needs_node
@pytest.mark.parametrize("edit, message", [
    (lambda m: m["model"].update(state_size=95), "encoder.onnx: output state has state_size 96, bundle.json's model says 95"),
    (lambda m: m["model"].update(cell="gru"), "unknown model config keys"),
    (lambda m: m["model"].update(memory_size=0), "invalid model config: memory_size must be at least 1"),
    (lambda m: m.update(format_version=2, conventions={"beam_bonus": 1}), "unknown conventions"),
    (lambda m: m.update(format_version=2, conventions={"never_emit": ["</s>"]}), "conventions.never_emit names </s>: no output could end"),
    (lambda m: m.update(format_version=2, conventions={"never_emit": ["q"]}),
     "conventions.never_emit names 'q', which is not in the target vocabulary"),
    (lambda m: m.update(format_version=2, conventions={"min_len": -1, "source_eos": 1}),
     "invalid conventions: source_eos must be true or false, not 1"),  # types first: a range of the wrong type means nothing
    (lambda m: m.update(format_version=2, conventions={"min_len": -1}), "invalid conventions: min_len must be at least 0, not -1"),
    (lambda m: m.update(conventions={"min_len": 1}), "conventions needs format_version 2 or newer, found 1"),
])
def test_both_hosts_refuse_an_external_config_or_conventions_that_do_not_fit_the_model(tmp_path, edit, message):
    bundle = export_lstm(tmp_path / "lstm")
    meta = json.loads((bundle / "bundle.json").read_text())
    edit(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    for host in ([*SEQ2EDGE, "decode"], [NODE, str(JS / "cli.mjs")]):
        proc = subprocess.run([*host, str(bundle), "abc"], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, (host, proc.stderr)


# ---- decoding conventions: a toolkit's rules travel in bundle.json and both hosts follow them

SPACED = ["▁" if t == "j" else t for t in SOURCE]  # a character-level source that writes a space as "▁", as JoeyNMT does
RULES = Conventions(source_eos=True, min_len=2, max_len_ratio=0.75, max_len_offset=1.0, max_len_cap=6, never_emit=("y",),
                    space_symbol="▁")
SPACED_TEXTS = [t.replace("j", " ").strip() or "a" for t in TEXTS] + ["a b", "abcdefghi", "b", "h g f e d c b a hg"]


def conventional_greedy(model: nn.Module, text: str) -> list[int]:
    """The toolkit's own decoding, written out: </s> after the source, no </s> in the first 2 steps, at most
    int(min(6, 0.75 x (source + </s>) + 1)) tokens, "y" never chosen."""
    ids = [SPACED.index(c) for c in text.replace(" ", "▁")] + [3]
    memory, state = model.encode(torch.tensor([ids]), torch.tensor([len(ids)]))
    mask = torch.ones(1, len(ids), dtype=torch.bool)
    prev, out = 2, []
    for t in range(int(min(6, 0.75 * len(ids) + 1))):
        scores, state, _ = model.step(torch.tensor([prev]), state, memory, mask)
        scores[0, [1, 2, TARGET.index("y")] + ([3] if t < 2 else [])] = float("-inf")
        prev = int(scores[0].argmax())
        if prev == 3:
            break
        out.append(prev)
    return out


@pytest.fixture(scope="module")
def conventional(tmp_path_factory):
    """A bundle with every convention, and what the toolkit's own decoding gives on SPACED_TEXTS."""
    torch.manual_seed(2)
    model = TwoLayerLSTM(len(SPACED), len(TARGET)).eval()
    with torch.no_grad():
        model.out.bias[3] -= 0.5  # </s> a little less likely: some outputs run to their limit, others end early
    bundle = export_model(model, tmp_path_factory.mktemp("conv") / "conv", source_vocab=SPACED, target_vocab=TARGET,
                          pad="<blank>", bos="<bos>", eos="<eos>", target_tokens="word", parity_sources=SPACED_TEXTS,
                          greedy_graph=True, conventions=RULES, log=lambda m: None)
    with torch.no_grad():
        expected = [" ".join(TARGET[i] for i in conventional_greedy(model, t)) for t in SPACED_TEXTS]
    return bundle, expected


def test_a_toolkits_decoding_conventions_are_followed_step_by_step_and_by_the_greedy_graph(conventional):
    bundle, expected = conventional
    lengths = [len(e.split()) for e in expected]
    limits = [int(min(6, 0.75 * (len(t) + 1) + 1)) for t in SPACED_TEXTS]
    assert 6 in lengths and min(lengths) == 2 and any(n < limit for n, limit in zip(lengths, limits))  # every rule binds
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["format_version"] == 2 and meta["conventions"]["never_emit"] == ["y"]
    for greedy_graph in (False, True):
        got = Seq2Seq.load(bundle, greedy_graph=greedy_graph).decode(SPACED_TEXTS)
        assert [r.text for r in got] == expected, greedy_graph
    assert Seq2Seq.load(bundle).decode(["a b"])[0].source_tokens == ["a", "▁", "b", "</s>"]
    assert [r.text for r in Seq2Seq.load(bundle).decode(SPACED_TEXTS, max_len=1)] == [e.split()[0] for e in expected]


@needs_node
def test_node_follows_a_toolkits_decoding_conventions_as_python_does(conventional, tmp_path):
    bundle, expected = conventional
    (tmp_path / "in.txt").write_text("\n".join(SPACED_TEXTS) + "\n")
    for flag in ("--no-greedy-graph", "--greedy-graph"):
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(tmp_path / "in.txt"), "--jsonl", flag],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line)["output"] for line in proc.stdout.splitlines()] == expected, flag


def test_a_bundle_without_conventions_stays_format_1_so_older_readers_still_read_it(tmp_path):
    plain = json.loads((export_lstm(tmp_path / "plain") / "bundle.json").read_text())
    assert plain["format_version"] == 1 and "conventions" not in plain


class PositionalLSTM(TwoLayerLSTM):
    """TwoLayerLSTM with a table of 10 source positions and one of 20 decoder steps (a counter in its state): a model
    that cannot take longer sources or outputs than its tables, as a Transformer with learned positions cannot."""

    def __init__(self, src_vocab: int, tgt_vocab: int, positions: int = 10, steps: int = 20):
        super().__init__(src_vocab, tgt_vocab)
        self.positions, self.steps = nn.Embedding(positions, self.hidden), nn.Embedding(steps, 2 * self.hidden)

    def encode(self, src_ids, src_lengths):
        memory, state = super().encode(src_ids, src_lengths)
        memory = memory + self.positions(torch.arange(src_ids.shape[1]))
        return memory, (state, torch.zeros(src_ids.shape[0], 1))

    def step(self, prev_ids, state, memory, src_mask):
        state, counter = state
        scores, state, attention = super().step(prev_ids, state, memory, src_mask)
        scores = scores + 0.01 * self.steps(counter[:, 0].long()).sum(1, keepdim=True)  # the step's row of the table
        return scores, (state, counter + 1), attention


def test_export_lowers_a_default_limit_the_model_cannot_take_and_refuses_a_chosen_one(tmp_path):
    torch.manual_seed(1)
    model = PositionalLSTM(len(SOURCE), len(TARGET)).eval()
    said = []
    bundle = export_model(model, tmp_path / "b", source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>",
                          eos="<eos>", unk="<unk>", target_tokens="word", parity_sources=[t[:10] for t in TEXTS], log=said.append)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert (meta["model"]["max_src_len"], meta["model"]["max_tgt_len"]) == (10, 19)  # 19 tokens and </s>: the 20 steps
    assert any(m.startswith("max_src_len lowered from 256 to 10: the model cannot take more source tokens (IndexError")
               for m in said), said
    assert any(m.startswith("max_tgt_len lowered from 256 to 19") for m in said), said
    long = "abcdefghija"
    results = Seq2Seq.load(bundle).decode(["abc", long], errors="return")
    assert results[0].ok and "over the model's max_src_len of 10" in results[1].error
    with pytest.raises(Seq2EdgeError, match=r"max_src_len 30: the model cannot take more than 10 source tokens \(IndexError"):
        export_model(model, tmp_path / "c", source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>", eos="<eos>",
                     unk="<unk>", target_tokens="word", parity_sources=TEXTS[:3], max_src_len=30, log=lambda m: None)
    assert not (tmp_path / "c").exists()


def test_an_input_the_graphs_cannot_take_is_its_own_error_and_the_others_are_decoded(tmp_path):
    """A bundle that promises more than its graphs take (made before export probed, or edited): onnxruntime's failure on
    one input is that input's one-line error, in the API and the CLI, and every other input is decoded."""
    torch.manual_seed(1)
    model = PositionalLSTM(len(SOURCE), len(TARGET)).eval()
    bundle = export_model(model, tmp_path / "b", source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>",
                          eos="<eos>", unk="<unk>", target_tokens="word", parity_sources=TEXTS[:6], log=lambda m: None)
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["model"]["max_src_len"] = 64
    (bundle / "bundle.json").write_text(json.dumps(meta))
    texts = ["abc", "abcdefghijabc", "jab", "hgfedcbaabcdefghij", "fig"]
    alone = [Seq2Seq.load(bundle).decode([t], errors="return")[0] for t in texts]
    for batch_size in (1, 64):
        results = Seq2Seq.load(bundle).decode(texts, errors="return", batch_size=batch_size)
        assert [r.ok for r in results] == [True, False, True, False, True]
        assert [r.text for r in results if r.ok] == [alone[0].text, alone[2].text, alone[4].text]
        assert results[1].error.startswith("the model failed on this input (onnxruntime: ")
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(tmp_path / "in.txt")], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == texts and lines[0] == f"abc -> {alone[0].text}"
    assert lines[1].startswith("abcdefghijabc -> (error: the model failed on this input (onnxruntime: ")
    assert proc.stderr.count("the model failed on this input") == 2


# ---- Transformer parts written plainly: nn.TransformerEncoder, nn.MultiheadAttention


class TransformerEncoded(TwoLayerLSTM):
    """nn.TransformerEncoder over the source (with a key padding mask), and a step that attends over the memory with
    nn.MultiheadAttention: the eval fast path (nested tensors) and the key length torch's exporter freezes
    (pytorch#135691) are export's to handle, not the model's."""

    def __init__(self, src_vocab: int, tgt_vocab: int):
        super().__init__(src_vocab, tgt_vocab)
        layer = nn.TransformerEncoderLayer(self.hidden, 4, 48, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, 2)
        self.cross = nn.MultiheadAttention(self.hidden, 4, batch_first=True)

    def encode(self, src_ids, src_lengths):
        padding = torch.arange(src_ids.shape[1])[None, :] >= src_lengths[:, None]
        memory = self.transformer(self.src_embed(src_ids), src_key_padding_mask=padding)
        zeros = torch.zeros(src_ids.shape[0], self.hidden)
        return memory, ((zeros, zeros), (zeros, zeros))

    def step(self, prev_ids, state, memory, src_mask):
        (h1, c1), (h2, c2) = state
        context, weights = self.cross(h2.unsqueeze(1), memory, memory, key_padding_mask=~src_mask)
        context = context.squeeze(1)
        h1, c1 = self.cells[0](torch.cat([self.tgt_embed(prev_ids), context], dim=1), (h1, c1))
        h2, c2 = self.cells[1](h1, (h2, c2))
        return self.out(torch.cat([h2, context], dim=1)), ((h1, c1), (h2, c2)), weights.squeeze(1)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # PyTorch's own fast path, in the reference run
def test_a_transformer_encoder_and_multihead_attention_export_as_written_and_take_any_source_length(tmp_path):
    torch.manual_seed(1)
    model = TransformerEncoded(len(SOURCE), len(TARGET)).eval()
    assert torch.backends.mha.get_fastpath_enabled()
    bundle = export_lstm(tmp_path / "transformer", model)
    assert torch.backends.mha.get_fastpath_enabled()  # switched off while tracing, then restored
    assert not any("forward" in vars(m) for m in model.modules())  # the exportable attention is gone again
    texts = TEXTS + ["abcdefghij" * 6, "jihgfedcba" * 9]  # 60 and 90 tokens, far past the traced 5
    expected = pytorch_greedy(model, [[SOURCE.index(c) for c in t] for t in texts], 2, 3, [1, 2], max_len=30)
    got = Seq2Seq.load(bundle).decode(texts, max_len=30, batch_size=7)
    assert [r.text for r in got] == [" ".join(TARGET[i] for i in ids) for ids in expected]
    assert got[-1].attention is None and Seq2Seq.load(bundle).decode(texts[-1:], return_attention=True)[0].attention.shape[1] == 90


class BatchFrozen(TwoLayerLSTM):
    """A step with a size the trace freezes (a Python number from a shape): the graphs run at batch 1, where export
    probes the length limits, and fail in onnxruntime on the parity gate's larger batches."""

    def step(self, prev_ids, state, memory, src_mask):
        scores, state, attention = super().step(prev_ids, state, memory, src_mask)
        rows = torch.zeros(max(3, int(prev_ids.shape[0])), scores.shape[1])[: prev_ids.shape[0]]  # 3 rows once traced
        return scores + rows, state, attention


def test_onnxruntime_failing_inside_the_parity_gate_is_one_export_error_naming_the_graph_and_the_cause(tmp_path):
    torch.manual_seed(1)
    with pytest.raises(ExportError) as caught:
        export_lstm(tmp_path / "frozen", BatchFrozen(len(SOURCE), len(TARGET)).eval())
    message = str(caught.value)
    assert "\n" not in message and message.startswith("decoder.onnx fails in onnxruntime on a parity batch"), message
    assert "no bundle was written. The likely cause: a size the trace fixed as a constant" in message
    assert not (tmp_path / "frozen").exists()
