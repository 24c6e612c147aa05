"""bundle.json has one schema for writer and reader; the packages import each other without cycles."""

import ast
import copy
import json
import re
from pathlib import Path

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


CONFORMANCE_BUNDLES = REPO / "tests" / "conformance" / "bundles"


def _meta(name: str) -> dict:
    return json.loads((CONFORMANCE_BUNDLES / name / "bundle.json").read_text())


@pytest.mark.parametrize("name", ["g2p", "spm", "conventions"])
def test_every_kind_of_bundle_reads_back_to_the_same_json(name):
    """A SentencePiece side keeps its model file and hash, conventions keep format 2, a plain bundle format 1."""
    data = _meta(name)
    meta = BundleMeta.from_dict(data, "bundle.json")
    assert meta.to_dict() == data
    assert meta.format_version == (2 if name == "conventions" else 1)


def _vocab_of(size: int) -> list[str]:
    return ["<pad>", "<s>", "</s>", "<unk>", "x", "y"] + [f"t{i}" for i in range(size - 6)]


def _graph(edit):
    def apply(m):
        edit(m["graphs"]["fp32"]["decoder"])
    return apply


@pytest.mark.parametrize("edit", [
    lambda m: m["conventions"].update(never_emit=["<s>"]),  # an id below </s>'s is not </s>
    lambda m: (m["parity"]["fp32"].update(token_agreement=1.0, tolerance=0.0, max_abs_log_prob_diff=0.0),  # the ends of ranges
               m["parity"]["fp32"]["greedy_graph"].update(batched_speedup=0.0)),
    lambda m: m["parity"].setdefault("int8", {}).update(token_agreement_with_fp32=0.0),
    lambda m: (m["target"].update(vocab=_vocab_of(300)), m["model"].update(tgt_vocab_size=300)),  # sizes beyond small ints
], ids=["never_emit <s>", "parity at the ends of its ranges", "int8 agreement 0", "a 300-token vocabulary"])
def test_bundle_json_at_the_edges_of_what_is_allowed_is_read(edit):
    data = _meta("conventions")
    edit(data)
    BundleMeta.from_dict(data, "bundle.json")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["target"]["vocab"].__setitem__(5, 5), "target.vocab must be a list of non-empty strings"),
    (lambda m: m["target"]["vocab"].__setitem__(5, ""), "target.vocab must be a list of non-empty strings"),
    (lambda m: m["target"]["vocab"].append("new"), "target vocabulary has 11 tokens, the model config says 10"),
    (lambda m: m["target"]["vocab"].__setitem__(9, "x"), "target.vocab holds 'x' twice; a token must have one id"),
    (lambda m: m["target"]["vocab"].pop(), "target vocabulary has 9 tokens, the model config says 10"),
    (lambda m: m["conventions"].update(never_emit=["</s>"]), "never_emit names </s>: no output could end"),
    (lambda m: m["conventions"].update(space_symbol="ab"), r"space_symbol must be at most 1 character\(s\), not 'ab'"),
    (lambda m: m["parity"]["fp32"].update(token_agreement=1.01), r"parity.fp32.token_agreement must be a number in \[0, 1\]"),
    (lambda m: m["parity"]["fp32"].update(tolerance=-1e-9), r"parity.fp32.tolerance must be a number in \[0, inf\]"),
    (lambda m: m["parity"]["fp32"].update(max_abs_log_prob_diff=-0.5), "parity.fp32.max_abs_log_prob_diff must be a number"),
    (lambda m: m["parity"]["fp32"].update(greedy_graph={"batched_speedup": -1}), "parity.fp32.batched_speedup must be a number"),
    (lambda m: m["parity"].update(int8={"token_agreement_with_fp32": -0.1}), "parity.int8.token_agreement_with_fp32 must be"),
    (lambda m: m["parity"].update(int8={"token_agreement_with_fp32": 1.2}), "parity.int8.token_agreement_with_fp32 must be"),
    (_graph(lambda e: e.pop("sha256")), "graphs.fp32.decoder needs file and sha256"),
    (_graph(lambda e: e.pop("file")), "graphs.fp32.decoder needs file and sha256"),
    (_graph(lambda e: e.update(file="sub/decoder.onnx")), "graphs.fp32.decoder.file must be a plain file name"),
    (_graph(lambda e: e.update(file="sub\\decoder.onnx")), "graphs.fp32.decoder.file must be a plain file name"),
    (_graph(lambda e: e.update(file=".decoder.onnx")), "graphs.fp32.decoder.file must be a plain file name"),
    (_graph(lambda e: e.update(file="")), "graphs.fp32.decoder.file must be a plain file name"),
    (_graph(lambda e: e.update(ort={"file": "decoder.ort"})), "graphs.fp32.decoder.ort needs file and sha256"),
])
def test_each_malformed_field_of_bundle_json_is_named(edit, message):
    data = _meta("conventions")
    edit(data)
    with pytest.raises(BundleError, match=message):
        BundleMeta.from_dict(data, "bundle.json")


