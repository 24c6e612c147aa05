import json
import re
import subprocess

from click.testing import CliRunner
from conftest import SEQ2EDGE, export_tiny, train_tiny

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


def test_train_command_rejects_an_impossible_config_before_reading_the_corpus(tmp_path):
    """The corpus named does not exist: the model options are checked first (a large corpus would
    otherwise be read, and its tokenisers trained, before the refusal)."""
    proc = subprocess.run([*SEQ2EDGE, "train", "--corpus", str(tmp_path / "absent.tsv"), "--out", str(tmp_path / "c"),
                           "--bidirectional", "--hidden", "33", "--limit", "10"], capture_output=True, text=True)
    assert proc.returncode == 2 and "hidden must be even" in proc.stderr and "Traceback" not in proc.stderr
    assert "absent.tsv" not in proc.stderr and not (tmp_path / "c").exists()


def test_help_lists_every_command():
    result = run("--help")
    for command in ("train", "average", "export", "eval", "decode", "info", "bench"):
        assert command in result.output


def test_eval_scores_any_file_with_split_all_and_reports_lines_it_cannot_use(tmp_path):
    """A char->char corpus: exact match and CER under those names; a bad line is reported, not dropped silently."""
    from seq2edge.train import corpus as C

    pairs = [e for e in C.load_cmudict().entries if e.source.isalpha()][:400]
    corpus = tmp_path / "spell.tsv"
    corpus.write_text("".join(f"{e.source}\t{e.source[::-1]}\n" for e in pairs) + "no tab here\n")
    ckpt = train_tiny(tmp_path / "ckpt", corpus=str(corpus), epochs=1, limit=300, dev_limit=20)
    bundle = export_tiny(ckpt, tmp_path / "bundle", parity_words=30)
    result = run("eval", bundle, "--corpus", corpus, "--split", "all")
    assert result.exit_code == 0, result.output
    assert "spell.tsv all: 400 inputs" in result.output
    assert re.search(r"exact match +\d+\.\d\d%   CER +\d+\.\d\d%", result.output)
    assert f"{corpus}:401: expected source<TAB>target" in result.output  # CliRunner mixes stderr in
    assert "1 corpus line(s) could not be used and are not scored" in result.output


def test_eval_finds_the_training_corpus_from_any_directory(tmp_path, monkeypatch):
    from seq2edge.train import corpus as C

    pairs = [e for e in C.load_cmudict().entries if e.source.isalpha()][:300]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.tsv").write_text("".join(f"{e.source}\t{e.references[0]}\n" for e in pairs))
    monkeypatch.chdir(tmp_path)
    proc = subprocess.run([*SEQ2EDGE, "train", "--corpus", "data/c.tsv", "--out", "ckpt", "--epochs", "1", "--limit", "100",
                           "--dev-limit", "10", "--embed", "8", "--hidden", "16"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([*SEQ2EDGE, "eval", str(tmp_path / "ckpt"), "--split", "all"], capture_output=True, text=True,
                          cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "data" / "c.tsv").rename(tmp_path / "data" / "moved.tsv")
    proc = subprocess.run([*SEQ2EDGE, "eval", str(tmp_path / "ckpt")], capture_output=True, text=True, cwd=elsewhere)
    assert proc.returncode == 2 and "which is not here; pass --corpus PATH" in proc.stderr


def test_a_checkpoint_and_a_bundle_given_in_each_others_place_say_so(tiny_bundle, tiny_checkpoint, tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_checkpoint), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and "is a training checkpoint, not a bundle; export it first" in proc.stderr
    proc = subprocess.run([*SEQ2EDGE, "export", str(tiny_bundle), str(tmp_path / "b")], capture_output=True, text=True)
    assert proc.returncode == 2 and "is already an exported bundle, not a checkpoint" in proc.stderr
