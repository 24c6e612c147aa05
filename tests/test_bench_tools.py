"""The measurement scripts the docs quote (`python -m seq2edge.bench.NAME`) run and print what the docs show.

Each runs here on the small shipped bundle and a few words: a script that broke (a moved path, a renamed
API) fails here rather than on the day someone repeats a measurement."""

import re

import pytest
from click.testing import CliRunner
from conftest import REPO

from seq2edge.bench import (
    bulk,
    decoder_step,
    hosts,
    loop_crossover,
    parity_tolerance,
    profile_batch1,
    profile_bulk,
    sampling_parity,
    subnormals,
)
from seq2edge.train.english_words import new_words

SMALL = REPO / "models" / "g2p-en-small"
needs_node = pytest.mark.requires("node")


def test_english_words_keeps_new_words_spelt_like_headwords_in_frequency_order():
    headwords = {"the", "cats", "o'brien", "x-ray", "dog"}
    candidates = ["the", "dog", "hats", "Zebra", "it's", "-ing", "naïve", "shy", "zoo", "o'"]
    assert new_words(candidates, headwords, count=10) == ["hats", "it's", "shy"]
    assert new_words(candidates, headwords, count=2) == ["hats", "it's"]


def test_profile_batch1_reports_every_path_of_the_bundle(capsys):
    profile_batch1.main([str(SMALL), "--words", "20", "--top", "3"])
    out = capsys.readouterr().out
    for path in ("fp32 step by step", "fp32 greedy graph", "int8 step by step", "int8 greedy graph"):
        assert re.search(rf"^{path}: \d+ words/s, \d+ us/word, [\d.]+% inside session.run", out, re.MULTILINE), path


def test_profile_bulk_reports_both_precisions(capsys):
    profile_bulk.main(["--bundle", str(SMALL), "--words", "100"])
    out = capsys.readouterr().out
    assert re.search(r"^fp32: \d+ lines/s under the profiler, [\d.]+% inside session.run", out, re.MULTILINE)
    assert re.search(r"^int8: \d+ lines/s", out, re.MULTILINE)


@pytest.mark.slow  # whole commands, start-up included; .ci/run runs the slow tests of this file
def test_bulk_bench_times_one_and_two_workers(capsys):
    bulk.main(["--bundle", str(SMALL), "--lines", "300", "--no-ray"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| --workers")]
    assert len(rows) == 4 and all(re.match(r"\| --workers [12] \| (fp32|int8) \| \d+ \| [\d.]+x \| \d+ min \|", r) for r in rows)


def test_parity_tolerance_measures_noise_and_difference_of_a_model(capsys):
    parity_tolerance.main(["--shipped", "--checkpoint", str(REPO / "models/g2p-en-small-checkpoint"), "--bundle", str(SMALL),
                           "--dev-words", "20", "--long", "8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| g2p-en-small")]
    assert len(rows) == 2 and "20 dev words" in rows[0] and "8 inputs of 30-60 characters" in rows[1]
    diff, noise, ratio, agreement = rows[0].split("|")[3:7]  # on dev words, as export's gate measures
    assert float(diff) < 1e-4 and float(noise) > 0 and float(ratio) < 10 and agreement.strip() == "100%"


def test_loop_crossover_prints_a_speedup_per_batch_size():
    result = CliRunner().invoke(loop_crossover.main, ["--hidden", "32", "--steps", "8", "--batches", "1,16", "--rounds", "1",
                                                      "--calls", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s+32\s+8\s+[\d.]+\s+[\d.]+$", result.output, re.MULTILINE)


@pytest.mark.slow
@needs_node
def test_hosts_bench_times_python_and_node_on_the_same_words(capsys):
    hosts.main([str(SMALL), "--words", "10"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Python") or line.startswith("| Node")]
    assert len(rows) == 6 and rows[0].endswith("| 1.00x / 1.00x |")


@needs_node
def test_sampling_parity_compares_both_hosts(capsys):
    sampling_parity.main([str(SMALL), "--words", "10"])
    assert re.search(r"^30 words sampled \(\d+ draws\), [0-3] differing$", capsys.readouterr().out, re.MULTILINE)


def test_decoder_step_compares_traced_and_node_steps_in_each_precision(tiny_checkpoint):
    result = CliRunner().invoke(decoder_step.main, [str(tiny_checkpoint), "--batches", "1,4", "--rounds", "1", "--calls", "4",
                                                     "--parity-words", "20", "--inputs", "20"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"^tiny\s+(fp32|int8)\s+(traced|node)\s+(\d+)(?:\s+[\d.]+){4}$", result.output, re.MULTILINE)
    assert [r[:2] for r in rows] == [("fp32", "traced"), ("fp32", "node"), ("int8", "traced"), ("int8", "node")]
    nodes = {r[:2]: int(r[2]) for r in rows}
    assert nodes["fp32", "node"] < nodes["fp32", "traced"]  # the LSTM cell's elementwise nodes became one node
    assert re.search(r"^tiny .*no arithmetic: [\d.]+ µs at batch 1, [\d.]+ µs at batch 4$", result.output, re.MULTILINE)


@pytest.mark.slow
def test_subnormals_times_the_checkpoint_and_its_tiny_weight_probe_with_and_without_flushing(capsys):
    subnormals.main([str(REPO / "models" / "g2p-en-small-checkpoint"), "--words", "16", "--rounds", "1"])
    out = capsys.readouterr().out
    for model in ("checkpoint", "tiny weights"):
        for batch in (1, 64):
            assert re.search(rf"^{model} +{batch} +\d+ +\d+ +[\d.]+$", out, re.MULTILINE), (model, batch)


@pytest.mark.slow
def test_the_ctranslate2_comparison_times_every_engine_and_checks_they_decode_alike(tmp_path):
    """seq2edge bench --ctranslate2 on an OpenNMT-py Transformer fixture: CTranslate2 converts the checkpoint itself,
    and seq2edge fp32, CTranslate2 fp32 and PyTorch eager give the toolkit's own outputs (a wrong conversion, a wrong
    tokenisation or a mixed-up row would not)."""
    import json

    from seq2edge.export.importers import export_imported
    from seq2edge.runtime.cli import cli  # through the group, as users run it (its -h; a bare command would keep --help only)

    fixture = REPO / "tests" / "fixtures" / "opennmt" / "transformer-g2p"
    bundle = export_imported("opennmt", fixture / "model.pt", tmp_path / "bundle", parity_sources=fixture / "inputs.txt",
                             int8=True, log=lambda m: None)
    words = fixture.joinpath("inputs.txt").read_text().splitlines()[:40]
    (tmp_path / "in.txt").write_text("\n".join(words) + "\n")
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--ctranslate2", str(fixture / "model.pt"),
                                      "--inputs", str(tmp_path / "in.txt"), "--quick", "--json", str(tmp_path / "ct2.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "ct2.json").read_text())["rows"]
    assert {(r["engine"], r["precision"], r["batch"]) for r in rows} == {
        (e, p, b) for b in (1, 64) for e, p in (("ctranslate2", "fp32"), ("ctranslate2", "int8"), ("seq2edge", "fp32"),
                                                ("seq2edge", "int8"), ("pytorch", "fp32"))}
    assert all(r["words_per_second"] > 0 for r in rows)
    assert all(r["same_output_as_ctranslate2"] == 1.0 for r in rows if r["precision"] == "fp32")
    assert "x CTranslate2" in result.output
