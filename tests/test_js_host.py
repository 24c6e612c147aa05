"""The JavaScript host, the one-call greedy graph and ORT-format graphs decode exactly like the Python runtime.

A bundle of the shipped checkpoint is exported once with --greedy-graph --ort; Node (onnxruntime-node,
and onnxruntime-web's wasm in Node) and headless Chromium decode CMUdict test words with it.
"""

import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, SEQ2EDGE
from test_reliability import FAULTS

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C

JS = REPO / "hosts" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.requires("node")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from seq2edge.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("js") / "g2p"
    return export_bundle(REPO / "models" / "g2p-en-checkpoint", out, int8=True, greedy_graph=True, ort=True,
                         parity_words=100, log=lambda m: None)


@pytest.fixture(scope="module")
def words() -> list[str]:
    return [e.source for e in C.split(C.load_cmudict().entries, "test")][:1000]


def node_decode(bundle, words, tmp_path, *flags) -> list[dict]:
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words) + "\n")
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(path), "--jsonl", *flags],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_greedy_graph_follows_the_contract_and_equals_step_by_step_decoding(bundle, words):
    graph = onnx.load(str(bundle / "greedy.onnx"))
    assert [i.name for i in graph.graph.input] == ["src_ids", "src_lengths", "max_len"]
    assert "max_len" not in {t.name for t in graph.graph.initializer}
    assert [o.name for o in graph.graph.output] == ["tokens", "lengths", "scores"]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["parity"]["fp32"]["greedy_graph"]["token_agreement_batched"] == 1.0
    steps = Seq2Seq.load(bundle, providers="cpu", greedy_graph=False)
    one_call = Seq2Seq.load(bundle, providers="cpu", greedy_graph=True)
    for batch in (1, 64):
        a, b = steps.decode(words[:300], batch_size=batch), one_call.decode(words[:300], batch_size=batch)
        assert [r.tokens for r in a] == [r.tokens for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-4)
    short, short_steps = one_call.decode(words[:50], max_len=2), steps.decode(words[:50], max_len=2)
    assert all(len(r.tokens) <= 2 for r in short) and any(r.truncated for r in short)
    assert [r.tokens for r in short] == [r.tokens for r in short_steps]
    np.testing.assert_allclose([r.score for r in short], [r.score for r in short_steps], atol=1e-4)  # forced </s> counted


