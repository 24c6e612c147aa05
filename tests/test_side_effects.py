"""seq2edge changes nothing global: loggers, warning filters and the umask are as the caller left them."""

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
