"""`seq2edge decode` as a line filter and a bulk job: streams, BOMs, signals, --resume, exit codes, messages."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SEQ2EDGE

from seq2edge.train import corpus as C


@pytest.fixture(scope="module")
def words() -> list[str]:
    """CMUdict headwords made only of letters (in every tiny model's vocabulary)."""
    return [e.source for e in C.load_cmudict().entries if e.source.isalpha()]


def decode(bundle, *args, **kwargs):
    return subprocess.run([*SEQ2EDGE, "decode", str(bundle), *map(str, args)], capture_output=True, text=True, **kwargs)


def test_a_utf8_bom_is_stripped_from_an_input_file_and_stdin(tiny_bundle, tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffedge\nonnx\n".encode())
    plain = decode(tiny_bundle, "edge", "onnx").stdout
    assert decode(tiny_bundle, "--input", path).stdout == plain
    proc = decode(tiny_bundle, input="\ufeffedge\nonnx\n")
    assert proc.returncode == 0 and proc.stdout == plain


def test_dash_means_stdin_and_stdout(tiny_bundle):
    proc = decode(tiny_bundle, "--input", "-", "--output", "-", input="edge\n")
    assert proc.returncode == 0 and proc.stdout.startswith("edge -> ")


def test_a_pipe_gets_each_result_as_soon_as_its_line_arrives(tiny_bundle):
    proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("edge\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 30)  # start-up included; the input stays open
        assert ready, "no result while the input pipe stayed open"
        assert proc.stdout.readline().startswith("edge -> ")
        proc.stdin.write("onnx\n")
        proc.stdin.close()
        assert proc.stdout.readline().startswith("onnx -> ")
    finally:
        proc.kill()
        proc.wait()


def test_a_closed_output_pipe_exits_141_quietly(tiny_bundle, tmp_path, words):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(words[:20000]) + "\n")
    proc = subprocess.run(f"{' '.join(SEQ2EDGE)} decode {tiny_bundle} --input {path} | head -1; exit ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True)
    assert proc.returncode == 141 and proc.stdout.count("\n") == 1 and proc.stderr == ""


def test_sampling_draws_follow_line_numbers_not_how_the_input_arrived(tiny_bundle, tmp_path, words):
    """One file read whole, the same lines through a pipe one at a time (each its own chunk), and the file
    with bad bytes in place of its first line: every line samples the same output, decode()'s for the
    texts at those positions."""
    chosen, flags = words[:6], ["--sample", "--temperature", "3", "--seed", "5", "--format", "jsonl"]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(chosen) + "\n")
    whole = [json.loads(line)["output"] for line in decode(tiny_bundle, "--input", path, *flags).stdout.splitlines()]
    proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle), *flags], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    piped = []
    for word in chosen:  # the next line only once the last one's result is out: one chunk per line
        proc.stdin.write(word + "\n")
        proc.stdin.flush()
        piped.append(json.loads(proc.stdout.readline())["output"])
    proc.stdin.close()
    assert proc.wait() == 0 and piped == whole
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\n" + path.read_bytes().split(b"\n", 1)[1])
    proc = decode(tiny_bundle, "--input", bad, *flags)
    assert proc.returncode == 1 and [json.loads(line).get("output") for line in proc.stdout.splitlines()] == [None, *whole[1:]]
    from seq2edge.runtime import Seq2Seq

    api = Seq2Seq.load(tiny_bundle, providers="cpu").decode(chosen, sample=True, temperature=3, seed=5)
    assert [r.text for r in api] == whole and len(set(whole)) > 1


def test_min_len_over_max_len_is_a_usage_error(tiny_bundle):
    proc = decode(tiny_bundle, "edge", "--min-len", "5", "--max-len", "3")
    assert proc.returncode == 2 and "--min-len 5 is greater than --max-len 3" in proc.stderr


def test_progress_on_stdin_counts_without_a_total(tiny_bundle):
    proc = decode(tiny_bundle, "--progress", input="edge\nonnx\n")
    assert proc.returncode == 0 and "decoding: 2 inputs (length unknown)" in proc.stderr


def test_truncation_names_the_real_line_and_is_flagged_in_jsonl(tiny_bundle, tmp_path, words):
    lines = words[:5003]
    lines[5000] = "a" * 100  # line 5001, past the first 4096-line chunk
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    proc = decode(tiny_bundle, "--input", path, "--too-long", "truncate", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "seq2edge: line 5001: truncated from 100 to 32 source tokens (--too-long truncate)"]
    record = json.loads(proc.stdout.splitlines()[5000])
    assert record["line"] == 5001 and record["source_truncated_from"] == 100
    assert "source_truncated_from" not in json.loads(proc.stdout.splitlines()[0])


def test_cli_messages_name_the_cli_options(tiny_bundle):
    proc = decode(tiny_bundle, "caf\u00e9", "a" * 100)
    assert proc.returncode == 1
    assert "(to decode it anyway: --unknown unk or --unknown skip)" in proc.stderr
    assert "(to decode it anyway: --too-long truncate)" in proc.stderr
    assert "=" not in proc.stderr


