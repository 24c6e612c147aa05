"""The native host (hosts/c/, built by `make c`): the conformance corpus through its C API, its CLI against the Python
CLI byte for byte, several threads on one model, the embedding example, and hostile bundles that never crash it.

The library is driven from Python with ctypes (hosts/c/examples/seq2edge_ctypes.py), as an app in another language
would drive it; the CLI runs as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import REPO, SEQ2EDGE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(REPO / "tests" / "conformance"))
sys.path.insert(0, str(REPO / "hosts" / "c" / "examples"))
from make_corpus import BUNDLES, CASES, CONTRACT_INPUTS, damage, normalise  # noqa: E402
from seq2edge_ctypes import NativeError, NativeModel  # noqa: E402
from test_conformance import assert_results  # noqa: E402

BUILD = REPO / "hosts" / "c" / "build"
LIBRARY = BUILD / "libseq2edge.so"
CLI = BUILD / "seq2edge-c"
ALL = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines()]
# The draws of sampling are internal to the library; its sampling cases hold it to them.
CORPUS = [c for c in ALL if c["kind"] != "draw"]


@pytest.fixture(scope="module", autouse=True)
def built():
    assert LIBRARY.exists() and CLI.exists(), "the native host is not built: run make c (make test builds it)"


def load(bundle: Path, **options) -> NativeModel:
    return NativeModel(str(bundle), str(LIBRARY), threads=1, **options)


def results(model: NativeModel, inputs: list[str], options: dict) -> list[dict]:
    out = []
    for r in model.decode(inputs, **options):
        if "error" in r:
            out.append({"error": normalise(r["error"])})
        else:
            out.append({"hypotheses": [{"text": h["text"], "tokens": h["tokens"], "score": h["score"]} for h in r["nbest"]]})
    return out


LOAD = {"precision": "precision", "unknown": "unknown", "too_long": "too_long", "greedy_graph": "greedy_graph"}


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_the_native_host_gives_the_conformance_corpus(case):
    if case["kind"] == "decode":
        options = {LOAD[k]: v for k, v in case["load"].items() if k != "ensemble"}
        model = load(BUNDLES / case["bundle"], ensemble=tuple(str(BUNDLES / b) for b in case["load"].get("ensemble", [])), **options)
        assert_results(results(model, case["inputs"], case["options"]), case["expect"])
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(BUNDLES / case["bundle"], bundle)
        damage(bundle, case["damage"])
        try:
            model = load(bundle)
        except NativeError as exc:
            assert {"class": exc.kind, "message": normalise(str(exc))} == case["expect"]
            return
        assert "class" not in case["expect"], f"the damaged bundle loaded; Python refused it: {case['expect']}"
        info = json.loads(model.info())
        assert info["model"] == case["expect"]["model"] and info["conventions"] == case["expect"]["conventions"]
        assert_results(results(model, CONTRACT_INPUTS[case["bundle"]], {}), case["expect"]["results"])


# ---------------------------------------------------------------- the CLI, byte for byte


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> Path:
    from seq2edge.train import corpus as C

    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][:400]
    path = tmp_path_factory.mktemp("native") / "in.txt"
    odd = ["xyz1", "", "   ", "caf\u00e9", "EDGE", "\ufeffedge", "a" * 80, "tab\there", "q\x01q"]
    path.write_bytes(("\ufeff" + "\n".join(words[:200] + odd + words[200:])).encode() + b"\n\xff\xfeedge\r\nend\n")
    return path


@pytest.mark.parametrize("flags", [
    ["--format", "jsonl"],
    ["--format", "text", "--beam", "4", "--nbest", "3"],
    ["--format", "jsonl", "--beam", "3", "--nbest", "2", "--length-penalty", "1.0"],
    ["--format", "tsv", "--precision", "int8", "--batch-size", "7"],
    ["--format", "jsonl", "--sample", "--seed", "5", "--top-k", "4", "--temperature", "0.7"],
    ["--format", "jsonl", "--too-long", "truncate", "--unknown", "skip", "--min-len", "3"],
    ["--format", "text", "--greedy-graph", "--max-len", "4"],
], ids=lambda flags: " ".join(flags))
def test_the_native_cli_writes_the_python_clis_records_and_exit_codes(lines, tmp_path, flags):
    bundle = BUNDLES / "g2p"
    python = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(lines), "--threads", "1", *flags],
                            capture_output=True, timeout=300)
    native = subprocess.run([str(CLI), "decode", str(bundle), "--input", str(lines), "--threads", "1", *flags],
                            capture_output=True, timeout=300)
    assert python.returncode == 1  # the input holds lines no model takes
    assert native.returncode == python.returncode, native.stderr.decode()[-2000:]
    assert native.stdout == python.stdout
    assert native.stderr == python.stderr


def test_the_native_cli_writes_output_files_whole_and_fails_a_bad_bundle_with_exit_2(lines, tmp_path):
    out = tmp_path / "out.jsonl"
    native = subprocess.run([str(CLI), "decode", str(BUNDLES / "g2p"), "--input", str(lines), "--output", str(out),
                             "--format", "jsonl"], capture_output=True, timeout=300)
    assert native.returncode == 1 and out.exists() and not list(tmp_path.glob(".*.partial"))
    assert len(out.read_bytes().splitlines()) == sum(1 for line in lines.read_bytes().splitlines() if line.strip(b" \t\r\xef\xbb\xbf"))
    broken = tmp_path / "broken"
    shutil.copytree(BUNDLES / "g2p", broken)
    (broken / "decoder.onnx").unlink()
    for command in ([str(CLI), "decode", str(broken), "edge"], [str(CLI), "decode", str(BUNDLES / "g2p"), "edge", "--beam", "0"],
                    [str(CLI), "decode", str(BUNDLES / "g2p"), "edge", "--nbest", "2"], [str(CLI), "decode"]):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, (command, proc.stderr)
    proc = subprocess.run([str(CLI), "decode", str(broken), "edge"], capture_output=True, text=True, timeout=60)
    assert proc.stderr.count("\n") == 1 and "decoder.onnx: missing from the bundle" in proc.stderr


# ---------------------------------------------------------------- an app's use: threads, the embedding example


def test_one_loaded_model_decodes_from_several_threads_at_once():
    from seq2edge.train import corpus as C

    words = [e.source for e in C.split(C.load_cmudict().entries, "test")][:300]
    model = load(BUNDLES / "g2p")
    alone = [model.decode(words, batch_size=b) for b in (1, 16)]
    found: dict = {}

    def work(i: int) -> None:
        found[i] = model.decode(words, batch_size=(1, 16)[i % 2])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(found[i] == alone[i % 2] for i in range(6))


def test_the_embedding_example_compiles_against_the_installed_header_and_decodes(tmp_path):
    program = tmp_path / "embed"
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-o", str(program), str(REPO / "hosts" / "c" / "examples" / "embed.c"),
                    f"-I{BUILD}", f"-L{BUILD}", "-lseq2edge", f"-Wl,-rpath,{BUILD}"], check=True, timeout=120)
    proc = subprocess.run([str(program), str(BUNDLES / "g2p"), "edge", "q1q"], capture_output=True, text=True, timeout=60)
    python = subprocess.run([*SEQ2EDGE, "decode", str(BUNDLES / "g2p"), "edge"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == python.stdout.strip()
    assert proc.stdout.splitlines()[1].startswith("q1q -> (error: 'q1q': not in the source vocabulary: '1'")
    bad = subprocess.run([str(program), str(tmp_path), "edge"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith(f"{tmp_path}/bundle.json: missing from the bundle")


def test_the_library_exports_only_its_c_api():
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(LIBRARY)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    header = (REPO / "hosts" / "c" / "include" / "seq2edge.h").read_text()
    assert exported and all(name.startswith("s2e_") for name in exported), sorted(exported)
    assert all(name in header for name in exported)


# ---------------------------------------------------------------- hostile bundles never crash it


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["g2p", "growing"]), target=st.sampled_from(["bundle.json", "decoder.onnx", "encoder.onnx"]),
       where=st.floats(0, 1), bytes_=st.binary(min_size=1, max_size=16), cut=st.booleans())
def test_a_damaged_bundle_is_refused_in_one_line_or_decodes_never_a_crash(name, target, where, bytes_, cut):
    """The g2p bundle, and the growing one: its listed state (bundle.json's list, the graphs' state ports) too."""
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(BUNDLES / name, bundle)
        path = bundle / target
        data = bytearray(path.read_bytes())
        at = int(where * (len(data) - 1))
        data[at:at + len(bytes_)] = bytes_
        path.write_bytes(bytes(data[:at + len(bytes_)]) if cut else bytes(data))
        if target != "bundle.json":  # past the sha256 check, so that the graph reader itself meets the damage
            meta = json.loads((bundle / "bundle.json").read_text())
            import hashlib

            meta["graphs"]["fp32"][target.split(".")[0]]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            (bundle / "bundle.json").write_text(json.dumps(meta))
        proc = subprocess.run([str(CLI), "decode", str(bundle), "edge"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert proc.returncode in (0, 1, 2), proc.stderr[-2000:]  # a signal is a negative code
        if proc.returncode == 2:
            assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("seq2edge-c: error: "), proc.stderr


def test_loading_and_decoding_leave_the_callers_floating_point_environment_as_it_was():
    """onnxruntime flushes subnormals on the thread that creates the first session of a process and never undoes it;
    the library flushes them only while onnxruntime computes, so an app's own arithmetic keeps its subnormals."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from seq2edge_ctypes import NativeModel\n"
            "tiny = lambda: float.fromhex('0x1p-1074') * 1.0\n"
            "assert tiny() > 0\n"
            "model = NativeModel(sys.argv[2], sys.argv[3], threads=1)\n"
            "assert tiny() > 0, 'flushed by loading'\n"
            "model.decode(['edge', 'onnx'])\n"
            "assert tiny() > 0, 'flushed by decoding'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "hosts" / "c" / "examples"), str(BUNDLES / "g2p"), str(LIBRARY)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_native_cli_answers_each_line_of_a_live_stream_before_it_ends():
    """A pipe that stays open (an app feeding words as they come): what arrived is decoded after a short pause, as
    the Python CLI does, instead of waiting for 4,096 lines or the end of the stream."""
    import select

    proc = subprocess.Popen([str(CLI), "decode", str(BUNDLES / "g2p"), "--format", "jsonl"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for word in ("edge", "onnx"):
            proc.stdin.write(f"{word}\n".encode())
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, f"no answer to {word!r} while the stream stays open"
            assert json.loads(proc.stdout.readline())["input"] == word
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_a_sigkilled_native_cli_keeps_every_finished_chunk_in_its_partial_file(lines, tmp_path):
    """seq2edge-c --output writes .FILE.partial and syncs each 4,096-line chunk: a kill -9 at any moment leaves complete
    records that begin the uninterrupted run's output, and nothing under FILE's own name."""
    import random
    import signal
    import time

    from seq2edge.train import corpus as C

    words = [e.source for e in C.split(C.load_cmudict().entries, "test")]
    path = tmp_path / "in.txt"
    path.write_text("\n".join((words * 3)[:12000]) + "\n")
    whole = tmp_path / "whole.jsonl"
    command = [str(CLI), "decode", str(BUNDLES / "g2p"), "--input", str(path), "--format", "jsonl", "--threads", "1"]
    started = time.monotonic()
    assert subprocess.run([*command, "--output", str(whole)], timeout=300).returncode == 0
    length = time.monotonic() - started
    rng = random.Random(5)
    kept_some = False
    for n, moment in enumerate(sorted(rng.uniform(0.05, length) for _ in range(4))):
        out = tmp_path / f"out-{n}.jsonl"
        partial = out.with_name(f".{out.name}.partial")
        proc = subprocess.Popen([*command, "--output", str(out)])
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists() or out.read_bytes() == whole.read_bytes()
        if partial.exists():
            kept = partial.read_bytes()
            complete = kept[: kept.rfind(b"\n") + 1]
            assert whole.read_bytes().startswith(complete)
            kept_some = kept_some or bool(complete)
    # the last moment is near the end of the run, after at least one of the three chunks
    assert kept_some or any(tmp_path.glob("out-*.jsonl")), "no kill landed after a chunk was written"
