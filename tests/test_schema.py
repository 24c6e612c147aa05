"""bundle.json has one schema for writer and reader; the packages import each other without cycles."""

import ast
import copy
import json

import pytest
from conftest import REPO

from seq2edge.runtime import BundleError
from seq2edge.runtime.schema import BundleMeta


@pytest.fixture(scope="module")
def written(tiny_bundle) -> dict:
    return json.loads((tiny_bundle / "bundle.json").read_text())


def test_what_export_writes_reads_back_to_the_same_json(written):
    assert BundleMeta.from_dict(written, "bundle.json").to_dict() == written


@pytest.mark.parametrize("version", [0, -3, True, 1.0, "1", None])
def test_format_version_must_be_a_whole_number_from_1(written, version):
    data = {**written, "format_version": version}
    with pytest.raises(BundleError, match=f"format_version must be a whole number >= 1, found {version!r}"):
        BundleMeta.from_dict(data, "bundle.json")


def test_a_missing_format_version_says_it_is_not_a_bundle(written):
    data = {k: v for k, v in written.items() if k != "format_version"}
    with pytest.raises(BundleError, match="no format_version; not a seq2edge bundle"):
        BundleMeta.from_dict(data, "bundle.json")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["special_ids"].update(eos=3), "special_ids .* disagree with the model config"),
    (lambda m: m["source"].update(tokenizer="word"), "source.tokenizer is 'word' but the model config says 'char'"),
    (lambda m: m["source"].update(lowercase=False), "source.lowercase is False but the model config says True"),
    (lambda m: m["target"].update(tokenizer="char"), "target.tokenizer is 'char' but the model config says 'word'"),
])
def test_fields_repeated_from_the_model_config_must_agree_with_it(written, edit, message):
    data = copy.deepcopy(written)
    edit(data)
    with pytest.raises(BundleError, match=message):
        BundleMeta.from_dict(data, "bundle.json")


def _imports_of(path, package: str) -> set[str]:
    """seq2edge modules imported by a file (top level and inside functions), relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package if node.level == 1 else package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
                names = [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
            else:
                module, names = node.module or "", [node.module or ""]
                names += [f"{module}.{a.name}" for a in node.names]
            found.update(n for n in names if n.startswith("seq2edge."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("seq2edge."))
    return found


def test_no_module_imports_itself_back_through_a_cycle():
    folders = {"runtime": "seq2edge.runtime", "train": "seq2edge.train", "export": "seq2edge.export", "bench": "seq2edge.bench"}
    modules = {f"{package}.{p.stem}": p for folder, package in folders.items() for p in (REPO / folder).glob("*.py")
               if p.stem != "__init__"}
    graph = {name: {m for m in _imports_of(path, name.rsplit(".", 1)[0]) if m in modules} for name, path in modules.items()}
    assert graph["seq2edge.export.quantize"] and "seq2edge.export.bundle" not in graph["seq2edge.export.quantize"]

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, graph) if c]
    assert not cycles, " -> ".join(cycles[0])


def test_the_runtime_imports_nothing_of_train_export_or_bench():
    for path in (REPO / "runtime").glob("*.py"):
        imported = _imports_of(path, "seq2edge.runtime")
        assert not [m for m in imported if not m.startswith("seq2edge.runtime")], path.name
