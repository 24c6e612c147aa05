"""`seq2edge export --from joeynmt|opennmt`: models the toolkits trained themselves decode identically.

tests/fixtures/{joeynmt,opennmt}/NAME/ hold tiny models made by JoeyNMT 2.3.0 and OpenNMT-py 3.5.1
(tests/fixtures/make_toolkit_fixtures.py, in throwaway virtualenvs), 300 inputs, and each toolkit's
own beam-1 translations of them with their scores. Each is imported through the CLI and decoded.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SEQ2EDGE
from test_js_host import JS, NODE, needs_node

from seq2edge.export.importers import ImportRefused, export_imported
from seq2edge.export.importers.torch_zip import read_checkpoint
from seq2edge.runtime import Seq2Seq

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NATIVE_CLI = Path(__file__).resolve().parents[1] / "hosts" / "c" / "build" / "seq2edge-c"
MODELS = [("joeynmt", "gru-bahdanau-bridge"), ("joeynmt", "lstm2-luong-last-tied"), ("joeynmt", "gru2-luong-zero-spm"),
          ("opennmt", "gru-brnn-mlp-bridge"), ("opennmt", "lstm2-brnn-general-feed"), ("opennmt", "gru-rnn-dot-feed"),
          ("joeynmt", "transformer-pre-g2p"), ("joeynmt", "transformer-post-tied-char"), ("joeynmt", "transformer-default-spm"),
          ("opennmt", "transformer-g2p"), ("opennmt", "transformer-concat-gelu")]
TRANSFORMERS = [(toolkit, name) for toolkit, name in MODELS if name.startswith("transformer")]
# make test imports one Transformer per toolkit; the others are .ci/run's slow tests (make test's 10 minutes)
IN_MAKE_TEST = {("joeynmt", "transformer-pre-g2p"), ("opennmt", "transformer-g2p")}


def models(group: list[tuple[str, str]]) -> list:
    return [pytest.param(toolkit, name, marks=() if not name.startswith("transformer") or (toolkit, name) in IN_MAKE_TEST
                         else pytest.mark.slow) for toolkit, name in group]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each fixture imported once through the CLI, for every test of the module that decodes it."""
    bundles: dict[tuple[str, str], Path] = {}

    def bundle(toolkit: str, name: str) -> Path:
        if (toolkit, name) not in bundles:
            out = tmp_path_factory.mktemp("imported") / name
            proc = import_bundle(toolkit, name, out)
            assert proc.returncode == 0, proc.stderr
            bundles[toolkit, name] = out
        return bundles[toolkit, name]
    return bundle


def source_of(toolkit: str, name: str) -> Path:
    return FIXTURES / toolkit / name / ("model.pt" if toolkit == "opennmt" else "")


