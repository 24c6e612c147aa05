"""BundleMeta: bundle.json as one dataclass, written by export and read (and checked) by the runtime.

bundle.json repeats a few model facts for readers that do not parse the model
config (special ids, each side's tokeniser and lowercasing); on reading they
must agree with the config, so the two can never disagree silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AnyModelConfig, ExternalModelConfig, model_config_from_dict
from .contract import PARITY_RANGES, contract, say
from .conventions import Conventions
from .errors import BundleError
from .interface import FORMAT_VERSION, GRAPHS, OPTIONAL_GRAPHS, PLAIN_FORMAT_VERSION, PRECISIONS, STATE_LIST_FORMAT_VERSION, StateTensor
from .util import sha256_file


@dataclass(frozen=True)
class GraphEntry:
    file: str  # a plain file name inside the bundle
    sha256: str
    bytes: int | None = None
    ort: GraphEntry | None = None  # the same graph in ORT format (export --ort), for reduced onnxruntime builds

    @classmethod
    def of_file(cls, path: Path) -> GraphEntry:
        """The entry describing the graph file at `path` as it is now."""
        return cls(path.name, sha256_file(path), path.stat().st_size)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "sha256": self.sha256}
        if self.bytes is not None:
            d["bytes"] = self.bytes
        if self.ort is not None:
            d["ort"] = self.ort.to_dict()
        return d


@dataclass(frozen=True)
class SideMeta:
    """One side's tokeniser: kind, lowercasing, vocabulary and, for spm, its model file."""

    tokenizer: str
    lowercase: bool
    vocab: list[str]
    spm_model: str | None = None
    spm_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tokenizer": self.tokenizer, "lowercase": self.lowercase, "vocab": list(self.vocab)}
        if self.spm_model is not None:
            d.update(spm_model=self.spm_model, spm_sha256=self.spm_sha256)
        return d


