"""Reliability battery: bad text, broken bundles, untrusted files, interrupted export.

Every case must end in a clear one-line error naming the input or the file,
exit code 1 (some inputs failed) or 2 (nothing could start) in the CLI, no
traceback, and no lost results for the inputs that were fine.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import onnx
import pytest
from conftest import SEQ2EDGE, export_tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2edge.runtime import BundleError, InputError, Result, Seq2Seq
from seq2edge.runtime.tokenize import BOS, EOS, PAD, SPECIALS, TextCodec, Vocabulary
from seq2edge.runtime.util import sha256_file

# --------------------------------------------------------------------------- bad text input

BAD_LINES = [  # (bytes on stdin, what the error says; None when the line must decode)
    (b"edge", None),
    ("caf\u00e9".encode(), "not in the source vocabulary: '\u00e9'"),
    (b"a" * 200, "over the model's max_src_len"),
    (b"ab\x01cd", "control character U+0001"),
    (b"ab\x00cd", "control character U+0000"),
    (b"\xed\xa0\x80abc", "not valid UTF-8"),  # an encoded lone surrogate
    (b"\xff\xfe", "not valid UTF-8"),
    ("edge\u043c\u0438\u0440\U0001f600".encode(), "not in the source vocabulary"),  # mixed scripts
    ("\u202eedge".encode(), "not in the source vocabulary"),  # a bidi control character
    (b"onnx", None),
]


def test_cli_battery_of_bad_lines_loses_no_good_line(tiny_bundle, tiny_model):
    data = b"\n".join(line for line, _ in BAD_LINES) + b"\n"
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "--format", "jsonl"], input=data, capture_output=True)
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["line"] for r in records] == list(range(1, len(BAD_LINES) + 1))
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr
    for record, (line, expected) in zip(records, BAD_LINES):
        if expected is None:
            assert record["output"] == tiny_model.decode([line.decode()])[0].text
        else:
            assert expected in record["error"], (line, record)
            assert f"line {record['line']}: " in stderr


def test_api_bad_inputs_raise_input_error_or_return_errors(tiny_model):
    texts = ["edge", "", "a\ud800b", "x" * 500, "edge\x00", 42, "onnx"]
    results = tiny_model.decode(texts, errors="return")
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert "lone surrogate U+D800" in results[2].error
    assert "expected a string" in results[5].error
    for bad in texts[1:6]:
        with pytest.raises(InputError):
            tiny_model.decode([bad])


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
def test_any_unicode_gives_a_result_or_the_documented_error(tiny_model, texts):
    results = tiny_model.decode(texts, errors="return", max_len=12)
    assert len(results) == len(texts)
    for text, result in zip(texts, results):
        assert isinstance(result, Result) and result.input == text
        if result.ok:
            assert len(result.tokens) <= 12 and np.isfinite(result.score)
        else:
            assert result.error and "\n" not in result.error
    for text in texts:
        try:
            tiny_model.decode([text], max_len=12)
        except InputError:
            pass


@settings(deadline=None)
@given(st.text(max_size=60), st.sampled_from(["char", "word"]), st.sampled_from(["error", "unk", "skip"]))
def test_tokenisers_never_fail_outside_their_documented_error(text, kind, policy):
    codec = TextCodec(kind, Vocabulary([*SPECIALS, "a", "b", "ab", "é"]), lowercase=True)
    tokens = codec.split(text)
    known = [t for t in tokens if t in codec.vocab and t not in (PAD, BOS, EOS)]  # control tokens are never text
    try:
        ids = codec.encode(text, policy)
    except InputError as exc:
        if not tokens:
            assert str(exc) == "empty input"
        elif policy == "error":
            assert "not in the source vocabulary" in str(exc)
        else:
            assert policy == "skip" and not known and "nothing left after skipping" in str(exc)
    else:
        expected = {"error": tokens, "unk": [t if t in known else "<unk>" for t in tokens], "skip": known}[policy]
        assert codec.ids_to_tokens(ids) == expected


# --------------------------------------------------------------------------- broken bundles


def _copy(bundle, tmp_path, name="copy"):
    out = tmp_path / name
    shutil.copytree(bundle, out)
    return out


def _edit_meta(bundle, change):
    meta = json.loads((bundle / "bundle.json").read_text())
    change(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def _truncate(b):
    data = (b / "decoder.onnx").read_bytes()
    (b / "decoder.onnx").write_bytes(data[: len(data) // 2])


def _flip_bit(b):
    data = bytearray((b / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x10
    (b / "encoder.onnx").write_bytes(bytes(data))


def _rename_decoder_input(b):
    graph = onnx.load(str(b / "decoder.onnx"))
    for node in graph.graph.node:
        node.input[:] = ["mask" if name == "src_mask" else name for name in node.input]
    graph.graph.input[3].name = "mask"
    onnx.save(graph, str(b / "decoder.onnx"))
    _edit_meta(b, lambda m: m["graphs"]["fp32"]["decoder"].update(sha256=sha256_file(b / "decoder.onnx")))


def _symlink_loop(b):
    (b / "bundle.json").unlink()
    (b / "bundle.json").symlink_to(b / "bundle.json")


def _fifo(name):
    def damage(b):
        (b / name).unlink()
        os.mkfifo(b / name)  # reading it would wait for a writer that never comes
    return damage


def _nested(b):
    (b / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)


def _truncate_and_rehash(b):
    _truncate(b)
    _edit_meta(b, lambda m: m["graphs"]["fp32"]["decoder"].update(sha256=sha256_file(b / "decoder.onnx")))


def _link_outside(b):
    outside = b.parent / "elsewhere.onnx"
    shutil.move(b / "decoder.onnx", outside)
    (b / "decoder.onnx").symlink_to(outside)


def _nan_parity(b):
    text = (b / "bundle.json").read_text()
    (b / "bundle.json").write_text(text.replace('"parity": {', '"parity": {"fp32": {"tolerance": NaN}, "x": {', 1))


FAULTS = {
    "missing bundle.json": (lambda b: (b / "bundle.json").unlink(), "bundle.json: missing"),
    "missing encoder": (lambda b: (b / "encoder.onnx").unlink(), "encoder.onnx: missing from the bundle"),
    "missing decoder": (lambda b: (b / "decoder.onnx").unlink(), "decoder.onnx: missing from the bundle"),
    "truncated decoder": (_truncate, "decoder.onnx: sha256 does not match bundle.json"),
    "bit-flipped encoder": (_flip_bit, "encoder.onnx: sha256 does not match bundle.json"),
    "newer format": (lambda b: _edit_meta(b, lambda m: m.update(format_version=99)), "format version 99 is newer"),
    "not JSON": (lambda b: (b / "bundle.json").write_text("{ not json"), "bundle.json: not valid JSON (line 1)"),
    "not an object": (lambda b: (b / "bundle.json").write_text("[1, 2]"), "bundle.json: expected a JSON object"),
    "vocabulary size": (lambda b: _edit_meta(b, lambda m: m["target"]["vocab"].pop()), "target vocabulary has"),
    "unknown config key": (lambda b: _edit_meta(b, lambda m: m["model"].update(heads=8)), "unknown model config keys ['heads']"),
    "graph path escapes": (lambda b: _edit_meta(b, lambda m: m["graphs"]["fp32"]["decoder"].update(file="../decoder.onnx")),
                           "must be a plain file name"),
    "decoder input renamed": (_rename_decoder_input, "decoder.onnx: inputs are"),
    "bundle.json unreadable": (_symlink_loop, "bundle.json: cannot read"),
    "bundle.json is a directory": (lambda b: ((b / "bundle.json").unlink(), (b / "bundle.json").mkdir()),
                                   "bundle.json: is a directory"),
    # the second battery (docs/reliability.md): each crashed or hung before
    "bundle.json is a FIFO": (_fifo("bundle.json"), "bundle.json: not a regular file"),
    "bundle.json nested deep": (_nested, "bundle.json: nested more than 64 deep"),
    "eos_id out of range": (lambda b: _edit_meta(b, lambda m: (m["model"].update(eos_id=999), m.pop("special_ids"))),
                            "special ids"),
    "special id of the wrong type": (lambda b: _edit_meta(b, lambda m: (m["model"].update(eos_id="2"), m.pop("special_ids"))),
                                     "eos_id must be a whole number"),
    "duplicated vocabulary token": (lambda b: _edit_meta(b, lambda m: m["target"]["vocab"].__setitem__(5, m["target"]["vocab"][4])),
                                    "target.vocab holds"),
    "missing model section": (lambda b: _edit_meta(b, lambda m: m.pop("model")), "missing or malformed field model"),
    "parity of the wrong type": (lambda b: _edit_meta(b, lambda m: m["parity"].update(fp32=[1, 2])), "parity.fp32 must be an object"),
    "parity figure out of range": (lambda b: _edit_meta(b, lambda m: m["parity"]["fp32"].update(token_agreement="all")),
                                   "parity.fp32.token_agreement must be a number"),
    "NaN in the parity figures": (_nan_parity, "NaN is not a JSON number"),
    "truncated graph re-hashed": (_truncate_and_rehash, "decoder.onnx: not a valid ONNX model"),
    "graph is a FIFO": (_fifo("decoder.onnx"), "decoder.onnx: not a regular file"),
    "graph links out of the bundle": (_link_outside, "decoder.onnx: points outside the bundle directory"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_broken_bundle_is_one_clear_line_and_exit_2(tiny_bundle, tmp_path, fault):
    damage, message = FAULTS[fault]
    bundle = _copy(tiny_bundle, tmp_path)
    damage(bundle)
    with pytest.raises(BundleError, match=None) as caught:
        Seq2Seq.load(bundle, providers="cpu")
    assert message in str(caught.value)
    proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "edge"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


def test_decoder_from_another_export_is_refused(tiny_bundle, tiny_checkpoint, tmp_path):
    other = export_tiny(tiny_checkpoint, tmp_path / "other", parity_words=30)
    bundle = _copy(tiny_bundle, tmp_path)
    shutil.copyfile(other / "decoder.onnx", bundle / "decoder.onnx")
    # even with the sha256 in bundle.json updated to match, the graph's own metadata gives it away
    _edit_meta(bundle, lambda m: m["graphs"]["fp32"]["decoder"].update(sha256=sha256_file(bundle / "decoder.onnx")))
    with pytest.raises(BundleError, match="decoder.onnx: exported for bundle .* comes from another export"):
        Seq2Seq.load(bundle, providers="cpu")


def test_bundle_path_that_is_a_file_or_absent(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a directory"):
        Seq2Seq.load(tmp_path / "file")
    with pytest.raises(BundleError, match="no such bundle directory"):
        Seq2Seq.load(tmp_path / "absent")


# --------------------------------------------------------------------------- untrusted files


def test_external_data_outside_the_bundle_is_never_read(tiny_bundle, tmp_path):
    """A crafted graph whose weights point at a file outside the bundle does not load."""
    bundle = _copy(tiny_bundle, tmp_path, "bundle")
    graph = onnx.load(str(bundle / "decoder.onnx"))
    weight = max(graph.graph.initializer, key=lambda t: len(t.raw_data))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(weight.raw_data)  # valid data: a loader that followed the reference would succeed
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(secret.stat().st_size))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(bundle / "decoder.onnx"))
    _edit_meta(bundle, lambda m: m["graphs"]["fp32"]["decoder"].update(sha256=sha256_file(bundle / "decoder.onnx")))
    with pytest.raises(BundleError, match="decoder.onnx: stores weights in external files, .* refused"):
        Seq2Seq.load(bundle, providers="cpu")


def test_external_data_is_found_wherever_a_tensor_can_hide(tiny_bundle, tmp_path):
    from onnx import helper

    from seq2edge.runtime.onnx_scan import uses_external_data

    for name in ("encoder.onnx", "decoder.onnx"):
        assert not uses_external_data((tiny_bundle / name).read_bytes())
    tensor = helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [1.0])
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    constant = helper.make_node("Constant", [], ["y"], value=tensor)  # inside a node attribute
    inner = helper.make_graph([constant], "inner", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    branch = helper.make_node("If", ["c"], ["z"], then_branch=inner, else_branch=inner)  # inside a subgraph
    graph = helper.make_graph([branch], "outer", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1])])
    assert uses_external_data(helper.make_model(graph).SerializeToString())


def test_a_tokeniser_file_is_parsed_never_executed(tiny_bundle, tmp_path):
    import pickle

    bundle = _copy(tiny_bundle, tmp_path)
    planted = pickle.dumps(["os.system", "touch pwned"])  # a pickle where a SentencePiece model belongs
    (bundle / "source.spm.model").write_bytes(planted)
    digest = sha256_file(bundle / "source.spm.model")
    _edit_meta(bundle, lambda m: (m["model"].update(src_tokens="spm"),
                                  m["source"].update(tokenizer="spm", spm_model="source.spm.model", spm_sha256=digest)))
    with pytest.raises(BundleError, match="source.spm.model: not a valid SentencePiece model"):
        Seq2Seq.load(bundle, providers="cpu")
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- interrupted export


def test_killed_export_leaves_no_half_bundle_and_the_old_one_intact(tiny_checkpoint, tiny_bundle, tmp_path):
    out = _copy(tiny_bundle, tmp_path, "bundle")
    before = (out / "bundle.json").read_bytes()
    proc = subprocess.Popen([*SEQ2EDGE, "export", str(tiny_checkpoint), str(out), "--force", "--int8", "--fp16",
                             "--parity-words", "500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob(".bundle.*.partial/encoder.onnx")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".bundle.*.partial")), "the export finished before it could be killed"
    assert (out / "bundle.json").read_bytes() == before
    Seq2Seq.load(out, providers="cpu").decode(["edge"])
    # the next export of the same bundle clears what the killed one left behind
    export_tiny(tiny_checkpoint, out, force=True, parity_words=30)
    assert not list(tmp_path.glob(".bundle.*.partial"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "export", str(tmp_path / "nope"), str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such checkpoint directory" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unwritable_output_file_is_one_line(tiny_bundle, tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "decode", str(tiny_bundle), "edge", "--output", str(tmp_path / "no" / "such" / "dir.txt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot write" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_decode_survives_a_closed_stdout(tiny_bundle):
    proc = subprocess.run(f"yes edge | head -n 3000 | {' '.join(SEQ2EDGE)} decode {tiny_bundle} | head -n 1",
                          shell=True, capture_output=True, text=True)
    assert proc.stdout.strip().startswith("edge -> ") and "Traceback" not in proc.stderr


def test_control_tokens_typed_as_text_are_unknown_tokens_not_control_ids():
    """A word-level source that contains "<pad>", "<s>" or "</s>" must not feed those ids to the encoder."""
    codec = TextCodec("word", Vocabulary([*SPECIALS, "a"]), lowercase=False)
    with pytest.raises(InputError, match="not in the source vocabulary: '<pad>', '</s>'"):
        codec.encode("a <pad> </s>")
    assert codec.encode("a <pad> <s> <unk>", "unk") == [4, 3, 3, 3]
    assert codec.encode("<s> a", "skip") == [4]


def test_a_greedy_graph_from_another_export_is_refused_at_load_not_at_the_first_single_input(tmp_path):
    from conftest import REPO
    from test_js_host import _claim_another_bundle

    small = _copy(REPO / "models" / "g2p-en-small", tmp_path, "small")
    _claim_another_bundle(small, "greedy.onnx")
    with pytest.raises(BundleError, match="greedy.onnx: exported for bundle 0000"):
        Seq2Seq.load(small, providers="cpu")
    Seq2Seq.load(small, providers="cpu", greedy_graph=False).decode(["edge"])  # never reads it
    proc = subprocess.run([*SEQ2EDGE, "info", str(small)], capture_output=True, text=True)
    assert proc.returncode == 2 and "greedy.onnx: exported for bundle 0000" in proc.stderr and "Traceback" not in proc.stderr


def test_info_names_a_missing_graph_and_shows_the_others(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "decoder.onnx").unlink()
    proc = subprocess.run([*SEQ2EDGE, "info", str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "decoder.onnx: missing from the bundle" in proc.stderr and "encoder.onnx" in proc.stdout
    assert "decoder.onnx" in proc.stdout and "MISSING OR NOT A FILE" in proc.stdout


@pytest.mark.parametrize("out,relation", [("{ck}", "is"), ("{ck}/sub", "lies inside"), ("{parent}", "contains")])
def test_export_refuses_an_output_that_is_contains_or_lies_inside_its_checkpoint(tiny_checkpoint, tmp_path, out, relation):
    checkpoint = tmp_path / "parent" / "ck"
    shutil.copytree(tiny_checkpoint, checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    target = out.format(ck=checkpoint, parent=checkpoint.parent)
    proc = subprocess.run([*SEQ2EDGE, "export", str(checkpoint), target, "--force"], capture_output=True, text=True)
    assert proc.returncode == 2 and f"the output {relation} the checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_average_refuses_an_output_that_is_one_of_its_sources(tiny_checkpoint, tmp_path):
    from seq2edge.runtime.errors import Seq2EdgeError
    from seq2edge.train.average import average_checkpoints

    source = _copy(tiny_checkpoint, tmp_path, "a")
    with pytest.raises(Seq2EdgeError, match="the output is the source"):
        average_checkpoints([source, tiny_checkpoint], source, force=True)
    assert (source / "model.safetensors").exists()
