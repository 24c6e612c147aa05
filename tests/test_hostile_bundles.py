"""The bundle readers against files made to break them: bundle.json with any value at any place (a growing state's
list of tensors included), its bytes changed,
and graph bytes changed or nested without end. Each reader refuses in its own words (BundleError, MalformedModel) or
reads the file; nothing else escapes. What these found is kept as conformance cases (tests/conformance/make_corpus.py,
DAMAGE: "graph nested 1,500 subgraphs deep"), so the JavaScript host is held to the same refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2edge.runtime.bundle import load_bundle
from seq2edge.runtime.errors import BundleError
from seq2edge.runtime.onnx_scan import MalformedModel, metadata, uses_external_data

BUNDLES = REPO / "tests" / "conformance" / "bundles"
META = {name: json.loads((BUNDLES / name / "bundle.json").read_text(encoding="utf-8")) for name in ("g2p", "conventions", "growing")}
DECODER = (BUNDLES / "g2p" / "decoder.onnx").read_bytes()
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _places(node, path=()):
    """Every (path) inside a parsed JSON document."""
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _places(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:6]):  # a vocabulary's first tokens stand for the rest
            yield from _places(value, (*path, i))


def _load(tmp: Path, text: str | bytes) -> None:
    """load_bundle on a folder holding only this bundle.json: a BundleError, or a bundle."""
    folder = tmp / "bundle"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "bundle.json").write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    try:
        load_bundle(folder)
    except BundleError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(st.sampled_from(sorted(META)), st.data())
def test_any_value_anywhere_in_bundle_json_is_read_or_refused_in_one_line(tmp_path, name, data):
    meta = json.loads(json.dumps(META[name]))
    for _ in range(data.draw(st.integers(1, 3))):
        places = [p for p in _places(meta) if p]
        path = data.draw(st.sampled_from(places))
        parent = meta
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
    _load(tmp_path, json.dumps(meta))


@FUZZ
@given(st.sampled_from(sorted(META)), st.lists(st.tuples(st.integers(0, 10**9), st.binary(max_size=4), st.integers(0, 4)),
                                              min_size=1, max_size=4))
def test_bundle_json_with_its_bytes_changed_is_read_or_refused_in_one_line(tmp_path, name, edits):
    raw = bytearray((BUNDLES / name / "bundle.json").read_bytes())
    for where, insert, remove in edits:
        at = where % (len(raw) + 1)
        raw[at : at + remove] = insert
    _load(tmp_path, bytes(raw))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**9), st.binary(max_size=6), st.integers(0, 6)), min_size=1, max_size=4))
def test_graph_bytes_changed_anywhere_are_scanned_or_refused_as_malformed(edits):
    raw = bytearray(DECODER)
    for where, insert, remove in edits:
        at = where % (len(raw) + 1)
        raw[at : at + remove] = insert
    for scan in (uses_external_data, metadata):
        try:
            scan(bytes(raw))
        except MalformedModel as exc:
            assert str(exc)


@pytest.mark.parametrize("levels", [30, 1500, 100_000])
def test_a_graph_nested_deeper_than_the_bound_is_refused_without_recursing(tmp_path, levels):
    import sys

    sys.path.insert(0, str(REPO / "tests" / "conformance"))
    from make_corpus import BUNDLES as CORPUS_BUNDLES
    from make_corpus import make_deep_graph

    assert CORPUS_BUNDLES == BUNDLES
    saved = (BUNDLES / "damaged" / "deep-graph.onnx").read_bytes()
    try:
        make_deep_graph(levels)
        data = (BUNDLES / "damaged" / "deep-graph.onnx").read_bytes()
    finally:
        (BUNDLES / "damaged" / "deep-graph.onnx").write_bytes(saved)
    with pytest.raises(MalformedModel, match="nested more than 64 deep"):
        uses_external_data(data)
