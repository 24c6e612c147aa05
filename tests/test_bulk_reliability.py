"""The second reliability battery (docs/reliability.md): worker processes that die or outlive their parent,
--resume given a file it must not continue, outputs that are not plain files, int8 results that moved with
the thread count, search settings that never end, and API settings of the wrong type."""

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO, SEQ2EDGE

from seq2edge.runtime.errors import OptionError, Seq2EdgeError
from seq2edge.runtime.options import SearchOptions
from seq2edge.train import corpus as C

SMALL = REPO / "models" / "g2p-en-small"


@pytest.fixture(scope="module")
def words() -> list[str]:
    return [e.source for e in C.load_cmudict().entries if e.source.isalpha()]


def decode(bundle, *args, **kwargs):
    return subprocess.run([*SEQ2EDGE, "decode", str(bundle), *map(str, args)], capture_output=True, text=True, **kwargs)


def _workers_of(pid: int) -> list[int]:
    """The worker processes of a decode: its children started by multiprocessing's spawn."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")]


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------- worker processes


def test_a_killed_worker_is_one_line_keeps_every_finished_line_and_resume_completes_it(tiny_bundle, tmp_path, words):
    path = tmp_path / "in.txt"
    path.write_text("\n".join((words * 2)[:60000]) + "\n")
    whole = tmp_path / "whole.txt"
    assert decode(tiny_bundle, "--input", path, "--output", whole, "--workers", "1").returncode == 0
    out = tmp_path / "out.txt"
    proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle), "--input", str(path), "--output", str(out), "--workers", "2"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in tmp_path.glob(".out.txt.partial")):  # the first chunk is written
        assert time.monotonic() < deadline and proc.poll() is None, "decode finished or never started writing"
        time.sleep(0.02)
    os.kill(_workers_of(proc.pid)[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and stderr.count("\n") == 1, stderr
    assert "was killed by signal 9 while decoding lines" in stderr and "--resume continues" in stderr
    kept = out.read_bytes()
    assert 0 < len(kept) < whole.stat().st_size and whole.read_bytes().startswith(kept)
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob(".*.partial"))
    assert decode(tiny_bundle, "--input", path, "--output", out, "--workers", "2", "--resume").returncode == 0
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("workers, fmt", [("1", "jsonl"), ("2", "text")])
def test_sigkill_at_any_moment_loses_no_finished_chunk_and_resume_completes_it_byte_identically(tiny_bundle, tmp_path, words,
                                                                                                 workers, fmt):
    """An OOM kill, a kill -9: finished chunks are on disk in .FILE.partial, nothing half-written shows under FILE's name,
    and --resume drops a torn last record and continues to the uninterrupted run's bytes. Five moments each, three drawn
    over the length of an uninterrupted run (start-up included), so that kills land before, between and inside chunks, two of
    them just after a chunk reached the disk."""
    import random

    path = tmp_path / "in.txt"
    path.write_text("\n".join((words * 2)[:14000]) + "\n")  # four chunks
    whole = tmp_path / f"whole.{fmt}"
    started = time.monotonic()
    assert decode(tiny_bundle, "--input", path, "--output", whole, "--format", fmt, "--workers", workers).returncode == 0
    length = time.monotonic() - started
    rng = random.Random(int(workers))
    kept_some = 0
    at_times = sorted(rng.uniform(0.2, length) for _ in range(3))
    after_a_chunk = [rng.uniform(0, 0.05) for _ in range(2)]  # so that some kills land after a chunk on any machine
    for n, (moment, waits_for_chunk) in enumerate([(m, False) for m in at_times] + [(m, True) for m in after_a_chunk]):
        out = tmp_path / f"out-{n}.{fmt}"
        partial = out.with_name(f".{out.name}.partial")
        proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle), "--input", str(path), "--output", str(out), "--format", fmt,
                                 "--workers", workers], stderr=subprocess.DEVNULL)
        if waits_for_chunk:
            deadline = time.monotonic() + 120
            while proc.poll() is None and b"\n" not in (partial.read_bytes() if partial.exists() else b""):
                assert time.monotonic() < deadline, "decode never wrote a chunk"
                time.sleep(0.005)
        time.sleep(moment)
        children = _workers_of(proc.pid) if proc.poll() is None else []
        proc.kill()
        proc.wait()
        for child in children:  # as an OOM kill of the whole process group would
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        assert not out.exists() or out.read_bytes() == whole.read_bytes()  # finished before the kill, or not there at all
        if partial.exists():
            kept = partial.read_bytes()
            complete = kept[: kept.rfind(b"\n") + 1]
            assert whole.read_bytes().startswith(complete)
            kept_some += bool(complete)
        proc = decode(tiny_bundle, "--input", path, "--output", out, "--format", fmt, "--workers", workers, "--resume")
        assert proc.returncode == 0, proc.stderr
        assert out.read_bytes() == whole.read_bytes() and not partial.exists()
        assert not out.with_name(f".{out.name}.decode.json").exists()
    assert kept_some, "no kill landed after a chunk was written: the moments are too early for this machine"


def test_resume_continues_a_killed_runs_partial_file_after_its_torn_last_record(tiny_bundle, tmp_path, words):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(words[:9000]) + "\n")
    whole = tmp_path / "whole.jsonl"
    assert decode(tiny_bundle, "--input", path, "--output", whole, "--format", "jsonl").returncode == 0
    out = tmp_path / "out.jsonl"
    lines = whole.read_bytes().split(b"\n")
    # as a run killed outright leaves it: its settings record, 5,000 records and the start of the next
    decode(tiny_bundle, "--input", path, "--output", tmp_path / "settings.jsonl", "--format", "jsonl")
    (tmp_path / ".out.jsonl.partial").write_bytes(b"\n".join(lines[:5000]) + b"\n" + lines[5000][:17])
    settings = json.loads(json.dumps({"written_by": "seq2edge decode", "settings": _settings_of(tiny_bundle, path, tmp_path)}))
    (tmp_path / ".out.jsonl.decode.json").write_text(json.dumps(settings))
    proc = decode(tiny_bundle, "--input", path, "--output", out, "--format", "jsonl", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == whole.read_bytes()


def _settings_of(bundle, path, tmp_path) -> dict:
    """The settings record a decode of `path` into jsonl writes (read from a run stopped by SIGTERM)."""
    from test_decode_cli import _kill_mid_file

    out = tmp_path / "stopped.jsonl"
    assert _kill_mid_file(bundle, path, out, "jsonl", signal.SIGTERM)[0] == 143
    return json.loads((tmp_path / ".stopped.jsonl.decode.json").read_text())["settings"]


def test_workers_stream_a_pipe_and_exit_when_their_parent_is_killed(tiny_bundle):
    proc = subprocess.Popen([*SEQ2EDGE, "decode", str(tiny_bundle), "--workers", "2"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("edge\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # start-up included; the input stays open
        assert ready, "no result while the input pipe stayed open: the workers waited for the end of input"
        assert proc.stdout.readline().startswith("edge -> ")
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while not all(_ended(w) for w in workers):
            assert time.monotonic() < deadline, "workers outlived their killed parent"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


def test_int8_output_is_byte_identical_whatever_the_threads_and_workers(tmp_path, words):
    """The shipped model's int8 encoder (DynamicQuantizeLSTM) gave other tokens on 2 threads than on 1."""
    path = tmp_path / "in.txt"
    path.write_text("\n".join(e.source for e in C.split(C.load_cmudict().entries, "test")[:3000]) + "\n")
    outputs = {}
    for name, flags in (("1 worker", ["--workers", "1"]), ("1 thread", ["--workers", "1", "--threads", "1"]),
                        ("2 threads", ["--workers", "1", "--threads", "2"]), ("2 workers", ["--workers", "2"])):
        out = tmp_path / f"{name}.jsonl"
        proc = decode(REPO / "models" / "g2p-en", "--input", path, "--output", out, "--format", "jsonl", "--precision", "int8",
                      "--unknown", "unk", *flags)
        assert proc.returncode == 0, proc.stderr
        outputs[name] = out.read_bytes()
    assert len(set(outputs.values())) == 1


