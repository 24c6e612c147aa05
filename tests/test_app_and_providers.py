"""The embedding example, execution providers, `seq2edge info` and attention plots."""

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import SEQ2EDGE

from seq2edge.runtime import BundleError, ProviderError, Seq2Seq
from seq2edge.runtime import providers as P
from seq2edge.runtime.cli import cli
from seq2edge.runtime.util import sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import g2p_app  # noqa: E402


def test_example_app_phonemizes_and_serves_http(tiny_bundle, tiny_model):
    phonemizer = g2p_app.Phonemizer(str(tiny_bundle))
    assert phonemizer.phonemes("edge") == tiny_model.decode(["edge"])[0].tokens
    server = g2p_app.make_server(phonemizer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/g2p?word=edge&nbest=2") as response:
            body = json.loads(response.read())
        assert body["word"] == "edge" and len(body["pronunciations"]) == 2
        assert body["pronunciations"][0]["phonemes"] == " ".join(tiny_model.decode(["edge"], beam_size=2)[0].tokens)
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"http://{host}:{port}/g2p?word=caf%C3%A9%E4%B8%AD")
        assert bad.value.code == 400 and "not in the source vocabulary" in json.loads(bad.value.read())["error"]
    finally:
        server.shutdown()


def test_auto_and_cpu_providers_run_on_the_cpu_here(tiny_bundle):
    for spec in ("auto", "cpu", ["CPUExecutionProvider"], [("CPUExecutionProvider", {})]):
        assert Seq2Seq.load(tiny_bundle, providers=spec).providers == ["CPUExecutionProvider"]


def test_unavailable_provider_is_an_error_naming_what_is_available(tiny_bundle):
    with pytest.raises(ProviderError, match="not available here; onnxruntime offers: .*CPUExecutionProvider"):
        Seq2Seq.load(tiny_bundle, providers="cuda")
    with pytest.raises(ProviderError, match="'NoSuchExecutionProvider' is not available"):
        Seq2Seq.load(tiny_bundle, providers=["NoSuchExecutionProvider"])


def test_a_provider_onnxruntime_silently_dropped_is_caught(tiny_bundle):
    """onnxruntime itself falls back to the CPU with only a warning; the runtime's check refuses that."""
    data = (tiny_bundle / "decoder.onnx").read_bytes()
    with pytest.warns(UserWarning):
        session = ort.InferenceSession(data, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ProviderError, match="CUDAExecutionProvider was requested but onnxruntime did not activate it"):
        P.check_active(session, ["CUDAExecutionProvider", "CPUExecutionProvider"], explicit=True, what="decoder.onnx")
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        P.check_active(session, ["CUDAExecutionProvider", "CPUExecutionProvider"], explicit=False, what="decoder.onnx")


def test_session_options_are_applied(tiny_bundle, tiny_model):
    model = Seq2Seq.load(tiny_bundle, providers="cpu", threads=2, optimization="basic")
    options = model.engine.sessions["decoder"].get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert model.decode(["edge"])[0].tokens == tiny_model.decode(["edge"])[0].tokens
    with pytest.raises(ProviderError, match="optimization must be one of"):
        Seq2Seq.load(tiny_bundle, optimization="max")


