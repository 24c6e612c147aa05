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
from conftest import REPO

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C

JS = REPO / "hosts" / "js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None or not (JS / "node_modules" / "onnxruntime-node").exists(),
                                reason="LOUD SKIP: Node.js or hosts/js/node_modules is missing; run `make js` (needs npm)")


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
    figures = json.loads((bundle / "bundle.json").read_text())["parity"]["fp32"]["greedy_graph"]
    assert figures["batched_speedup"] > 0  # measured by export, one thread, batch 64
    for speedup, used_on_batches in ((1.0, False), (2.0, True)):
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
    for flags in (("--backend", "wasm"), ("--format", "ort"), ("--backend", "wasm", "--format", "ort", "--greedy-graph")):
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


def test_browser_demo_decodes_like_python_in_headless_chromium(bundle, words, tmp_path):
    """The exported --greedy-graph --ort bundle, its .ort graphs, in the browser page, against Python."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if NODE is None or chromium is None or not (JS / "node_modules" / "playwright-core").exists():
        pytest.skip("LOUD SKIP: the browser test needs Debian's chromium (.ci/run installs it) and `make js`")
    import sys

    sys.path.insert(0, str(REPO / "examples" / "web"))
    from serve import serve

    server = serve(port=0, bundle=bundle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "words.json").write_text(json.dumps(words[:250]))
        url = f"http://127.0.0.1:{server.server_address[1]}/?bundle=/bundle/&format=ort"
        proc = subprocess.run([NODE, str(JS / "browser-check.mjs"), url,
                               str(tmp_path / "words.json")], capture_output=True, text=True, timeout=300,
                              env={"CHROMIUM": chromium, "PATH": "/usr/bin:/bin"})
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = json.loads(proc.stdout)
    assert page["status"].startswith("model ready: /bundle/")
    python = Seq2Seq.load(bundle, providers="cpu").decode(words[:250], errors="return")
    assert [r["text"] for r in page["results"]] == [r.text if r.ok else None for r in python]


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
