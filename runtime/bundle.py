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
from typing import Any

from .config import ModelConfig
from .errors import BundleError
from .interface import BUNDLE_FILE, FORMAT_VERSION, PRECISIONS
from .onnx_scan import MalformedModel, uses_external_data
from .tokenize import TextCodec, Vocabulary

SIDES = ("source", "target")


@dataclass
class Bundle:
    path: Path
    meta: dict[str, Any]
    config: ModelConfig
    source: TextCodec
    target: TextCodec

    @property
    def bundle_id(self) -> str:
        return self.meta["bundle_id"]

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.meta["graphs"]]

    def graph_entry(self, kind: str, precision: str) -> dict[str, Any]:
        graphs = self.meta["graphs"].get(precision)
        if graphs is None:
            have = ", ".join(self.precisions)
            raise BundleError(f"{self.path / BUNDLE_FILE}: no {precision} graphs in this bundle (it has {have}); "
                              f"export them with `seq2edge export --{precision}`")
        return graphs[kind]

    def verified_graph(self, kind: str, precision: str = "fp32") -> Path:
        """The graph's path, after checking its sha256 against bundle.json and that it reads no
        other file (external data). The file is mapped, not copied, so a large graph costs no
        extra memory; onnxruntime then loads it from the path."""
        entry = self.graph_entry(kind, precision)
        path = self.path / entry["file"]
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise BundleError(f"{path}: sha256 does not match {BUNDLE_FILE}; the file is damaged or was replaced, "
                                      "re-export the bundle")
                with memoryview(data) as view:
                    external = uses_external_data(view)
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
    raw = read_bytes(meta_path)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{meta_path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{meta_path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{meta_path}: no format_version; not a seq2edge bundle")
    if version > FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format version {version} is newer than this seq2edge reads ({FORMAT_VERSION}); upgrade seq2edge")
    _require(meta, meta_path, {"bundle_id": str, "model": dict, "source": dict, "target": dict, "graphs": dict})
    config = ModelConfig.from_dict(meta["model"], where=f"{meta_path} (model)")
    _check_graph_table(meta["graphs"], meta_path)
    codecs = {}
    for side, kind, lower, size in (("source", config.src_tokens, config.lowercase_source, config.src_vocab_size),
                                     ("target", config.tgt_tokens, False, config.tgt_vocab_size)):
        info = meta[side]
        _require(info, meta_path, {"vocab": list}, prefix=f"{side}.")
        if len(info["vocab"]) != size:
            raise BundleError(f"{meta_path}: {side} vocabulary has {len(info['vocab'])} tokens, the model config says {size}")
        try:
            vocab = Vocabulary(info["vocab"])
        except BundleError as exc:
            raise BundleError(f"{meta_path}: {side} {exc}") from None
        spm = None
        if kind == "spm":
            spm = path / info.get("spm_model", f"{side}.spm.model")
            if not spm.resolve().is_relative_to(path.resolve()):
                raise BundleError(f"{meta_path}: {side}.spm_model points outside the bundle")
            expected = info.get("spm_sha256")
            if expected and hashlib.sha256(read_bytes(spm)).hexdigest() != expected:
                raise BundleError(f"{spm}: sha256 does not match {BUNDLE_FILE}; re-export the bundle")
        codecs[side] = TextCodec(kind, vocab, lower, spm)
    return Bundle(path, meta, config, codecs["source"], codecs["target"])


def _require(data: dict, where: Path, fields: dict[str, type], prefix: str = "") -> None:
    for name, kind in fields.items():
        if not isinstance(data.get(name), kind):
            raise BundleError(f"{where}: missing or malformed field {prefix}{name}")


def _check_graph_table(graphs: dict, meta_path: Path) -> None:
    if "fp32" not in graphs:
        raise BundleError(f"{meta_path}: graphs lists no fp32 encoder and decoder")
    for precision, entries in graphs.items():
        if precision not in PRECISIONS:
            raise BundleError(f"{meta_path}: unknown graph precision {precision!r}")
        for kind in ("encoder", "decoder"):
            entry = entries.get(kind) if isinstance(entries, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
                raise BundleError(f"{meta_path}: graphs.{precision}.{kind} needs file and sha256")
            if "/" in entry["file"] or "\\" in entry["file"] or entry["file"].startswith("."):
                raise BundleError(f"{meta_path}: graphs.{precision}.{kind}.file must be a plain file name in the bundle")