# --------------------------------------------------------------------------- --resume and --output


@pytest.fixture(scope="module")
def stopped(tiny_bundle, tmp_path_factory, words):
    """A jsonl output of 8,000 lines stopped by SIGTERM part way (its settings record beside it), and the input."""
    from test_decode_cli import _kill_mid_file

    work = tmp_path_factory.mktemp("stopped")
    path = work / "in.txt"
    path.write_text("\n".join(words[:8000]) + "\n")
    code, _ = _kill_mid_file(tiny_bundle, path, work / "out.jsonl", "jsonl", signal.SIGTERM)
    assert code == 143 and (work / ".out.jsonl.decode.json").exists()
    return work


@pytest.mark.parametrize("case,message", [
    ("another format", "was written with other settings (format 'jsonl' -> 'text')"),
    ("another bundle", "was written with other settings (bundles"),
    ("another search", "was written with other settings (search"),
    ("another input", "record 2 is not what --format jsonl writes for input line 2"),
    ("a shorter input", "holds more records than the input has lines"),
    ("no settings record", "unfinished, with no record of the settings that wrote it"),
    ("not UTF-8", "record 2 is not UTF-8"),
])
def test_resume_refuses_a_file_it_must_not_continue_and_leaves_it_as_it_was(tiny_bundle, tmp_path, stopped, words, case,
                                                                           message):
    shutil.copytree(stopped, tmp_path, dirs_exist_ok=True)
    path, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    bundle, fmt, extra = tiny_bundle, "jsonl", []
    if case == "another format":
        fmt = "text"
    elif case == "another bundle":
        bundle = SMALL
    elif case == "another search":
        extra = ["--beam", "2"]
    elif case == "another input":
        path.write_text("\n".join([words[0], "edges", *words[2:8000]]) + "\n")
    elif case == "a shorter input":
        path.write_text("\n".join(words[:10]) + "\n")
    elif case == "no settings record":
        (tmp_path / ".out.jsonl.decode.json").unlink()
    elif case == "not UTF-8":
        lines = out.read_bytes().split(b"\n")
        out.write_bytes(b"\n".join([lines[0], b"\xff\xfe" + lines[1], *lines[2:]]))
    before = out.read_bytes()
    proc = decode(bundle, "--input", path, "--output", out, "--format", fmt, "--resume", *extra)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_resume_of_a_finished_file_decodes_nothing_and_leaves_no_record(tiny_bundle, tmp_path):
    path, out = tmp_path / "in.txt", tmp_path / "out.txt"
    path.write_text("edge\nonnx\n")
    assert decode(tiny_bundle, "--input", path, "--output", out).returncode == 0
    whole = out.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]
    assert decode(tiny_bundle, "--input", path, "--output", out, "--resume").returncode == 0 and out.read_bytes() == whole