@dataclass
class BundleMeta:
    """Everything bundle.json holds. `graphs[precision][kind]` lists every graph file."""

    bundle_id: str
    model: AnyModelConfig
    source: SideMeta
    target: SideMeta
    graphs: dict[str, dict[str, GraphEntry]]
    created: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    exported_with: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    conventions: Conventions = field(default_factory=Conventions)
    state: tuple[StateTensor, ...] | None = None  # the decoder state's tensors, when it is more than one packed tensor

    @property
    def format_version(self) -> int:
        if self.state:
            return STATE_LIST_FORMAT_VERSION
        return Conventions.SINCE if self.conventions.active else PLAIN_FORMAT_VERSION

    @property
    def special_ids(self) -> dict[str, int]:
        c = self.model
        return {"pad": c.pad_id, "bos": c.bos_id, "eos": c.eos_id, "unk": c.unk_id}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "bundle_id": self.bundle_id,
            "created": self.created,
            "model": self.model.to_dict(),
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
            "special_ids": self.special_ids,
            "graphs": {p: {k: e.to_dict() for k, e in kinds.items()} for p, kinds in self.graphs.items()},
            "parity": self.parity,
            "exported_with": self.exported_with,
            "checkpoint": self.checkpoint,
            **({"conventions": self.conventions.to_dict()} if self.conventions.active else {}),
            **({"state": [t.to_dict() for t in self.state]} if self.state else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> BundleMeta:
        """Validate the parsed JSON of bundle.json; every problem is a BundleError naming `where`."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: {say('not_object')}")
        version = _check_version(data.get("format_version", _MISSING), where)
        _require(data, where, {"bundle_id": str, "model": dict, "source": dict, "target": dict, "graphs": dict})
        config = model_config_from_dict(data["model"], where=f"{where} (model)")
        sides = {}
        for side, kind, lower, size in (("source", config.src_tokens, config.lowercase_source, config.src_vocab_size),
                                         ("target", config.tgt_tokens, False, config.tgt_vocab_size)):
            sides[side] = _side(data[side], side, kind, lower, size, where)
        special = data.get("special_ids")
        expected = {"pad": config.pad_id, "bos": config.bos_id, "eos": config.eos_id, "unk": config.unk_id}
        if special is not None and special != expected:
            raise BundleError(f"{where}: {say('special_ids_disagree', value=special, expected=expected)}")
        if "conventions" in data and version < Conventions.SINCE:
            raise BundleError(f"{where}: {say('needs_format_version', name='conventions', since=Conventions.SINCE, value=version)}")
        conventions = Conventions.from_dict(data.get("conventions", {}), where)
        _check_conventions(conventions, config, sides["target"].vocab, where)
        state = _state(data.get("state", _MISSING), config, version, where)
        return cls(data["bundle_id"], config, sides["source"], sides["target"], _graphs(data["graphs"], where),
                   created=str(data.get("created", "")), parity=_parity(data.get("parity", {}), where),
                   exported_with=_dict(data, "exported_with"), checkpoint=_dict(data, "checkpoint"), conventions=conventions,
                   state=state)


_MISSING = object()


def _check_conventions(conventions: Conventions, config, target_vocab: list[str], where: str) -> None:
    """Rules that must fit the model: tokens never emitted exist, and are not </s>."""
    index = {t: i for i, t in enumerate(target_vocab)}
    for token in conventions.never_emit:
        if token not in index:
            raise BundleError(f"{where}: {say('never_emit_unknown', token=token)}")
        if index[token] == config.eos_id:
            raise BundleError(f"{where}: {say('never_emit_eos')}")


def _state(state: Any, config, version: int, where: str) -> tuple[StateTensor, ...] | None:
    """bundle.json's list of state tensors (format 3), checked against the contract's bounds; None when there is none."""
    rules = contract()["state"]
    if state is _MISSING:
        if isinstance(config, ExternalModelConfig) and config.state_size == 0:
            raise BundleError(f"{where}: {say('state_size_with_list', value=0)}")
        return None
    if version < rules["since"]:
        raise BundleError(f"{where}: {say('needs_format_version', name='state', since=rules['since'], value=version)}")
    if not isinstance(config, ExternalModelConfig):
        raise BundleError(f"{where}: {say('state_needs_origin')}")
    if config.state_size != 0:
        raise BundleError(f"{where}: {say('state_size_with_list', value=config.state_size)}")
    if not isinstance(state, list) or not 1 <= len(state) <= rules["max_tensors"]:
        raise BundleError(f"{where}: {say('state_not_list', limit=rules['max_tensors'])}")
    tensors = []
    for index, entry in enumerate(state):
        if not isinstance(entry, dict) or set(entry) != {"dtype", "dims"}:
            raise BundleError(f"{where}: {say('state_entry', index=index)}")
        if entry["dtype"] not in rules["dtypes"]:
            raise BundleError(f"{where}: {say('state_dtype', index=index, choices=', '.join(rules['dtypes']), value=entry['dtype'])}")
        dims = entry["dims"]
        whole = isinstance(dims, list) and all(d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in dims)
        if (not whole or len(dims) > rules["max_rank"] or sum(d is None for d in dims) > 1
                or any(d is not None and not 1 <= d <= rules["max_dim"] for d in dims)):
            raise BundleError(f"{where}: {say('state_dims', index=index, rank=rules['max_rank'], max=rules['max_dim'], value=dims)}")
        tensors.append(StateTensor(entry["dtype"], tuple(dims)))
    return tuple(tensors)


def _check_version(version: Any, where: str) -> int:
    if version is _MISSING:
        raise BundleError(f"{where}: {say('no_format_version')}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{where}: {say('bad_format_version', value=version)}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where}: {say('newer_format_version', value=version, newest=FORMAT_VERSION)}")
    return version


def _require(data: dict, where: str, fields: dict[str, type], prefix: str = "") -> None:
    for name, kind in fields.items():
        if not isinstance(data.get(name), kind):
            raise BundleError(f"{where}: {say('missing_field', name=prefix + name)}")


def _dict(data: dict, name: str) -> dict:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _side(info: dict, side: str, kind: str, lower: bool, size: int, where: str) -> SideMeta:
    _require(info, where, {"vocab": list}, prefix=f"{side}.")
    if not all(isinstance(token, str) and token for token in info["vocab"]):
        raise BundleError(f"{where}: {say('vocab_not_strings', side=side)}")
    if len(set(info["vocab"])) != len(info["vocab"]):
        seen: set[str] = set()
        twice = next(t for t in info["vocab"] if t in seen or seen.add(t))
        raise BundleError(f"{where}: {say('vocab_duplicate', side=side, token=twice)}")
    if len(info["vocab"]) != size:
        raise BundleError(f"{where}: {say('vocab_size', side=side, found=len(info['vocab']), size=size)}")
    specials = contract()["vocab_starts_with"]
    if info["vocab"][: len(specials)] != specials:
        raise BundleError(f"{where}: {say('vocab_specials', side=side, specials=specials, found=info['vocab'][: len(specials)])}")
    for name, expected in (("tokenizer", kind), ("lowercase", lower)):
        if name in info and info[name] != expected:
            raise BundleError(f"{where}: {say('side_disagrees', side=side, name=name, value=info[name], expected=expected)}")
    spm_model = info.get("spm_model", f"{side}.spm.model") if kind == "spm" else None
    if spm_model is not None and not _plain_name(spm_model):
        raise BundleError(f"{where}: {say('spm_model_not_plain', side=side)}")
    return SideMeta(kind, lower, list(info["vocab"]), spm_model, info.get("spm_sha256"))


def _parity(parity: Any, where: str) -> dict[str, Any]:
    """The figures a host reads (contract.PARITY_RANGES) in their ranges; any other figure is free-form."""
    if not isinstance(parity, dict):
        raise BundleError(f"{where}: {say('parity_not_object')}")
    for precision, figures in parity.items():
        if precision not in PRECISIONS or not isinstance(figures, dict):
            raise BundleError(f"{where}: {say('parity_precision', precision=precision)}")
        if "greedy_graph" in figures and not isinstance(figures["greedy_graph"], dict):
            raise BundleError(f"{where}: {say('parity_greedy_not_object', precision=precision)}")
        for name, value in [*figures.items(), *(figures.get("greedy_graph") or {}).items()]:
            if name not in PARITY_RANGES:
                continue
            low, high = PARITY_RANGES[name]
            high = math.inf if high is None else high
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise BundleError(f"{where}: {say('parity_figure', precision=precision, name=name, min=low, max=high, value=value)}")
    return parity


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _graphs(graphs: dict, where: str) -> dict[str, dict[str, GraphEntry]]:
    if "fp32" not in graphs:
        raise BundleError(f"{where}: {say('no_fp32_graphs')}")
    table: dict[str, dict[str, GraphEntry]] = {}
    for precision, entries in graphs.items():
        if precision not in PRECISIONS:
            raise BundleError(f"{where}: {say('unknown_precision', value=precision)}")
        table[precision] = {}
        for kind in (*GRAPHS, *OPTIONAL_GRAPHS):
            entry = entries.get(kind) if isinstance(entries, dict) else None
            if entry is None and kind in OPTIONAL_GRAPHS:
                continue
            table[precision][kind] = _graph_entry(entry, f"graphs.{precision}.{kind}", where)
            if isinstance(entry, dict) and entry.get("ort") is not None:
                ort = _graph_entry(entry["ort"], f"graphs.{precision}.{kind}.ort", where)
                table[precision][kind] = GraphEntry(**{**table[precision][kind].__dict__, "ort": ort})
    return table


def _graph_entry(entry: Any, name: str, where: str) -> GraphEntry:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise BundleError(f"{where}: {say('graph_entry', name=name)}")
    if not _plain_name(entry["file"]):
        raise BundleError(f"{where}: {say('graph_file_not_plain', name=name)}")
    size = entry.get("bytes")
    return GraphEntry(entry["file"], entry["sha256"], size if isinstance(size, int) else None)