def test_the_greedy_loop_body_owns_its_weights(bundle):
    """onnxruntime hands every outer-scope value a Loop body reads to each iteration: the body reads
    only its own initializers and the three per-call values (8% of a batch-1 decode when it did not)."""
    graph = onnx.load(str(bundle / "greedy.int8.onnx")).graph
    (loop,) = [n for n in graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    own = {t.name for t in body.initializer} | {v.name for v in body.input} | {o for n in body.node for o in n.output}
    outer = {i for n in body.node for i in n.input if i} - own
    assert outer == {"memory", "g/src_mask", "max_len"}
    assert len(body.initializer) > 10 and not {t.name for t in body.initializer} & {t.name for t in graph.initializer}


def test_auto_uses_the_greedy_graph_on_batches_only_where_export_measured_it_faster(bundle, words):
    from seq2edge.runtime.model import GREEDY_GRAPH_BATCHED_SPEEDUP

    measured = json.loads((bundle / "bundle.json").read_text())["parity"]["fp32"]["greedy_graph"]["batched_speedup"]
    for speedup, used_on_batches in ((1.0, False), (2.0, True), (measured, measured >= GREEDY_GRAPH_BATCHED_SPEEDUP)):
        model = Seq2Seq.load(bundle, providers="cpu")
        model.bundle.meta.parity["fp32"]["greedy_graph"]["batched_speedup"] = speedup
        model.decode(words[:20], batch_size=64)
        assert ("greedy" in model.backend.sessions) == used_on_batches  # the graph's session opens on first use
        model.decode(words[:1])
        assert "greedy" in model.backend.sessions  # one input: the graph, whatever was measured


def test_ort_format_graphs_decode_identically_and_list_their_operators(bundle, words):
    onnx_model = Seq2Seq.load(bundle, providers="cpu", graph_format="onnx")
    ort_model = Seq2Seq.load(bundle, providers="cpu", graph_format="ort")
    assert ort_model.engine.format == "ort"
    assert [r.tokens for r in onnx_model.decode(words[:300])] == [r.tokens for r in ort_model.decode(words[:300])]
    ops = (bundle / "required_operators.config").read_text()
    assert "ai.onnx;16;" in ops and "Loop" in ops and "com.microsoft;1;DynamicQuantizeLSTM" in ops
    assert "/tmp" not in ops.split("\n", 8)[-1] and "# - greedy.ort" in ops


def test_auto_format_uses_the_ort_copies_when_only_they_were_shipped(bundle, words, tmp_path):
    device = tmp_path / "device"
    shutil.copytree(bundle, device, ignore=shutil.ignore_patterns("*.onnx"))
    model = Seq2Seq.load(device, providers="cpu")
    assert model.engine.format == "ort"
    assert [r.tokens for r in model.decode(words[:100])] == [r.tokens for r in Seq2Seq.load(bundle).decode(words[:100])]


@needs_node
def test_node_greedy_equals_python_on_1000_words_step_by_step_and_in_one_call(bundle, words, tmp_path):
    python = Seq2Seq.load(bundle, providers="cpu", unknown="unk").decode(words, batch_size=64)
    for flags in ((), ("--greedy-graph",), ("--greedy-graph", "--batch-size", "1")):
        records = node_decode(bundle, words, tmp_path, "--unknown", "unk", *flags)
        assert [r["output"] for r in records] == [r.text for r in python], flags
        np.testing.assert_allclose([r["score"] for r in records], [r.score for r in python], atol=1e-4)


@needs_node
def test_node_follows_the_measured_batched_greedy_graph_policy(bundle, words, tmp_path):
    """Where export measured the graph faster batched, Node's default decodes batches with it, as Python
    does: its float32 score sums then equal --greedy-graph's bit for bit, not the step-by-step ones."""
    fast = tmp_path / "fast"
    shutil.copytree(bundle, fast)
    meta = json.loads((fast / "bundle.json").read_text())
    meta["parity"]["fp32"]["greedy_graph"]["batched_speedup"] = 2.0
    (fast / "bundle.json").write_text(json.dumps(meta))
    scores = {name: [r["score"] for r in node_decode(fast, words[:300], tmp_path, *flags)]
              for name, flags in (("auto", ()), ("graph", ("--greedy-graph",)), ("steps", ("--no-greedy-graph",)))}
    assert scores["auto"] == scores["graph"] != scores["steps"]


@needs_node
def test_node_beam_5_nbest_equals_python_on_200_words(bundle, words, tmp_path):
    python = Seq2Seq.load(bundle, providers="cpu").decode(words[:200], beam_size=5, nbest=5)
    records = node_decode(bundle, words[:200], tmp_path, "--beam", "5", "--nbest", "5")
    for record, result in zip(records, python, strict=True):
        assert [h["output"] for h in record["nbest"]] == [h.text for h in result.nbest], record["input"]
        np.testing.assert_allclose([h["score"] for h in record["nbest"]], [h.score for h in result.nbest], atol=1e-4)


@needs_node
def test_node_samples_python_s_tokens_with_the_same_seed_and_holds_back_the_end_for_min_len(bundle, words, tmp_path):
    """Both hosts draw from (seed, line, step) alone, so Node samples the tokens Python samples (temperature,
    top-k, top-p); --min-len keeps </s> back in greedy and beam search as Python does."""
    model = Seq2Seq.load(bundle, providers="cpu")
    greedy = [r.text for r in model.decode(words[:200])]
    for settings, flags, count in (
            (dict(sample=True, temperature=1.5, seed=3), ("--sample", "--temperature", "1.5", "--seed", "3"), 200),
            (dict(sample=True, temperature=2.0, top_k=5, seed=4), ("--sample", "--temperature", "2", "--top-k", "5",
                                                                    "--seed", "4"), 200),
            (dict(sample=True, temperature=1.5, top_p=0.8, seed=5), ("--sample", "--temperature", "1.5", "--top-p", "0.8",
                                                                      "--seed", "5"), 200),
            (dict(min_len=9), ("--min-len", "9"), 200),
            (dict(beam_size=4, min_len=9), ("--beam", "4", "--min-len", "9"), 60)):
        python = [r.text for r in model.decode(words[:count], **settings)]
        node = [r["output"] for r in node_decode(bundle, words[:count], tmp_path, *flags)]
        assert node == python, settings
        assert sum(a != b for a, b in zip(python, greedy)) > count // 10, settings  # the setting changed the outputs


@needs_node
def test_node_cli_reads_and_numbers_lines_as_seq2edge_decode_does(bundle, tmp_path):
    """Blank lines (Python's whitespace, \\x1c included) skipped but counted, a BOM dropped only at the start,
    carriage returns cut, a line of bad bytes an error of its own: the same records and exit code."""
    path = tmp_path / "lines.txt"
    path.write_bytes(b"\xef\xbb\xbfedge\n\n \t\nonnx\r\r\n\x1c\n\xef\xbb\xbf\nph\xffoneme\nmodel")
    python = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(path), "--format", "jsonl"],
                            capture_output=True, text=True)
    node = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", str(path), "--jsonl"], capture_output=True,
                          text=True)

    def records(proc):
        return [(r["line"], r["input"], r.get("output"), "error" in r) for r in map(json.loads, proc.stdout.splitlines())]

    piped = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "--input", "-", "--jsonl"], input=path.read_bytes(),
                           capture_output=True)
    assert node.returncode == python.returncode == piped.returncode == 1
    assert records(node) == records(python) and piped.stdout.decode() == node.stdout
    assert [line for line, *_ in records(node)] == [1, 4, 6, 7, 8]
    assert 'line 7: "ph\ufffdoneme": not valid UTF-8 (byte 2)' in node.stderr