def import_bundle(toolkit: str, name: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    fixture = FIXTURES / toolkit / name
    return subprocess.run([*SEQ2EDGE, "export", "--from", toolkit, str(source_of(toolkit, name)), str(out), "--parity-sources",
                           str(fixture / "inputs.txt"), *flags], capture_output=True, text=True)


def toolkit_scores(toolkit: str, name: str) -> list[float]:
    """Each output's score as the toolkit gives it: the sum of its tokens' log-probabilities, </s> included."""
    rows = [json.loads(line) for line in (FIXTURES / toolkit / name / "scores.jsonl").read_text().splitlines()]
    return [sum(r["scores"]) if "scores" in r else r["score"] for r in rows]


@pytest.mark.parametrize("toolkit, name", models(MODELS))
def test_an_imported_model_decodes_its_fixture_exactly_as_the_toolkit_did(imported, toolkit, name):
    fixture = FIXTURES / toolkit / name
    bundle = imported(toolkit, name)
    inputs = fixture / "inputs.txt"
    proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(inputs), "--format", "jsonl"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = fixture.joinpath("outputs.txt").read_text(encoding="utf-8").splitlines()
    assert len(records) == len(expected) == 300
    assert [r["output"] for r in records] == expected
    # OpenNMT-py logs its scores to 4 decimals; JoeyNMT's are the float32 values
    tolerance = 1e-4 if toolkit == "joeynmt" else 1e-4 + 5e-5
    assert max(abs(r["score"] - s) for r, s in zip(records, toolkit_scores(toolkit, name))) <= tolerance
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["model"]["origin"].startswith({"joeynmt": "joeynmt 2.3.0", "opennmt": "opennmt-py"}[toolkit])
    # a Transformer's bundle carries its key/value cache as a growing state (format 3); a recurrent one stays packed
    assert ("state" in meta) == name.startswith("transformer") and meta["format_version"] == (3 if "state" in meta else 2)


@needs_node
@pytest.mark.parametrize("toolkit, name", models(TRANSFORMERS))
def test_node_and_the_native_host_decode_an_imported_transformer_as_the_toolkit_did(imported, toolkit, name):
    fixture = FIXTURES / toolkit / name
    bundle = imported(toolkit, name)
    expected = fixture.joinpath("outputs.txt").read_text(encoding="utf-8").splitlines()
    node = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(fixture / "inputs.txt"), "--jsonl"],
                          capture_output=True, text=True, timeout=300)
    assert node.returncode == 0, node.stderr
    assert [json.loads(line)["output"] for line in node.stdout.splitlines()] == expected
    command = ["decode", str(bundle), "--input", str(fixture / "inputs.txt"), "--format", "jsonl", "--beam", "3"]
    native = subprocess.run([str(NATIVE_CLI), *command], capture_output=True)
    assert native.returncode == 0 and native.stdout == subprocess.run([*SEQ2EDGE, *command], capture_output=True).stdout


@pytest.fixture(scope="module")
def full_import(tmp_path_factory) -> Path:
    """The JoeyNMT GRU fixture with int8, the greedy graph and ORT-format copies."""
    out = tmp_path_factory.mktemp("imported") / "joey"
    proc = import_bundle("joeynmt", "gru-bahdanau-bridge", out, "--int8", "--greedy-graph", "--ort")
    assert proc.returncode == 0, proc.stderr
    return out


def fixture_inputs() -> list[str]:
    return (FIXTURES / "joeynmt" / "gru-bahdanau-bridge" / "inputs.txt").read_text().splitlines()


def test_an_imported_bundle_searches_samples_and_has_int8_figures(full_import):
    words = fixture_inputs()[:60]
    model = Seq2Seq.load(full_import)
    greedy = model.decode(words)
    beams = model.decode(words, beam_size=4, nbest=2)
    assert all(len(b.nbest) == 2 and b.text == b.nbest[0].text and b.nbest[0].score >= b.nbest[1].score for b in beams)
    assert [r.text for r in model.decode(words, beam_size=1)] == [r.text for r in greedy]
    assert model.decode(words, sample=True, seed=1) == model.decode(words, sample=True, seed=1)
    int8 = json.loads((full_import / "bundle.json").read_text())["parity"]["int8"]
    assert int8["measured"] and int8["token_agreement_with_fp32"] >= 0.95
    one_call = Seq2Seq.load(full_import, greedy_graph=True).decode(words)
    assert [r.text for r in one_call] == [r.text for r in greedy]