def test_info_shows_metadata_graph_ports_and_providers(tiny_bundle):
    result = CliRunner().invoke(cli, ["info", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    for text in ("lstm", "dot attention", "encoder.onnx", "src_ids: int64 [batch, src_len]",
                 "log_probs: float [batch,", "providers offered here", "CPUExecutionProvider"):
        assert text in result.output
    report = json.loads(CliRunner().invoke(cli, ["info", str(tiny_bundle), "--json"]).output)
    assert report["onnxruntime"]["problems"] == []
    # both hosts' onnxruntime: Python's, and the JavaScript host's where hosts/js has its packages
    node = Path(__file__).resolve().parents[1] / "hosts" / "js" / "node_modules" / "onnxruntime-node" / "package.json"
    expected = json.loads(node.read_text())["version"] if node.exists() else None
    assert report["onnxruntime"]["hosts"]["onnxruntime-node"] == expected
    assert f"onnxruntime-node {expected or 'not installed here'}" in result.output
    decoder = report["graphs"]["fp32"]["decoder"]
    assert decoder["sha256"] == sha256_file(tiny_bundle / "decoder.onnx")
    assert decoder["sha256_matches_bundle_json"] is True


def test_info_reports_a_graph_whose_sha256_does_not_match(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(cli, ["info", str(bundle)], catch_exceptions=True)
    assert "decoder.onnx" in result.output and "DOES NOT MATCH bundle.json" in result.output
    assert "encoder.onnx" in result.output and "(matches bundle.json)" in result.output
    assert isinstance(result.exception, BundleError) and "decoder.onnx: sha256 does not match" in str(result.exception)


def test_cuda_probe_graph_is_the_graph_onnx_builds():
    import onnx
    from onnx import TensorProto, helper

    from seq2edge.runtime.info import IDENTITY_GRAPH

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.checker.check_model(model)
    assert model.SerializeToString() == IDENTITY_GRAPH


def test_plot_attention_draws_a_png_per_input(tiny_bundle, tmp_path):
    out = tmp_path / "attn.png"
    result = CliRunner().invoke(cli, ["decode", str(tiny_bundle), "edge", "onnx", "--plot-attention", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("attn-1.png", "attn-2.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    single = tmp_path / "one.png"
    CliRunner().invoke(cli, ["decode", str(tiny_bundle), "edge", "--plot-attention", str(single)])
    assert single.exists()
    # one stdin line is a single input too: FILE, not FILE-1
    line = tmp_path / "line.png"
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--plot-attention", str(line)], input="edge\n",
                          capture_output=True, text=True)
    assert proc.returncode == 0 and line.exists() and not (tmp_path / "line-1.png").exists()
    two = tmp_path / "two.png"
    subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--plot-attention", str(two)], input="edge\n\nonnx\n", text=True, check=True)
    assert sorted(p.name for p in tmp_path.glob("two*")) == ["two-1.png", "two-3.png"]


def test_plot_attention_names_characters_the_font_cannot_draw(tmp_path):
    """Tokens of a script matplotlib's font lacks (CJK in DejaVu Sans) are labelled U+XXXX, not drawn as
    empty boxes with a warning per glyph."""
    import types
    import warnings

    import matplotlib
    import numpy as np

    from seq2edge.runtime.plot import _glyph_check, plot_attention

    drawable = _glyph_check(matplotlib)
    assert [drawable(t) for t in ("\u4e00", "zu3", "a\u4e00\u4e8cb", "</s>")] == ["U+4E00", "zu3", "a U+4E00 U+4E8C b", "</s>"]
    result = types.SimpleNamespace(input="\u4e00\u4e8c", tokens=["yi1", "er4"], source_tokens=["\u4e00", "\u4e8c"],
                                   attention=np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_attention(result, tmp_path / "cjk.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_options_map_onto_the_api(tiny_bundle, tiny_model):
    words = ["edge", "attention", "onnx"]
    cases = [
        (["--beam", "3"], dict(beam_size=3)),
        (["--io-binding", "--optimization", "basic"], dict()),
        (["--sample", "--seed", "4", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9"],
         dict(sample=True, seed=4, temperature=0.7, top_k=5, top_p=0.9)),
        (["--max-len", "2", "--batch-size", "1"], dict(max_len=2, batch_size=1)),
        (["--min-len", "4", "--beam", "2", "--length-penalty", "1.0"], dict(min_len=4, beam_size=2, length_penalty=1.0)),
    ]
    for args, kwargs in cases:
        out = CliRunner().invoke(cli, ["decode", str(tiny_bundle), "--format", "tsv", "--threads", "1", "--provider", "cpu",
                                       *args, *words])
        assert out.exit_code == 0, out.output
        expected = [f"{r.input}\t{r.text}" for r in tiny_model.decode(words, **kwargs)]
        assert out.output.splitlines() == expected, args


def test_sessions_flush_subnormal_floats_to_zero(monkeypatch):
    from seq2edge.runtime import providers

    assert providers.session_options(1).get_session_config_entry("session.set_denormal_as_zero") == "1"
    monkeypatch.setattr(providers, "FLUSH_SUBNORMALS", False)  # what the benchmark's "kept" column runs
    with pytest.raises(Exception, match="set_denormal_as_zero"):
        providers.session_options(1).get_session_config_entry("session.set_denormal_as_zero")
