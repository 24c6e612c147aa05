"""One truth for both hosts: the conformance corpus (tests/conformance/cases.jsonl) run against the Python
runtime here and against the JavaScript host by `npm test` (hosts/js/test/conformance.test.mjs).

The corpus is written from the Python runtime by tests/conformance/make_corpus.py; a change of behaviour
in either host fails here until the corpus is regenerated, which makes it a visible change of that file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(Path(__file__).resolve().parent / "conformance"))
from make_corpus import CASES, load_error_of, outcome_of, results_of, uniform_of  # noqa: E402

ALL = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]


def assert_results(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for i, (result, want) in enumerate(zip(got, expected)):
        if "error" in want:
            assert result == want, f"input {i}"
            continue
        assert [(h["text"], h["tokens"]) for h in result["hypotheses"]] == [(h["text"], h["tokens"]) for h in want["hypotheses"]], \
            f"input {i}"
        assert all(abs(a["score"] - b["score"]) <= 1e-4 for a, b in zip(result["hypotheses"], want["hypotheses"])), f"input {i}"


@pytest.mark.parametrize("case", ALL, ids=[c["name"] for c in ALL])
def test_the_python_runtime_gives_the_conformance_corpus(case):
    if case["kind"] == "decode":
        assert_results(results_of(case), case["expect"])
    elif case["kind"] == "contract":
        got = outcome_of(case)
        if "results" in case["expect"]:
            assert_results(got.pop("results"), case["expect"]["results"])
            assert got == {k: v for k, v in case["expect"].items() if k != "results"}
        else:
            assert got == case["expect"]
    elif case["kind"] == "draw":
        assert uniform_of(case["seed"], case["position"], case["step"]) == case["expect"]
    else:
        assert load_error_of(case) == case["expect"]


def test_the_corpus_covers_every_area_it_promises():
    names = " ".join(c["name"] for c in ALL)
    options = [c["options"] for c in ALL if c["kind"] == "decode"]
    assert any(o.get("sample") for o in options) and any(o.get("beam_size", 1) > 1 for o in options)
    assert any(c["load"].get("ensemble") for c in ALL if c["kind"] == "decode")
    assert any(c["load"].get("greedy_graph") for c in ALL if c["kind"] == "decode") and "conventions" in names
    assert sum(c["kind"] == "load" for c in ALL) >= 26 and sum(c["kind"] == "draw" for c in ALL) >= 9


@pytest.mark.requires("node")
def test_the_javascript_host_gives_the_conformance_corpus():
    proc = subprocess.run(["npm", "test", "--silent"], cwd=REPO / "hosts" / "js", capture_output=True, text=True, timeout=600)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("not ok")]
    assert proc.returncode == 0, "\n".join(failed) + proc.stdout[-3000:] + proc.stderr[-2000:]
