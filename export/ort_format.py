"""ORT-format copies of a bundle's graphs (export --ort), for reduced onnxruntime builds (mobile).

onnxruntime's own converter writes each .ort file (graph optimisations applied once, at conversion:
its "Fixed" style) and required_operators.config, the
operator list a reduced build (`build.sh --include_ops_by_config`) must include.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from seq2edge.runtime.schema import BundleMeta, GraphEntry

from .logs import logger_level

REQUIRED_OPERATORS = "required_operators.config"


def write_ort_copies(bundle_dir: Path, meta: BundleMeta) -> Path:
    """Convert every graph listed in meta to .ort beside it, record the copies in meta, and write
    required_operators.config for all of them; returns that file's path."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    work = Path(tempfile.mkdtemp(prefix=".ort.", dir=bundle_dir))
    try:
        for graphs in meta.graphs.values():
            for entry in graphs.values():
                shutil.copyfile(bundle_dir / entry.file, work / entry.file)
        printed = io.StringIO()  # the converter prints a line per file, naming this temporary folder
        try:
            # it logs every file it writes
            with contextlib.redirect_stdout(printed), logger_level("ort_format_model.utils", logging.WARNING):
                convert_onnx_models_to_ort(work, output_dir=work, optimization_styles=[OptimizationStyle.Fixed])
        except BaseException:
            sys.stderr.write(printed.getvalue())
            raise
        for graphs in meta.graphs.values():
            for kind, entry in graphs.items():
                name = Path(entry.file).with_suffix(".ort").name
                shutil.move(work / name, bundle_dir / name)
                graphs[kind] = GraphEntry(entry.file, entry.sha256, entry.bytes, GraphEntry.of_file(bundle_dir / name))
        config = next(work.glob("*.config")).read_text().splitlines()
        # name the bundle's files, not the temporary folder they were converted in
        lines = [f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line for line in config]
        (bundle_dir / REQUIRED_OPERATORS).write_text("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bundle_dir / REQUIRED_OPERATORS