@needs_node
def test_node_ensemble_decodes_like_the_python_ensemble_greedy_and_beam(bundle, words, tmp_path):
    """Two bundles of different architectures (the LSTM exported here, the shipped GRU small model): at every step
    the log of their mean probability, in greedy and beam search, as runtime/ensemble.py computes it."""
    small = REPO / "models" / "g2p-en-small"
    python = Seq2Seq.load(bundle, providers="cpu", ensemble=[small])
    alone = Seq2Seq.load(bundle, providers="cpu").decode(words[:300])
    greedy = python.decode(words[:300])
    assert [r.text for r in greedy] != [r.text for r in alone]  # the second member changes some outputs
    for backend in ("node", "wasm"):
        records = node_decode(bundle, words[:300], tmp_path, "--ensemble", str(small), "--backend", backend)
        assert [r["output"] for r in records] == [r.text for r in greedy], backend
        np.testing.assert_allclose([r["score"] for r in records], [r.score for r in greedy], atol=1e-4)
    beam = python.decode(words[:60], beam_size=5, nbest=3)
    records = node_decode(bundle, words[:60], tmp_path, "--ensemble", str(small), "--beam", "5", "--nbest", "3")
    for record, result in zip(records, beam, strict=True):
        assert [h["output"] for h in record["nbest"]] == [h.text for h in result.nbest], record["input"]
        np.testing.assert_allclose([h["score"] for h in record["nbest"]], [h.score for h in result.nbest], atol=1e-4)


@needs_node
def test_node_refuses_an_ensemble_whose_members_tokenise_differently_or_a_greedy_graph_for_it(bundle, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(REPO / "models" / "g2p-en-small", other)
    meta = json.loads((other / "bundle.json").read_text())
    vocab = meta["target"]["vocab"]
    vocab[10], vocab[11] = vocab[11], vocab[10]  # the same tokens, other ids
    (other / "bundle.json").write_text(json.dumps(meta))
    for member, flags, message in ((other, (), f"{other}: its target vocabulary or tokeniser differs"),
                                   (REPO / "models" / "g2p-en-small", ("--greedy-graph",), "--greedy-graph decodes one model")):
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "edge", "--ensemble", str(member), *flags],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and proc.stdout == "", proc.stderr
        assert "    at " not in proc.stderr  # one line, no stack trace


