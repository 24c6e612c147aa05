"""Reading a bundle directory: bundle.json, tokenisers and verified graph bytes.

Everything that can be wrong with a bundle is a BundleError naming the file:
a missing or unreadable file, bad JSON, a newer format version, a graph whose
sha256 does not match bundle.json.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .config import AnyModelConfig
from .contract import say
from .errors import BundleError
from .interface import (
    BUNDLE_FILE,
    GRAPH_FORMATS,
    MAX_GRAPH_BYTES,
    MAX_JSON_DEPTH,
    MAX_METADATA_BYTES,
    META_BUNDLE_ID,
    META_GRAPH,
    META_PRECISION,
    PRECISIONS,
)
from .onnx_scan import MalformedModel, metadata, uses_external_data
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
    verified: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, precision, format) checked already

    @property
    def config(self) -> AnyModelConfig:
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
        path = bundle_file(self.path, entry.file)
        if (kind, precision, fmt) in self.verified:
            return path
        owner: dict[str, str] = {}
        if path.stat().st_size > MAX_GRAPH_BYTES:
            raise BundleError(f"{path}: {say('graph_too_large', limit=MAX_GRAPH_BYTES)}")
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if hashlib.sha256(data).hexdigest() != entry.sha256:
                    raise BundleError(f"{path}: sha256 does not match {BUNDLE_FILE}; the file is damaged or was replaced, "
                                      "re-export the bundle")
                if fmt == "onnx":  # an .ort file is a flatbuffer: no external data, no metadata_props
                    external, owner = uses_external_data(data), metadata(data)
                else:
                    external = False
        except MalformedModel as exc:
            raise BundleError(f"{path}: not a valid ONNX model ({exc})") from None
        except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
            raise _unreadable(path, exc) from None
        if external:
            raise BundleError(f"{path}: stores weights in external files, which a bundle never does; refused")
        if fmt == "onnx":
            self._check_owner(path, owner, kind, precision)
        self.verified.add((kind, precision, fmt))
        return path

    def _check_owner(self, path: Path, owner: dict[str, str], kind: str, precision: str) -> None:
        """The graph's own metadata names this bundle, this kind and this precision (a graph alone says what it is)."""
        if owner.get(META_BUNDLE_ID) != self.bundle_id:
            raise BundleError(f"{path.name}: exported for bundle {owner.get(META_BUNDLE_ID) or '(none)'}, but bundle.json is "
                              f"bundle {self.bundle_id}; the graph comes from another export, re-export the bundle")
        if owner.get(META_GRAPH) != kind:
            raise BundleError(f"{path.name}: holds the {owner.get(META_GRAPH)!r} graph, expected the {kind}")
        if owner.get(META_PRECISION, precision) != precision:
            raise BundleError(f"{path.name}: is a {owner.get(META_PRECISION)} graph, bundle.json lists it as {precision}; "
                              "re-export the bundle")


def bundle_file(directory: Path, name: str) -> Path:
    """directory/name, refused unless it is a regular file inside the bundle directory: never a FIFO or
    device (which would hang or never end), never a link out of the bundle."""
    path = directory / name
    try:
        real, inside = path.resolve(strict=True), directory.resolve(strict=True)
        mode = real.stat().st_mode
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except RuntimeError:  # a symlink loop
        raise BundleError(f"{path}: cannot read: a symbolic link loop") from None
    if real.parent != inside:
        raise BundleError(f"{path}: points outside the bundle directory; refused")
    if stat.S_ISDIR(mode):
        raise BundleError(f"{path}: is a directory, expected a file")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{path}: not a regular file; refused")
    return path


def read_bytes(path: Path, limit: int = MAX_METADATA_BYTES) -> bytes:
    """A small file of the bundle, whole; refused when it is not a regular file inside it or over `limit` bytes."""
    path = bundle_file(path.parent, path.name)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if len(data) > limit:
        raise BundleError(f"{path}: larger than {limit >> 20} MB, far beyond any bundle's; refused")
    return data


def _unreadable(path: Path, exc: Exception) -> BundleError:
    if isinstance(exc, FileNotFoundError):
        return BundleError(f"{path}: missing from the bundle")
    if isinstance(exc, IsADirectoryError):
        return BundleError(f"{path}: is a directory, expected a file")
    return BundleError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}")


def json_depth(text: str) -> int:
    """How deeply JSON text nests its arrays and objects (counted before parsing, so no parser recurses past a bound)."""
    depth = deepest = 0
    for bracket in re.finditer(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not a JSON number; re-export the bundle")


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
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{meta_path}: not UTF-8 text") from None
    if json_depth(text) > MAX_JSON_DEPTH:
        raise BundleError(f"{meta_path}: {say('too_deep', limit=MAX_JSON_DEPTH)}")
    try:
        data = json.loads(text, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    except ValueError as exc:  # NaN or Infinity, which JSON (and so the JavaScript host) does not have
        raise BundleError(f"{meta_path}: {exc}") from None
    meta = BundleMeta.from_dict(data, str(meta_path))
    for side in (meta.source, meta.target):
        if side.spm_model is not None and side.spm_sha256:
            spm = path / side.spm_model
            if hashlib.sha256(read_bytes(spm)).hexdigest() != side.spm_sha256:
                raise BundleError(f"{spm}: sha256 does not match {BUNDLE_FILE}; re-export the bundle")
    try:
        source, target = codec_pair(meta.model, meta.source.vocab, meta.target.vocab,
                                    spm_paths=[path / s.spm_model if s.spm_model else None for s in (meta.source, meta.target)],
                                    space_symbol=meta.conventions.space_symbol)
    except BundleError as exc:
        raise BundleError(f"{meta_path}: {exc}") from None
    return Bundle(path, meta, source, target)