def _kill_mid_file(bundle, path, out, fmt, sig):
    """Signal a decode once its output file has lines. The decode starts with Ctrl-C's default
    disposition even where this test runs with SIGINT ignored (a shell's background job, nohup),
    which the child would inherit: the test is about what decode does when Ctrl-C reaches it."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([*SEQ2EDGE, "decode", str(bundle), "--input", str(path), "--output", str(out), "--format", fmt],
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, saved)
    deadline = time.monotonic() + 60
    while not (out.parent / f".{out.name}.partial").exists() or os.path.getsize(out.parent / f".{out.name}.partial") == 0:
        assert time.monotonic() < deadline and proc.poll() is None, "decode finished or never started writing"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


@pytest.mark.parametrize("sig, code, fmt", [(signal.SIGTERM, 143, "jsonl"), (signal.SIGINT, 130, "text")])
def test_a_killed_run_keeps_its_finished_lines_and_resume_completes_it_byte_identically(tiny_bundle, tmp_path, words, sig,
                                                                                        code, fmt):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(words[:12000]) + "\n")
    whole = tmp_path / f"whole.{fmt}"
    assert decode(tiny_bundle, "--input", path, "--output", whole, "--format", fmt).returncode == 0
    out = tmp_path / f"out.{fmt}"
    returncode, stderr = _kill_mid_file(tiny_bundle, path, out, fmt, sig)
    assert returncode == code and "Traceback" not in stderr and "--resume continues" in stderr
    kept = out.read_bytes()
    assert 0 < len(kept) < len(whole.read_bytes()) and whole.read_bytes().startswith(kept)
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.partial"))
    proc = decode(tiny_bundle, "--input", path, "--output", out, "--format", fmt, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == whole.read_bytes()


def test_resume_drops_a_half_written_last_line_and_stale_temporaries_go(tiny_bundle, tmp_path, words):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(words[:12000]) + "\n")
    whole = tmp_path / "whole.jsonl"
    assert decode(tiny_bundle, "--input", path, "--output", whole, "--format", "jsonl").returncode == 0
    out = tmp_path / "out.jsonl"
    assert _kill_mid_file(tiny_bundle, path, out, "jsonl", signal.SIGTERM)[0] == 143
    kept = out.read_bytes()
    out.write_bytes(kept + whole.read_bytes()[len(kept):][:10])  # as if killed outright while writing the next line
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".out.jsonl.{dead}.tmp").write_text("left by a run killed with SIGKILL")
    proc = decode(tiny_bundle, "--input", path, "--output", out, "--format", "jsonl", "--resume")
    assert proc.returncode == 0 and out.read_bytes() == whole.read_bytes()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.decode.json"))


def test_two_workers_write_the_same_bytes_as_one_with_the_same_errors(tiny_bundle, tmp_path, words):
    lines = words[:9000]
    lines[10], lines[5000], lines[8999] = "caf\u00e9", "", "a" * 100  # bad lines in several chunks (line 5001 is blank)
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    runs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"out{workers}.jsonl"
        proc = decode(tiny_bundle, "--input", path, "--output", out, "--format", "jsonl", "--workers", workers)
        runs[workers] = (proc.returncode, proc.stderr, out.read_bytes())
    assert runs["1"] == runs["2"]
    code, stderr, _ = runs["2"]
    assert code == 1 and "line 11: " in stderr and "line 9000: " in stderr and "line 5001" not in stderr
    assert decode(tiny_bundle, "edge", "--workers", "0").returncode == 2


def _spawned_workers(pid: int) -> set[int]:
    """The live children of `pid` that multiprocessing spawned (their command line runs spawn_main)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return set()
    found = set()
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from Linux's /proc")
def test_two_workers_are_two_processes(tiny_bundle, tmp_path, words):
    """--workers 2 decodes in two spawned processes (an in-process fallback would give the same bytes)."""
    path = tmp_path / "in.txt"
    path.write_text("\n".join(words[:9000] * 3) + "\n")
    proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle), "--input", str(path), "--output", str(tmp_path / "out.txt"),
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: set[int] = set()
    while proc.poll() is None:
        seen |= _spawned_workers(proc.pid)
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert len(seen) == 2, seen


def test_a_tsv_column_is_decoded_and_the_line_written_back_with_the_output(tiny_bundle, tmp_path, tiny_model):
    path = tmp_path / "table.tsv"
    path.write_text("1\tedge\tnoun\n2\tonnx\n3\n")
    proc = decode(tiny_bundle, "--input", path, "--input-format", "tsv", "--column", "2")
    assert proc.returncode == 1 and "line 3: has 1 column(s), --column 2 asked for" in proc.stderr
    edge, onnx = (r.text for r in tiny_model.decode(["edge", "onnx"]))
    assert proc.stdout.splitlines() == [f"1\tedge\tnoun\t{edge}", f"2\tonnx\t{onnx}", "3\t"]
    proc = decode(tiny_bundle, "--input", path, "--input-format", "tsv", "--column", "2", "--format", "jsonl")
    first = json.loads(proc.stdout.splitlines()[0])
    assert first["input"] == "edge" and first["columns"] == ["1", "edge", "noun"] and first["output"] == edge
    assert decode(tiny_bundle, "edge", "--column", "2").returncode == 2  # --column needs --input-format tsv