@needs_node
def test_node_wasm_and_ort_format_and_int8_equal_python(bundle, words, tmp_path):
    python = [r.text for r in Seq2Seq.load(bundle, providers="cpu").decode(words[:200])]
    for flags in (("--backend", "wasm"), ("--graph-format", "ort"), ("--backend", "wasm", "--graph-format", "ort", "--greedy-graph")):
        assert [r["output"] for r in node_decode(bundle, words[:200], tmp_path, *flags)] == python, flags
    int8 = [r.text for r in Seq2Seq.load(bundle, providers="cpu", precision="int8").decode(words[:200], batch_size=1)]
    records = node_decode(bundle, words[:200], tmp_path, "--precision", "int8", "--batch-size", "1")
    assert [r["output"] for r in records] == int8


@needs_node
def test_node_and_wasm_decode_an_int8_gru_encoder_batched_as_python_does(words, tmp_path):
    """The shipped small model's int8 encoder runs its GRU as a Loop of DynamicQuantizeMatMul for
    batches of 12 and more (export/recurrent_loop.py): onnxruntime-node and -web run that path too.
    Node runs Python's native kernels and gives its tokens exactly. wasm's float kernels round in
    their own way, and the per-batch 8-bit scale of dynamic int8 can turn a last-bit difference
    into another rounding step, so a near tie may flip: 1 of these 400 words (a first phoneme)
    differed on a CPU with AVX-512 VNNI. At most 1% may: integer weights beyond +-64, which
    saturate on CPUs without VNNI, made 28 of 400 differ there, and a Loop that mixes up gates or
    directions changes most words."""
    small = REPO / "models" / "g2p-en-small"
    encoder = onnx.load(str(small / "encoder.int8.onnx"))
    assert "If" in [n.op_type for n in encoder.graph.node]  # so batch 64 takes the Loop
    python = [r.text for r in Seq2Seq.load(small, providers="cpu", precision="int8").decode(words[:400], batch_size=64)]
    node, wasm = (node_decode(small, words[:400], tmp_path, "--precision", "int8", "--batch-size", "64", "--backend", backend)
                  for backend in ("node", "wasm"))
    assert [r["output"] for r in node] == python
    assert sum(r["output"] != p for r, p in zip(wasm, python, strict=True)) <= 4


@needs_node
@pytest.mark.parametrize("fault", list(FAULTS))
def test_node_refuses_every_broken_bundle_python_refuses_in_one_line(tiny_bundle, tmp_path, fault):
    damage, message = FAULTS[fault]
    broken = tmp_path / "copy"
    shutil.copytree(tiny_bundle, broken)
    damage(broken)
    file = message.split(":")[0] if message.split(":")[0].endswith((".json", ".onnx")) else "bundle.json"
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(broken), "edge"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert proc.stderr.count("\n") == 1 and file in proc.stderr and "    at " not in proc.stderr, proc.stderr


@needs_node
def test_node_refuses_a_greedy_graph_from_another_export_and_one_that_is_not_there(tmp_path):
    small, plain = tmp_path / "small", tmp_path / "plain"
    shutil.copytree(REPO / "models" / "g2p-en-small", small)
    shutil.copytree(small, plain)
    meta = json.loads((plain / "bundle.json").read_text())
    for precision in meta["graphs"].values():
        (plain / precision.pop("greedy")["file"]).unlink()
    (plain / "bundle.json").write_text(json.dumps(meta))
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(plain), "--greedy-graph", "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no fp32 greedy graph in this bundle" in proc.stderr
    _claim_another_bundle(small, "greedy.onnx")
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(small), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "greedy.onnx: exported for bundle 0000" in proc.stderr


def _claim_another_bundle(bundle: Path, name: str) -> None:
    """Rewrite a graph's metadata to another bundle id and re-hash it in bundle.json (as a copied-in graph would be)."""
    from seq2edge.runtime.util import sha256_file

    graph = onnx.load(str(bundle / name))
    for prop in graph.metadata_props:
        if prop.key == "seq2edge.bundle_id":
            prop.value = "0" * 32
    onnx.save(graph, str(bundle / name))
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["graphs"]["fp32"]["greedy"]["sha256"] = sha256_file(bundle / name)
    (bundle / "bundle.json").write_text(json.dumps(meta))


@needs_node
def test_node_checks_the_bundle_like_the_python_runtime(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(broken), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "decoder.onnx: sha256 does not match bundle.json" in proc.stderr
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle)], input="edge\ncaf\u00e9\na\u0001b\n", capture_output=True,
                          text=True)
    assert proc.returncode == 1 and proc.stdout.startswith("edge -> ")
    assert "not in the source vocabulary: 'é'" in proc.stderr and "control character U+0001" in proc.stderr


