import json
import subprocess

from click.testing import CliRunner
from conftest import SEQ2EDGE

from seq2edge.runtime.cli import cli


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def test_decode_prints_word_arrow_output_for_each_argument(tiny_bundle, tiny_model):
    result = run("decode", tiny_bundle, "edge", "onnx")
    assert result.exit_code == 0
    expected = [f"{r.input} -> {r.text}" for r in tiny_model.decode(["edge", "onnx"])]
    assert result.output.splitlines() == expected


def test_decode_reads_stdin_lines_and_writes_jsonl(tiny_bundle, tiny_model):
    result = run("decode", tiny_bundle, "--format", "jsonl", input="edge\nonnx\n")
    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["input"] for r in records] == ["edge", "onnx"]
    best = tiny_model.decode(["edge"])[0]
    assert records[0]["output"] == best.text and records[0]["tokens"] == best.tokens
    assert abs(records[0]["score"] - best.score) < 1e-5


def test_jsonl_nbest_lists_hypotheses_with_scores(tiny_bundle):
    result = run("decode", tiny_bundle, "--format", "jsonl", "--beam", "4", "--nbest", "3", "edge")
    record = json.loads(result.output)
    assert len(record["nbest"]) == 3 and record["nbest"][0]["output"] == record["output"]
    scores = [h["score"] for h in record["nbest"]]
    assert scores == sorted(scores, reverse=True)


def test_bad_lines_are_reported_and_the_rest_still_decoded(tiny_bundle, tmp_path):
    data = b"edge\n\nonnx\n\xff\xfeabc\n\xe4\xb8\xad\nedge\n"
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--format", "jsonl"], input=data, capture_output=True)
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6]  # the blank line 2 is skipped, not an error
    assert [r.get("error") is None for r in records] == [True, True, False, False, True]
    stderr = proc.stderr.decode()
    assert "line 2" not in stderr and "line 4: not valid UTF-8" in stderr and "line 5:" in stderr
    assert "Traceback" not in stderr


def test_missing_bundle_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tmp_path / "none"), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"seq2edge: error: {tmp_path / 'none'}: no such bundle directory"]


def test_output_file_is_written_whole(tiny_bundle, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("edge\nonnx\n")
    out = tmp_path / "out.tsv"
    result = run("decode", tiny_bundle, "--input", inputs, "--output", out, "--format", "tsv")
    assert result.exit_code == 0
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["edge", "onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.tsv"]


def test_eval_prints_wer_and_per_for_bundle_and_checkpoint(tiny_bundle, tiny_checkpoint, tmp_path):
    rows = tmp_path / "rows.tsv"
    for path in (tiny_bundle, tiny_checkpoint):
        result = run("eval", path, "--limit", "40", "--output", rows)
        assert result.exit_code == 0, result.output
        assert "with stress" in result.output and "stressless" in result.output and "PER" in result.output
    lines = rows.read_text().splitlines()
    assert lines[0] == "input\toutput\tcorrect\treferences" and len(lines) == 41


def test_bundle_and_checkpoint_greedy_agree_on_eval(tiny_bundle, tiny_checkpoint):
    from seq2edge.train.evaluate import evaluate

    a, b = evaluate(tiny_bundle, limit=150), evaluate(tiny_checkpoint, limit=150)
    assert [r[1] for r in a.rows] == [r[1] for r in b.rows]


def test_train_command_rejects_an_impossible_config(tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tmp_path / "c"), "--bidirectional", "--hidden", "33",
                           "--limit", "10"], capture_output=True, text=True)
    assert proc.returncode == 2 and "hidden must be even" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_every_command():
    result = run("--help")
    for command in ("train", "export", "eval", "decode", "info", "bench"):
        assert command in result.output
