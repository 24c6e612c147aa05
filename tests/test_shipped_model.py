"""The shipped G2P model: its bundle verifies, it knows common words, and README's figures are what eval gives."""

import re

import pytest
from conftest import REPO

from seq2edge.runtime import Seq2Seq
from seq2edge.train.evaluate import evaluate

BUNDLE = REPO / "models" / "g2p-en"


@pytest.fixture(scope="module")
def shipped():
    return Seq2Seq.load(BUNDLE, providers="cpu")


def test_shipped_bundle_passed_its_parity_checks(shipped):
    parity = shipped.bundle.meta.parity
    assert parity["fp32"]["token_agreement"] == 1.0 and parity["fp32"]["max_abs_log_prob_diff"] <= 1e-4
    assert parity["fp32"]["words"] >= 500
    assert "int8" in shipped.bundle.precisions
    assert parity["int8"]["wer"] - parity["int8"]["fp32_wer"] <= 0.5


def test_shipped_model_pronounces_dictionary_words(shipped):
    got = {r.input: r.text for r in shipped.decode(["attention", "onnx", "edge", "Knightley"])}
    assert got["attention"] == "AH0 T EH1 N SH AH0 N"
    assert got["edge"] == "EH1 JH"


def _readme_row(label: str) -> list[float]:
    """The four figures (WER, PER with stress; WER, PER stressless) of a row of README's results table."""
    text = (REPO / "README.md").read_text()
    match = re.search(rf"^\| {re.escape(label)} \|([^\n]*)$", text, flags=re.MULTILINE)
    assert match, f"README has no results row {label!r}"
    return [float(x) for x in re.findall(r"([\d.]+)%", match.group(1))][:4]


@pytest.mark.parametrize("label,beam", [("greedy", 1), ("beam 5", 5)])
def test_readme_figures_are_what_eval_reproduces(label, beam):
    result = evaluate(BUNDLE, split="test", beam=beam)
    measured = [result.scores["stress"].wer, result.scores["stress"].per,
                result.scores["stressless"].wer, result.scores["stressless"].per]
    assert result.scores["stress"].words == 12_640
    assert [round(x, 2) for x in measured] == _readme_row(label)