def test_an_ort_copy_of_a_graph_is_read_with_its_entry():
    data = _meta("g2p")
    data["graphs"]["fp32"]["decoder"]["ort"] = {"file": "decoder.ort", "sha256": "0" * 64, "bytes": 5}
    meta = BundleMeta.from_dict(data, "bundle.json")
    assert meta.graphs["fp32"]["decoder"].ort.file == "decoder.ort" and meta.graphs["fp32"]["encoder"].ort is None
    assert meta.to_dict()["graphs"]["fp32"]["decoder"]["ort"] == {"file": "decoder.ort", "sha256": "0" * 64, "bytes": 5}


def _imports_of(path, package: str) -> set[str]:
    """seq2edge modules a file imports (top level and inside functions, relative imports resolved), and those it names
    in strings for importlib (runtime/cli.py's lazy commands)."""
    found = set()
    text = path.read_text()
    by_name = "import_module(" in text  # a file that imports modules named in strings
    for node in ast.walk(ast.parse(text)):
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
        elif by_name and isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"seq2edge(\.\w+)+", node.value):
            found.add(node.value)
    return found


def _modules() -> dict[str, Path]:
    """Every module of the four packages, subpackages included (export/importers/)."""
    folders = {"runtime": "seq2edge.runtime", "train": "seq2edge.train", "export": "seq2edge.export", "bench": "seq2edge.bench"}
    modules = {}
    for folder, package in folders.items():
        for p in (REPO / folder).rglob("*.py"):
            parts = p.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = p
    return modules


def test_the_import_rules_see_subpackages_and_importlib_strings():
    modules = _modules()
    assert "seq2edge.export.importers.joeynmt" in modules and "seq2edge.export.importers" in modules
    cli = _imports_of(modules["seq2edge.runtime.cli"], "seq2edge.runtime")
    assert {"seq2edge.train.cli", "seq2edge.export.cli", "seq2edge.runtime.decode_cli"} <= cli


def test_no_module_imports_itself_back_through_a_cycle():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in _imports_of(path, package) if m in modules and m != name}
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
    from seq2edge.runtime.cli import LAZY_COMMANDS

    lazy = {module for module, *_ in LAZY_COMMANDS.values()}  # other packages' commands, imported when they run
    for path in (REPO / "runtime").rglob("*.py"):
        imported = _imports_of(path, "seq2edge.runtime") - (lazy if path.name == "cli.py" else set())
        assert not [m for m in imported if not m.startswith("seq2edge.runtime")], path.name


def test_the_bring_your_own_path_loads_none_of_seq2edges_training_code():
    """export_model and the importers need the PyTorch reference decoder (train/model.py's greedy_decode, shared with
    checkpoint evaluation) and nothing else of train/: no corpus, checkpoint, metrics or training loop."""
    import subprocess
    import sys

    code = ("import sys; from seq2edge.export import export_model; import seq2edge.export.external, seq2edge.export.importers.joeynmt, "
            "seq2edge.export.importers.opennmt; print(sorted(m for m in sys.modules if m.startswith('seq2edge.train')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['seq2edge.train', 'seq2edge.train.model']"
