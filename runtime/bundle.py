"""Reading a bundle directory: bundle.json, tokenisers and verified graph bytes.

Everything that can be wrong with a bundle is a BundleError naming the file:
a missing or unreadable file, bad JSON, a newer format version, a graph whose
sha256 does not match bundle.json.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .errors import BundleError
from .interface import BUNDLE_FILE, GRAPH_FORMATS, PRECISIONS
from .onnx_scan import MalformedModel, uses_external_data
from .schema import BundleMeta, GraphEntry
from .tokenize import TextCodec, codec_pair

# A checkpoint directory holds this instead of bundle.json (told apart to give a better error).
CHECKPOINT_CONFIG = "config.json"


@dataclass
class Bundle:
    path: Path
    meta: BundleMeta
    source: TextCodec
    target: TextCodec

    @property
    def config(self) -> ModelConfig:
        return self.meta.model

    @property
    def bundle_id(self) -> str:
        return self.meta.bundle_id

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.meta.graphs]

    def graph_entry(self, kind: str, precision: str) -> GraphEntry:
        graphs = self.meta.graphs.get(precision)
        if graphs is None:
            have = ", ".join(self.precisions)
            raise BundleError(f"{self.path / BUNDLE_FILE}: no {precision} graphs in this bundle (it has {have}); "
                              f"export them with `seq2edge export --{precision}`")
        if kind not in graphs:
            raise BundleError(f"{self.path / BUNDLE_FILE}: no {precision} {kind} graph in this bundle"
                              + ("; export it with `seq2edge export --greedy-graph`" if kind == "greedy" else ""))
        return graphs[kind]

    def has_graph(self, kind: str, precision: str = "fp32") -> bool:
        return kind in self.meta.graphs.get(precision, {})

    def graph_format(self, requested: str, precision: str = "fp32") -> str:
        """"onnx" or "ort" for `requested` ("onnx", "ort", or "auto": the .onnx files when they are
        there, else the .ort copies, as on a device that was sent only those)."""
        if requested in GRAPH_FORMATS:
            return requested
        if requested != "auto":
            raise BundleError(f"graph format must be one of auto, {', '.join(GRAPH_FORMATS)}, not {requested!r}")
        entry = self.graph_entry("encoder", precision)
        return "ort" if not (self.path / entry.file).exists() and entry.ort is not None else "onnx"

    def verified_graph(self, kind: str, precision: str = "fp32", fmt: str = "onnx") -> Path:
        """The graph's path, after checking its sha256 against bundle.json and that it reads no
        other file (external data). The file is mapped, not copied, so a large graph costs no
        extra memory; onnxruntime then loads it from the path."""
        entry = self.graph_entry(kind, precision)
        if fmt == "ort":
            if entry.ort is None:
                raise BundleError(f"{self.path / entry.file}: the bundle has no ORT-format copy; export it with --ort")
            entry = entry.ort
        path = self.path / entry.file
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if hashlib.sha256(data).hexdigest() != entry.sha256:
                    raise BundleError(f"{path}: sha256 does not match {BUNDLE_FILE}; the file is damaged or was replaced, "
                                      "re-export the bundle")
                with memoryview(data) as view:  # an .ort file is a flatbuffer: it has no external data
                    external = uses_external_data(view) if fmt == "onnx" else False
        except MalformedModel as exc:
            raise BundleError(f"{path}: not a valid ONNX model ({exc})") from None
        except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
            raise _unreadable(path, exc) from None
        if external:
            raise BundleError(f"{path}: stores weights in external files, which a bundle never does; refused")
        return path


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> BundleError:
    if isinstance(exc, FileNotFoundError):
        return BundleError(f"{path}: missing from the bundle")
    if isinstance(exc, IsADirectoryError):
        return BundleError(f"{path}: is a directory, expected a file")
    return BundleError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and check bundle.json and build both tokenisers; graphs are read later, by precision."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle directory")
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; a bundle is a directory holding {BUNDLE_FILE} and the graphs")
    meta_path = path / BUNDLE_FILE
    if not meta_path.exists() and (path / CHECKPOINT_CONFIG).exists():
        raise BundleError(f"{path}: is a training checkpoint, not a bundle; export it first: seq2edge export {path} BUNDLE_DIR")
    raw = read_bytes(meta_path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{meta_path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    meta = BundleMeta.from_dict(data, str(meta_path))
    for side in (meta.source, meta.target):
        if side.spm_model is not None and side.spm_sha256:
            spm = path / side.spm_model
            if hashlib.sha256(read_bytes(spm)).hexdigest() != side.spm_sha256:
                raise BundleError(f"{spm}: sha256 does not match {BUNDLE_FILE}; re-export the bundle")
    try:
        source, target = codec_pair(meta.model, meta.source.vocab, meta.target.vocab,
                                    spm_paths=[path / s.spm_model if s.spm_model else None for s in (meta.source, meta.target)])
    except BundleError as exc:
        raise BundleError(f"{meta_path}: {exc}") from None
    return Bundle(path, meta, source, target)