@needs_node
@pytest.mark.parametrize("flags, message", [
    (["--backend", "gpu"], '--backend must be one of node, wasm, not "gpu"'),
    (["--unknown", "drop"], '--unknown must be one of error, unk, skip, not "drop"'),
    (["--batch-size", "0"], "--batch-size must be at least 1, not 0"),
    (["--threads", "two"], '--threads "two" is not an integer'),
    (["--seed", "1.5"], '--seed "1.5" is not an integer'),
    (["--min-len", "5", "--max-len", "3"], "--min-len 5 is greater than --max-len 3"),
    (["--sample", "--top-p", "0"], "0 < topP <= 1"),
    (["--input", "/nonexistent/words.txt"], "/nonexistent/words.txt: cannot read: No such file or directory")])
def test_node_cli_refuses_a_bad_option_in_one_line_with_exit_2(bundle, flags, message):
    texts = [] if "--input" in flags else ["edge"]
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), *flags, *texts], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


@needs_node
def test_node_cli_exits_141_quietly_when_its_reader_goes_away(bundle, words, tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("\n".join(words * 4) + "\n")  # over a pipe's 64 KiB of output
    proc = subprocess.run(f"{NODE} {JS / 'cli.mjs'} {bundle} --input {path} | head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 141 and proc.stdout.count("\n") == 1 and proc.stderr == ""


@needs_node
def test_node_library_refuses_bad_options_by_name(bundle):
    """The library checks what its callers pass (an app, not only the CLI): each a Seq2EdgeError naming the option."""
    script = f"""
import {{ loadBundle }} from {json.dumps(str(JS / "node.mjs"))};
for (const [load, decode] of [[{{ tooLong: "cut" }}, {{}}], [{{ backend: "cuda" }}, {{}}], [{{ threads: 0 }}, {{}}],
                              [{{}}, {{ batchSize: 0 }}], [{{}}, {{ positions: [0, -1] }}], [{{}}, {{ sample: true, seed: 1.5 }}]]) {{
  try {{ await (await loadBundle({json.dumps(str(bundle))}, load)).decode(["edge", "onnx"], decode); console.log("decoded"); }}
  catch (err) {{ console.log(err.constructor.name + ": " + err.message); }}
}}"""
    proc = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == [
        'Seq2EdgeError: tooLong must be one of "error", "truncate", not "cut"',
        'Seq2EdgeError: backend must be one of "node", "wasm", not "cuda"',
        "Seq2EdgeError: threads must be an integer of at least 1, not 0",
        "Seq2EdgeError: batchSize must be an integer of at least 1",
        "Seq2EdgeError: positions must be 2 non-negative integers, one per text",
        "Seq2EdgeError: seed must be an integer"], proc.stderr


def browser_decode(bundle: Path, words: list[str], tmp_path: Path, query: str = "") -> dict:
    """What the browser demo page, serving `bundle`, decodes of `words` in headless Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    import sys

    sys.path.insert(0, str(REPO / "examples" / "web"))
    from serve import serve

    server = serve(port=0, bundle=bundle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "words.json").write_text(json.dumps(words))
        url = f"http://127.0.0.1:{server.server_address[1]}/?bundle=/bundle/{query}"
        proc = subprocess.run([NODE, str(JS / "browser-check.mjs"), url,
                               str(tmp_path / "words.json")], capture_output=True, text=True, timeout=300,
                              env={"CHROMIUM": chromium, "PATH": "/usr/bin:/bin"})
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = json.loads(proc.stdout)
    assert page["status"].startswith("model ready: /bundle/")
    return page


@pytest.mark.requires("node", "chromium")
def test_browser_demo_decodes_like_python_in_headless_chromium(bundle, words, tmp_path):
    """The exported --greedy-graph --ort bundle, its .ort graphs, in the browser page, against Python."""
    page = browser_decode(bundle, words[:250], tmp_path, "&format=ort")
    python = Seq2Seq.load(bundle, providers="cpu").decode(words[:250], errors="return")
    assert [r["text"] for r in page["results"]] == [r.text if r.ok else None for r in python]


@needs_node
def test_node_refuses_a_changed_or_unreadable_sentencepiece_model_in_one_line(spm_corpus, tmp_path):
    import hashlib

    bundle, _ = spm_corpus
    for name, edit, message in (
            ("changed", lambda m: m, "source.spm.model: sha256 does not match bundle.json"),
            ("truncated", lambda m: m.update(spm_sha256=None), "source.spm.model: not a SentencePiece model this host reads")):
        broken = tmp_path / name
        shutil.copytree(bundle, broken)
        model = broken / "source.spm.model"
        model.write_bytes(model.read_bytes()[:-7])
        meta = json.loads((broken / "bundle.json").read_text())
        edit(meta["source"])
        if meta["source"]["spm_sha256"] is None:
            meta["source"]["spm_sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
        (broken / "bundle.json").write_text(json.dumps(meta))
        proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(broken), "ka"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "    at " not in proc.stderr, proc.stderr


@pytest.mark.requires("node", "chromium")
def test_browser_demo_decodes_a_sentencepiece_bundle_like_python(spm_corpus, tmp_path):
    """The page fetches the bundle's .spm.model files and tokenises with hosts/js/sentencepiece.mjs."""
    bundle, inputs = spm_corpus
    page = browser_decode(bundle, inputs, tmp_path)
    python = Seq2Seq.load(bundle, providers="cpu").decode(inputs, errors="return")
    assert [r["text"] for r in page["results"]] == [r.text if r.ok else None for r in python]
    assert sum(r.ok for r in python) == len(inputs) - 2  # the unknown characters fail their inputs in both


@needs_node
def test_node_codec_treats_control_tokens_typed_as_text_as_python_does():
    from seq2edge.runtime import InputError
    from seq2edge.runtime.tokenize import SPECIALS, TextCodec, Vocabulary

    vocab = [*SPECIALS, "a", "b"]
    texts = ["a <pad> b", "<s> a", "</s>", "a <unk>", "<PAD>"]
    codec = TextCodec("word", Vocabulary(vocab), lowercase=True)
    expected = []
    for policy in ("error", "unk", "skip"):
        for text in texts:
            try:
                expected.append(codec.encode(text, policy))
            except InputError:
                expected.append("error")
    script = (f"import {{ TextCodec }} from {json.dumps(str(JS / 'seq2edge.mjs'))};"
              f"const codec = new TextCodec('word', {json.dumps(vocab)}, true); const out = [];"
              f"for (const p of ['error', 'unk', 'skip']) for (const t of {json.dumps(texts)}) {{"
              "try { out.push(codec.encode(t, p)[1]); } catch (e) { out.push('error'); } }"
              "console.log(JSON.stringify(out));")
    proc = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected
    # the control ids never come from text; a typed <unk> is <unk>
    assert expected[:5] == ["error", "error", "error", [4, 3], "error"] and expected[5] == [4, 3, 5]


SPM_PROBES = ["\ufb01ne \ufb02ow", "\uff21\uff22\uff23 \uff46\uff55\uff4c\uff4c", "\u2460\u2461", "a\u00a0b", "a\u3000b",
              "  lead  and   trail  ", "x\u200by", "e\u0301", "\u338f", "\u2026", "\u00bd", "\uff76\uff80\uff76\uff85",
              "\u00df", "\u0130stanbul", "\u00ad", "\U0001f600 emoji", "\U00020000", "zzz qqq", "\u2581", "\u2581\u2581a",
              "<unk>", "a<unk>b", "\u2126 \u03a9", "\u1100\u1161", "\uac00", ""]


def _spm_texts(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyz\u00e4\u00f6\u00fc\u00e9\u00e7\u00f1") + list("\u0391\u0392\u03b1\u03b2\u03b3") \
        + [chr(c) for c in range(0x4E00, 0x4E30)] + list("0123456789.,'-")
    words = ["".join(rng.choice(alphabet, rng.integers(1, 8))) for _ in range(600)]
    return [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(count)]


@needs_node
@pytest.mark.parametrize("options", [{}, {"normalization_rule_name": "identity", "add_dummy_prefix": False},
                                     {"normalization_rule_name": "nmt_nfkc_cf", "remove_extra_whitespaces": False}],
                         ids=["as-seq2edge-trains", "identity-no-prefix", "casefold-keep-spaces"])
def test_node_sentencepiece_splits_and_joins_exactly_like_sentencepiece(options, tmp_path):
    """hosts/js/sentencepiece.mjs against the sentencepiece library: the pieces of typed text (NFKC rules,
    whitespace runs, unknown characters, astral characters) and the text of arbitrary piece sequences.
    First with the model `seq2edge train` writes (train/data.py's train_spm), then with the normaliser
    switches a model can carry."""
    import io

    import sentencepiece

    train = _spm_texts(0, 3000)
    if options:
        blob = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(train), model_writer=blob, vocab_size=300,
                                                 model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                                 bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2, **options)
        (tmp_path / "m.model").write_bytes(blob.getvalue())
    else:
        from seq2edge.train.data import train_spm

        train_spm(train, tmp_path / "m.model", vocab_size=300)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    rng = np.random.default_rng(1)
    texts = SPM_PROBES + _spm_texts(2, 1500) + ["".join(chr(c) for c in rng.integers(0x20, 0x3000, rng.integers(1, 12)))
                                                for _ in range(1500)]
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + ["\u2581", "xyz"]
    sequences = [list(rng.choice(pieces, rng.integers(0, 7))) for _ in range(1500)] + [["\u2581", "\u2581a"], ["<unk>", "a"]]
    (tmp_path / "cases.json").write_text(json.dumps({"texts": texts, "sequences": sequences}))
    script = (f"import {{ readFileSync }} from 'node:fs'; import {{ SentencePiece }} from {json.dumps(str(JS / 'sentencepiece.mjs'))};"
              f"const sp = new SentencePiece(new Uint8Array(readFileSync({json.dumps(str(tmp_path / 'm.model'))})));"
              f"const c = JSON.parse(readFileSync({json.dumps(str(tmp_path / 'cases.json'))}, 'utf8'));"
              "console.log(JSON.stringify([c.texts.map((t) => sp.encode(t)), c.sequences.map((s) => sp.decode(s))]));")
    proc = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    split, joined = json.loads(proc.stdout)
    assert sp.encode("\ufb01ne", out_type=str) != ["\u2581\ufb01ne"]  # the rules apply: the probes test them
    assert [t for t, s in zip(texts, split, strict=True) if s != sp.encode(t, out_type=str)] == []
    assert [q for q, j in zip(sequences, joined, strict=True) if j != sp.decode_pieces(q)] == []


@needs_node
def test_node_sentencepiece_sums_piece_scores_in_float32_as_sentencepiece(tmp_path):
    """sentencepiece adds piece scores in float32: "ab" (the float just below -1) and "a" + "b" (-1 - 1e-7)
    are equal there, and the first path found stays; float64 sums would split the word."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    for piece, score, kind in (("<unk>", 0.0, 2), ("ab", float(np.nextafter(np.float32(-1), np.float32(-2))), 1),
                               ("a", -1.0, 1), ("b", float(np.float32(-1e-7)), 1)):
        model.pieces.add(piece=piece, score=score, type=kind)
    model.normalizer_spec.name, model.normalizer_spec.add_dummy_prefix = "identity", False
    (tmp_path / "tie.model").write_bytes(model.SerializeToString())
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tie.model"))
    texts = ["ab", "abab", "aab", "abba"]
    script = (f"import {{ readFileSync }} from 'node:fs'; import {{ SentencePiece }} from {json.dumps(str(JS / 'sentencepiece.mjs'))};"
              f"const sp = new SentencePiece(new Uint8Array(readFileSync({json.dumps(str(tmp_path / 'tie.model'))})));"
              f"console.log(JSON.stringify({json.dumps(texts)}.map((t) => sp.encode(t))));")
    proc = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [sp.encode(t, out_type=str) for t in texts]
    assert sp.encode("ab", out_type=str) == ["ab"]


@pytest.fixture(scope="module")
def spm_corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """A bundle with spm on both sides, trained and exported through the CLI, and inputs for it."""
    from conftest import SEQ2EDGE

    tmp = tmp_path_factory.mktemp("spm")
    rng = np.random.default_rng(3)
    syllables = ["ka", "to", "mi", "ra", "ne", "su", "lo", "vi", "\u00e7a", "\u00fcn", "\u011f\u0131"]
    lines, inputs = [], []
    for _ in range(1200):
        words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(rng.integers(1, 4))]
        inputs.append(" ".join(words))
        lines.append(inputs[-1] + "\t" + " ".join(w.upper()[::-1] for w in words))
    (tmp / "pairs.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ckpt, bundle = tmp / "ckpt", tmp / "bundle"
    subprocess.run([*SEQ2EDGE, "train", "--corpus", str(tmp / "pairs.tsv"), "--out", str(ckpt), "--src-tokens", "spm",
                    "--tgt-tokens", "spm", "--src-vocab-size", "60", "--tgt-vocab-size", "60", "--embed", "32", "--hidden", "64",
                    "--epochs", "4", "--lr", "0.01", "--batch-size", "32", "--threads", "1"], check=True, capture_output=True)
    subprocess.run([*SEQ2EDGE, "export", str(ckpt), str(bundle), "--parity-words", "60"], check=True, capture_output=True)
    return bundle, inputs[:150] + ["ka  to\u00a0mi", "\uff4b\uff41 to", "ka xq to", "\u00e7a \U0001f600"]


@needs_node
def test_node_decodes_a_sentencepiece_bundle_like_python(spm_corpus, tmp_path):
    """Node (native and wasm) decodes an spm bundle as Python does: greedy and beam n-best, unknown
    characters mapped to <unk> or failing their line."""
    bundle, inputs = spm_corpus
    python = Seq2Seq.load(bundle, providers="cpu", unknown="unk")
    greedy = [r.text for r in python.decode(inputs)]
    assert len(set(greedy)) > 50  # the outputs follow the inputs: a wrong split changes them
    for backend in ("node", "wasm"):
        records = node_decode(bundle, inputs, tmp_path, "--unknown", "unk", "--backend", backend)
        assert [r["output"] for r in records] == greedy, backend
    beam = python.decode(inputs[:60] + inputs[-4:], beam_size=4, nbest=3)
    records = node_decode(bundle, inputs[:60] + inputs[-4:], tmp_path, "--unknown", "unk", "--beam", "4", "--nbest", "3")
    assert [[h["output"] for h in r["nbest"]] for r in records] == [[h.text for h in r.nbest] for r in beam]
    proc = subprocess.run([NODE, str(JS / "cli.mjs"), str(bundle), "ka to", "ka xq"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.startswith(f"ka to -> {python.decode(['ka to'])[0].text}\n")
    assert "ka xq" in proc.stderr and "not in the source vocabulary" in proc.stderr


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_native_host_decodes_ort_format_graphs_byte_for_byte_as_python(bundle, words, tmp_path, precision):
    """The ORT-format copies (export --ort) through hosts/c's seq2edge-c, against the Python CLI (tests/test_native_host.py
    covers the .onnx graphs)."""
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words[:300]) + "\n")
    flags = ["--input", str(path), "--graph-format", "ort", "--precision", precision, "--format", "jsonl", "--threads", "1"]
    python = subprocess.run([*SEQ2EDGE, "decode", str(bundle), *flags], capture_output=True, timeout=300)
    native = subprocess.run([str(REPO / "hosts" / "c" / "build" / "seq2edge-c"), "decode", str(bundle), *flags],
                            capture_output=True, timeout=300)
    assert python.returncode == native.returncode == 0, native.stderr[-2000:]
    assert native.stdout == python.stdout


@needs_node
def test_node_keeps_the_apps_subnormals_after_loading_and_decoding(tmp_path):
    """onnxruntime's set_denormal_as_zero would set flush-to-zero for good on Node's JavaScript thread (where the first
    session is created), and JavaScript cannot set it back: the host leaves the option off."""
    script = tmp_path / "subnormals.mjs"
    script.write_text(
        f'import {{ loadBundle }} from "{(JS / "node.mjs").as_posix()}";\n'
        "const tiny = () => [5e-324][0] * 1.0;\n"
        "if (tiny() === 0) throw new Error('flushed before loading');\n"
        f'const model = await loadBundle("{(REPO / "tests" / "conformance" / "bundles" / "g2p").as_posix()}");\n'
        "if (tiny() === 0) throw new Error('flushed by loading');\n"
        "await model.decode(['edge', 'onnx']);\n"
        "if (tiny() === 0) throw new Error('flushed by decoding');\n")
    proc = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
