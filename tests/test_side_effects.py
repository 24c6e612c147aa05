"""seq2edge changes nothing global: loggers, warning filters, the umask and the floating-point environment are as the
caller left them."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from conftest import export_tiny


def test_an_int8_ort_export_leaves_loggers_and_warning_filters_as_it_found_them(tiny_checkpoint, tmp_path):
    import onnxruntime.tools.convert_onnx_models_to_ort  # noqa: F401 - its import sets its logger's level, not ours

    names = (None, "ort_format_model.utils", "onnxruntime.quantization")
    before = [logging.getLogger(n).level for n in names], list(warnings.filters)
    export_tiny(tiny_checkpoint, tmp_path / "bundle", int8=True, ort=True, parity_words=30)
    assert ([logging.getLogger(n).level for n in names], list(warnings.filters)) == before


def test_files_are_written_with_the_process_umask_which_is_never_set():
    # os.umask both reads and sets; a runtime that called it (at import or per write) would fail here
    code = """
import os, stat, tempfile
os.umask(0o027)
def refuse(*args):
    raise AssertionError("os.umask was called")
os.umask = refuse
from seq2edge.runtime.util import write_text_atomic
path = os.path.join(tempfile.mkdtemp(), "out.txt")
write_text_atomic(path, "x")
print(oct(stat.S_IMODE(os.stat(path).st_mode)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0o640"


def test_loading_decoding_and_streaming_leave_the_callers_floating_point_environment_as_it_was():
    """onnxruntime flushes subnormals to zero on the thread that creates a process's first session and never undoes
    it; the runtime flushes them only while onnxruntime computes (runtime/fpenv.py), so an app's own numpy and
    Python arithmetic keeps its subnormals. In a fresh interpreter: the first session of the process is the one
    that would leak."""
    code = """
import sys
import numpy as np
from seq2edge.runtime import Seq2Seq
tiny = lambda: (float.fromhex('0x1p-1074') * 1.0, float(np.float32(1e-40) * np.float32(1.0)))
assert all(tiny())
model = Seq2Seq.load(sys.argv[1], threads=1, greedy_graph=False)
assert all(tiny()), 'load'
model.decode(['edge', 'onnx'], beam_size=2)
assert all(tiny()), 'decode'
list(model.stream('edge'))
assert all(tiny()), 'stream'
graph = Seq2Seq.load(sys.argv[1], threads=1, greedy_graph=True)
graph.decode(['edge'])
assert all(tiny()), 'greedy graph'
"""
    from conftest import REPO

    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "tests" / "conformance" / "bundles" / "g2p")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_onnxruntime_computes_with_subnormals_flushed_inside_the_runtime():
    from seq2edge.runtime.fpenv import _LAYOUT, flushing

    if _LAYOUT is None:
        import pytest

        pytest.fail("this platform's fenv_t layout is unknown to runtime/fpenv.py: subnormals would not be flushed")
    with flushing():
        assert float.fromhex("0x1p-1074") * 1.0 == 0.0
    assert float.fromhex("0x1p-1074") * 1.0 > 0