def test_eval_and_two_workers_on_an_imported_bundle(full_import, tmp_path):
    fixture = FIXTURES / "joeynmt" / "gru-bahdanau-bridge"
    rows = zip(fixture.joinpath("inputs.txt").read_text().splitlines(), fixture.joinpath("outputs.txt").read_text().splitlines())
    (tmp_path / "own.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in rows))
    proc = subprocess.run([*SEQ2EDGE, "eval", str(full_import), "--corpus", str(tmp_path / "own.tsv"), "--split", "all"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "exact match 100.00%" in proc.stdout  # the toolkit's own outputs as references
    outputs = []
    for flags in (["--workers", "1"], ["--workers", "2"], ["--graph-format", "ort"]):
        out = tmp_path / "out.tsv"
        proc = subprocess.run([*SEQ2EDGE, "decode", str(full_import), "--input", str(fixture / "inputs.txt"), "--output", str(out),
                               "--format", "tsv", *flags], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append([line.split("\t")[1] for line in out.read_text().splitlines()])
    assert outputs[0] == outputs[1] == outputs[2] == fixture.joinpath("outputs.txt").read_text().splitlines()


@needs_node
def test_node_decodes_an_imported_bundle_as_python_does_in_every_format(full_import, tmp_path):
    words = fixture_inputs()
    (tmp_path / "in.txt").write_text("\n".join(words) + "\n")
    for precision, fmt in (("fp32", "onnx"), ("int8", "onnx"), ("int8", "ort")):
        python = [r.text for r in Seq2Seq.load(full_import, precision=precision, graph_format=fmt).decode(words)]
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(full_import), "--input", str(tmp_path / "in.txt"), "--jsonl",
                               "--precision", precision, "--graph-format", fmt], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line)["output"] for line in proc.stdout.splitlines()] == python, (precision, fmt)


# ---- what the importers refuse, in one line


def joey_copy(tmp_path: Path, edit) -> Path:
    model_dir = tmp_path / "joey"
    shutil.copytree(FIXTURES / "joeynmt" / "gru-bahdanau-bridge", model_dir)
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    edit(config)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return model_dir


def onmt_copy(tmp_path: Path, **opt) -> Path:
    checkpoint = read_checkpoint(FIXTURES / "opennmt" / "gru-brnn-mlp-bridge" / "model.pt")
    for key, value in opt.items():
        setattr(checkpoint["opt"], key, value)
    torch.save(checkpoint, tmp_path / "model.pt")
    return tmp_path / "model.pt"


class Payload:
    """A class a pickle would import and call on loading: what the checkpoint reader refuses."""

    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize("make, message", [
    (lambda t: joey_copy(t, lambda c: c["model"]["encoder"].update(type="transformer")),
     "encoder.type 'transformer' with decoder.type 'recurrent' (both recurrent or both transformer import) is not supported"),
    (lambda t: joey_copy(t, lambda c: c["model"].update(encoder={**c["model"]["encoder"], "type": "transformer", "activation": "elu"},
                                                        decoder={**c["model"]["decoder"], "type": "transformer"})),
     "encoder.activation 'elu' is not supported by --from joeynmt"),
    (lambda t: joey_copy(t, lambda c: c["data"]["src"].update(level="bpe", tokenizer_type="subword-nmt")),
     "data.src.tokenizer_type 'subword-nmt' (subword-nmt BPE; SentencePiece models import) is not supported"),
    (lambda t: joey_copy(t, lambda c: c["model"]["encoder"].update(bidirectional=False)),
     "encoder.bidirectional false"),
    (lambda t: joey_copy(t, lambda c: c["data"].update(special_symbols={"lang_tags": ["<de>"]})),
     "data.special_symbols.lang_tags (language tags) is not supported"),
    (lambda t: onmt_copy(t, copy_attn=True), "copy_attn (copy attention) is not supported by --from opennmt"),
    (lambda t: onmt_copy(t, coverage_attn=True), "coverage_attn (coverage) is not supported"),
    (lambda t: onmt_copy(t, context_gate="both"), "context_gate 'both' is not supported"),
    (lambda t: onmt_copy(t, rnn_type="SRU"), "rnn_type SRU is not supported"),
    (lambda t: onmt_copy(t, encoder_type="transformer"), "decoder_type 'rnn' with encoder_type 'transformer' is not supported"),
    (lambda t: onmt_copy(t, encoder_type="transformer", decoder_type="transformer", position_encoding=True, heads=4,
                         max_relative_positions=20), "relative positions (max_relative_positions 20) is not supported"),
    (lambda t: onmt_copy(t, encoder_type="transformer", decoder_type="transformer", position_encoding=True, heads=4,
                         max_relative_positions=-1), "rotary position embeddings (max_relative_positions -1) is not supported"),
    (lambda t: onmt_copy(t, encoder_type="transformer", decoder_type="transformer", position_encoding=True, heads=4,
                         pos_ffn_activation_fn="silu"), "pos_ffn_activation_fn 'silu' is not supported"),
    (lambda t: onmt_copy(t, encoder_type="transformer", decoder_type="transformer", position_encoding=True, heads=4,
                         full_context_alignment=True, alignment_heads=1), "alignment heads (alignment_heads) is not supported"),
    (lambda t: (torch.save({"model": {}, "opt": Payload()}, t / "evil.pt"), t / "evil.pt")[1],
     "cannot be read as weights only"),
])
def test_what_an_importer_does_not_rebuild_is_refused_by_name(tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(ImportRefused, match=re.escape(message)) as refused:
        export_imported("joeynmt" if source.is_dir() else "opennmt", source, tmp_path / "out",
                        parity_sources=FIXTURES / "joeynmt" / "gru-bahdanau-bridge" / "inputs.txt", log=lambda m: None)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_pickled_payload_in_one_line_without_running_it(tmp_path):
    torch.save({"model": {}, "opt": Payload()}, tmp_path / "evil.pt")
    proc = subprocess.run([*SEQ2EDGE, "export", "--from", "opennmt", str(tmp_path / "evil.pt"), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot be read as weights only" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "unpickled" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_the_checkpoint_reader_builds_what_torch_saved_without_unpickling(tmp_path):
    """Tensors of several dtypes, a transposed one, a view at an offset, a scalar, a Parameter, nested containers."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {"t": base.t(), "view": base[1:, 2:], "scalar": torch.tensor(3.5), "ids": torch.tensor([1, -2], dtype=torch.int64),
             "mask": torch.tensor([True, False]), "p": torch.nn.Parameter(torch.ones(2)), "nested": [{"a": (1, 2.5, "x", None)}],
             "opt": argparse.Namespace(rnn_type="GRU", layers={1, 2})}
    torch.save(saved, tmp_path / "c.pt")
    got = read_checkpoint(tmp_path / "c.pt")
    for key in ("t", "view", "scalar", "ids", "mask", "p"):
        assert got[key].dtype == saved[key].dtype and torch.equal(got[key], saved[key].detach()), key
    assert got["nested"] == saved["nested"] and got["opt"] == saved["opt"]


@pytest.mark.parametrize("flags, words", [
    (["--exporter", "dynamo"], "--exporter goes with seq2edge's own checkpoints"),
    (["--exporter", "torchscript"], "--exporter goes with seq2edge's own checkpoints"),
    (["--decoder-step", "node"], "--decoder-step node goes with seq2edge's own checkpoints"),
])
def test_export_options_an_import_cannot_use_are_refused_not_dropped(tmp_path, flags, words):
    proc = subprocess.run([*SEQ2EDGE, "export", "--from", "opennmt", str(source_of("opennmt", MODELS[-1][1])), str(tmp_path / "out"),
                           *flags], capture_output=True, text=True)
    assert proc.returncode == 2 and words in proc.stderr and not (tmp_path / "out").exists()


def test_joeynmt_dev_sources_give_as_many_parity_inputs_as_asked(tmp_path, monkeypatch):
    from seq2edge.export.importers import joeynmt

    (tmp_path / "dev.src").write_text("".join(f"word{i}\n" for i in range(700)))
    monkeypatch.chdir(tmp_path)
    assert len(joeynmt._dev_sources({"dev": "dev", "src": {"lang": "src"}}, tmp_path)) == 700  # --parity-words takes its share
