"""The bundle contract (runtime/bundle_contract.json): written from the Python definitions, read by every host, and
every rule in it held by a conformance case."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

from seq2edge.runtime.config import ExternalModelConfig, ModelConfig
from seq2edge.runtime.contract import contract, say
from seq2edge.runtime.conventions import Conventions

sys.path.insert(0, str(REPO / "tests" / "conformance"))
from make_corpus import CASES, PREFIX  # noqa: E402

CORPUS = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]


def test_the_committed_contract_is_what_the_python_definitions_say():
    proc = subprocess.run([sys.executable, "tools/bundle_contract.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_changed_default_makes_the_committed_contract_stale(monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import bundle_contract

    field = next(f for f in ModelConfig.__dataclass_fields__.values() if f.name == "hidden")
    monkeypatch.setattr(field, "default", 512)
    stale = [p for p, text in bundle_contract.expected_files().items() if p.read_text(encoding="utf-8") != text]
    assert len(stale) == 3  # the JSON, the JavaScript host's module and the native host's literal


def test_the_native_host_holds_no_copy_of_a_default_range_or_message():
    """hosts/c reads the contract compiled in from bundle_contract.inc; its sources name no default or message."""
    sources = "".join(p.read_text(encoding="utf-8") for p in (REPO / "hosts" / "c" / "src").glob("*") if p.suffix in (".cpp", ".hpp"))
    for message in contract()["messages"].values():
        words = re.split(r"\{\w+\}", message)
        assert not any(len(w) > 24 and w in sources for w in words), message
    for name in ('"max_src_len", 64', '"hidden", 256', "max_len_ratio = 0", "64 deep"):
        assert name not in sources


def test_the_javascript_host_holds_no_copy_of_a_default_range_or_message():
    checks = (REPO / "hosts" / "js" / "bundle-checks.mjs").read_text(encoding="utf-8")
    host = (REPO / "hosts" / "js" / "seq2edge.mjs").read_text(encoding="utf-8")
    for message in contract()["messages"].values():
        words = re.split(r"\{\w+\}", message)
        assert not any(len(w) > 24 and w in checks + host for w in words), message
    for name in ("max_src_len: 64", "hidden: 256", "max_len_ratio: 0", "token_agreement: [0, 1]", '"src_mask"'):
        assert name not in checks + host


@pytest.mark.parametrize("cls", [ModelConfig, ExternalModelConfig, Conventions])
def test_every_field_of_a_config_is_in_the_contract(cls):
    group = {ModelConfig: contract()["model"]["own"], ExternalModelConfig: contract()["model"]["external"],
             Conventions: contract()["conventions"]}[cls]
    assert [s["name"] for s in group["fields"]] == list(cls.__dataclass_fields__)


def test_python_validates_from_the_committed_file(monkeypatch):
    """A range changed in the file (not in the Python code) changes what Python accepts: it reads the file."""
    edited = json.loads(json.dumps(contract()))
    next(s for s in edited["model"]["own"]["fields"] if s["name"] == "layers")["min"] = 3
    monkeypatch.setattr("seq2edge.runtime.config.contract", lambda: edited)
    with pytest.raises(ValueError, match="layers must be at least 3, not 2"):
        ModelConfig(src_vocab_size=8, tgt_vocab_size=8, layers=2)


def _fits(template: str, message: str) -> bool:
    """Whether `message` (cut at the corpus's PREFIX characters) is `template` with its placeholders filled; a
    placeholder that names a field, a side or a precision holds one word."""
    pieces, holes = re.split(r"\{\w+\}", template), re.findall(r"\{(\w+)\}", template)
    cut = len(message) >= PREFIX

    def gap_ok(i: int, gap: str) -> bool:  # the text filling the placeholder before piece i
        return " " not in gap if holes[i - 1] in ("name", "side", "precision") else True

    def match(i: int, pos: int) -> bool:
        if i == len(pieces):
            return pos == len(message)
        if i > 0 and cut and gap_ok(i, message[pos:]):
            return True  # the cut falls inside a placeholder
        for start in [pos] if i == 0 else range(pos, len(message) + 1):
            if i > 0 and not gap_ok(i, message[pos:start]):
                break
            rest = message[start:start + len(pieces[i])]
            if rest == pieces[i] and match(i + 1, start + len(pieces[i])):
                return True
            if cut and start + len(pieces[i]) > len(message) and pieces[i].startswith(message[start:]):
                return True
        return False

    starts = [0] + [m.end() for m in re.finditer(r": ", message)]
    return any(match(0, s) for s in starts)


def test_fits_tells_a_message_from_another():
    assert _fits("{side} vocabulary has {found} tokens", "bundle.json: target vocabulary has 9 tokens")
    assert not _fits("{side} vocabulary has {found} tokens", "bundle.json: target vocabulary holds 9 tokens")
    cut = "bundle.json: parity.fp32.tolerance must be a number in [0, inf], not -1"[:PREFIX]
    assert _fits("parity.{precision}.{name} must be a number in [{min}, {max}], not {value}", cut)
    assert not _fits("parity.{precision}.{name} must be a whole number, not {value}", cut)


@pytest.mark.parametrize("name", sorted(contract()["messages"]))
def test_every_refusal_of_the_contract_has_a_conformance_case(name):
    messages = [c["expect"]["message"] for c in CORPUS if c["kind"] in ("load", "contract") and "message" in c["expect"]]
    assert any(_fits(contract()["messages"][name], m) for m in messages), f"no case gives {name}: {say(name, **_any())}"


def _any():
    return {k: "x" for k in ("value", "name", "side", "problems", "precision", "choices", "keys", "token", "found", "size",
                             "expected", "min", "max", "max_chars", "ids", "src_vocab_size", "tgt_vocab_size", "newest",
                             "since", "limit")}


def test_the_corpus_leaves_out_every_optional_key_and_reaches_each_end_of_each_range():
    names = {c["name"] for c in CORPUS if c["kind"] == "contract"}
    groups = [("g2p", "model", contract()["model"]["own"]), ("conventions", "model", contract()["model"]["external"]),
              ("conventions", "conventions", contract()["conventions"])]
    for bundle, path, group in groups:
        for spec in group["fields"]:
            assert f"contract: {bundle} {path}.{spec['name']} left out" in names
            for end in ("min", "max"):
                if end in spec:
                    assert f"contract: {bundle} {path}.{spec['name']} at {end}" in names