def test_a_lone_cr_inside_an_input_line_stays_inside_its_record_on_resume(tiny_bundle, tmp_path, words):
    from test_decode_cli import _kill_mid_file

    path = tmp_path / "in.txt"
    path.write_bytes(b"\n".join([b"edge", b"ab\rcd", *(w.encode() for w in words[:12000])]) + b"\n")
    whole = tmp_path / "whole.txt"
    decode(tiny_bundle, "--input", path, "--output", whole)
    assert whole.read_bytes().count(b"\n") == 12002 and b"\nab\rcd -> " in whole.read_bytes()
    out = tmp_path / "out.txt"
    assert _kill_mid_file(tiny_bundle, path, out, "text", signal.SIGTERM)[0] == 143
    proc = decode(tiny_bundle, "--input", path, "--output", out, "--resume")
    assert proc.returncode == 0 and out.read_bytes() == whole.read_bytes()  # line 2 (a CR is no letter) failed before


def test_an_output_that_is_a_directory_is_refused_before_decoding(tiny_bundle, tmp_path):
    proc = decode(tiny_bundle, "edge", "--output", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is a directory" in proc.stderr


def test_a_fifo_output_is_written_in_place_not_replaced_by_a_file(tiny_bundle, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    proc = decode(tiny_bundle, "edge", "onnx", "--output", fifo)
    assert proc.returncode == 0 and reader.communicate(timeout=30)[0].startswith("edge -> ")
    assert fifo.is_fifo()
    assert decode(tiny_bundle, "edge", "--output", fifo, "--resume").returncode == 2


def test_a_tsv_row_of_only_tabs_is_an_error_line_not_a_blank_line(tiny_bundle, tmp_path):
    path = tmp_path / "in.tsv"
    path.write_text("1\tedge\n\t\t\n\n3\tonnx\n")
    proc = decode(tiny_bundle, "--input", path, "--input-format", "tsv", "--column", "2", "--format", "jsonl")
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and [r["line"] for r in records] == [1, 2, 4]
    assert records[1]["error"] == "empty input" and "line 2: empty input" in proc.stderr


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("flags", [["--sample", "--temperature", "nan"], ["--sample", "--temperature", "inf"],
                                   ["--sample", "--top-p", "nan"], ["--beam", "2", "--length-penalty", "nan"]])
def test_non_finite_search_settings_are_refused_before_decoding(tiny_bundle, flags):
    proc = decode(tiny_bundle, "edge", *flags, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "must be a finite number" in proc.stderr or "0 < top_p <= 1" in proc.stderr


@pytest.mark.parametrize("call,message", [
    (lambda m: m.decode(["edge"], options="beam"), "options must be a SearchOptions value or a dict"),
    (lambda m: m.decode(["edge"], beam_size=2.5), "beam_size must be a whole number"),
    (lambda m: m.decode(["edge"], max_len="5"), "max_len must be None or a whole number"),
    (lambda m: m.decode(["edge"], sample=True, seed=1.5), "seed must be a whole number"),
    (lambda m: m.decode(["edge"], sample=True, temperature=float("nan")), "temperature must be a finite number"),
    (lambda m: m.decode(["edge"], bogus=1), "unknown search option(s) bogus"),
    (lambda m: m.decode("edge"), "takes a list of texts"),
    (lambda m: list(m.stream("edge", beam_size=True)), "beam_size must be a whole number"),
])
def test_the_api_raises_only_seq2edge_errors_for_bad_settings(tiny_model, call, message):
    with pytest.raises(Seq2EdgeError) as caught:
        call(tiny_model)
    assert message in str(caught.value) and isinstance(caught.value, OptionError)


@pytest.mark.parametrize("keywords,message", [
    ({"threads": "2"}, "threads must be None or a whole number"),
    ({"providers": 123}, "providers must be"),
    ({"greedy_graph": "yes"}, "greedy_graph must be None, True or False"),
    ({"ensemble": "models/g2p-en"}, "ensemble takes a list of bundle paths"),
])
def test_load_raises_only_seq2edge_errors_for_bad_settings(tiny_bundle, keywords, message):
    from seq2edge.runtime import Seq2Seq

    with pytest.raises(Seq2EdgeError, match=message):
        Seq2Seq.load(tiny_bundle, **keywords)


def test_options_may_be_a_dict_of_their_fields(tiny_model):
    as_dict = tiny_model.decode(["edge"], options={"beam_size": 3, "nbest": 2})[0].nbest
    as_value = tiny_model.decode(["edge"], SearchOptions(beam_size=3, nbest=2))[0].nbest
    assert len(as_dict) == 2 and [(r.text, r.score) for r in as_dict] == [(r.text, r.score) for r in as_value]


@pytest.mark.parametrize("flag", ["--output", "--json"])
@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_eval_outputs_are_checked_before_scoring(tiny_bundle, tmp_path, flag, where):
    target = tmp_path / "no" / "such.tsv" if where == "missing directory" else tmp_path
    proc = subprocess.run([*SEQ2EDGE, "eval", str(tiny_bundle), "--split", "dev", flag, str(target)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and flag in proc.stderr and proc.stdout == ""

