"""The device check's rule and comparison (tools/device_check.py). The emulated ARM run itself is `make
device-check`, which .ci/run runs in its reduced form; here, what decides pass or fail is held to its word."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import device_check as D  # noqa: E402

SMALL = REPO / "models" / "g2p-en-small"


def row(precision: str, margins: list[float], words: int = 1000) -> D.Row:
    return D.Row("python", "cortex-a72", f"g2p-en-small {precision} 64", words, [(f"w{i}", "A", "B", m) for i, m in enumerate(margins)])


@pytest.mark.parametrize("case,broken", [
    (row("fp32", []), None),
    (row("fp32", [0.0001]), "fp32 outputs must equal x86's"),
    (row("int8", [0.0009, 0.022]), None),
    (row("int8", [0.0009, D.NEAR_TIE]), f"1 int8 difference(s) where x86 was not near a tie (margin >= {D.NEAR_TIE})"),
    (row("int8", [0.01] * 16), "16 of 1000 int8 outputs differ, over the 1.5% bound"),
    (row("int8", [0.01] * 15), None),
])
def test_the_rule_allows_only_int8_near_ties_within_the_bound(case, broken):
    assert case.breaks_rule() == broken


def test_each_emulated_cpu_is_described_by_its_own_cpuinfo():
    assert "asimddp" not in D.cpuinfo("cortex-a72") and "CPU part\t: 0xd08" in D.cpuinfo("cortex-a72")
    assert "asimddp" in D.cpuinfo("cortex-a76") and "CPU part\t: 0xd0b" in D.cpuinfo("cortex-a76")


def test_the_margin_is_the_top_two_gap_where_the_outputs_part():
    """Against the contract's graphs run by hand: encoder, then decoder steps fed the common prefix."""
    word, ours = "attention", "AH0 T EH1 N SH AH0 N"
    theirs = "AH0 T EH1 N CH AH0 N"  # parts at the fifth token
    margin = D.first_step_margin(SMALL, "fp32", word, ours, theirs)
    meta = json.loads((SMALL / "bundle.json").read_text())
    source, target = meta["source"]["vocab"], meta["target"]["vocab"]
    encoder = ort.InferenceSession(str(SMALL / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(SMALL / "decoder.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[source.index(c) for c in word]], dtype=np.int64)
    memory, state = encoder.run(None, {"src_ids": ids, "src_lengths": np.array([ids.shape[1]], dtype=np.int64)})
    mask = np.ones(ids.shape, dtype=bool)
    prev = 1
    for token in [*ours.split()[:4], None]:
        log_probs, state, _ = decoder.run(None, {"prev_ids": np.array([prev], dtype=np.int64), "state": state, "memory": memory,
                                                 "src_mask": mask})
        if token is not None:
            prev = target.index(token)
    top = np.sort(log_probs[0])
    assert margin == pytest.approx(float(top[-1] - top[-2]), abs=1e-5) and margin > 0


def test_a_board_run_is_compared_with_x86_and_a_changed_output_breaks_the_rule(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "device_check.py"), "--words", "30", "--reduced"]
    assert subprocess.run([*tool, "--write-inputs", str(tmp_path)], check=True).returncode == 0
    board = subprocess.run([sys.executable, "tools/device_decode.py", str(tmp_path / "words.txt"),
                            (tmp_path / "settings.json").read_text()], cwd=REPO, capture_output=True, text=True, check=True).stdout
    (tmp_path / "board.json").write_text(board)
    proc = subprocess.run([*tool, "--compare", str(tmp_path / "board.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.startswith("python  board")]) == 10
    outputs = json.loads(board)
    outputs["g2p-en-small fp32 64"][3] = "AH0"
    (tmp_path / "board.json").write_text(json.dumps(outputs))
    proc = subprocess.run([*tool, "--compare", str(tmp_path / "board.json")], capture_output=True, text=True)
    assert proc.returncode == 1 and "RULE BROKEN: python on board, g2p-en-small fp32 64: fp32 outputs must equal x86's" in proc.stderr
