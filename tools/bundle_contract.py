"""Write the bundle contract from the Python definitions: runtime/bundle_contract.json, the JavaScript host's
module of the same data (hosts/js/bundle-contract.mjs, which a browser imports without a JSON loader) and the
native host's (hosts/c/src/bundle_contract.inc, a C++ string literal compiled into the library).

    python tools/bundle_contract.py            # rewrite the three files; review the diff
    python tools/bundle_contract.py --check    # exit 1 naming each stale file (tests/test_contract.py does this)
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from seq2edge.runtime import interface
from seq2edge.runtime.config import CELL_STATES, ExternalModelConfig, ModelConfig
from seq2edge.runtime.contract import CONTRACT_FILE, MESSAGES, PARITY_RANGES, STATE_RULES
from seq2edge.runtime.conventions import Conventions
from seq2edge.runtime.tokenize import SPECIALS

REPO = Path(__file__).resolve().parents[1]
JS_MODULE = REPO / "hosts" / "js" / "bundle-contract.mjs"
C_INCLUDE = REPO / "hosts" / "c" / "src" / "bundle_contract.inc"
REQUIRED = object()


def field_specs(cls: type) -> list[dict[str, Any]]:
    """Each field of a config dataclass as the contract writes it: name, type, default or required, range."""
    specs = []
    for f in dataclasses.fields(cls):
        spec: dict[str, Any] = {"name": f.name, "type": _TYPE_NAMES[str(f.type)]}
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
        if default is REQUIRED:
            spec["required"] = True
        else:
            spec["default"] = list(default) if isinstance(default, tuple) else default
        spec.update(f.metadata.get("contract", {}))
        specs.append(spec)
    return specs


_TYPE_NAMES = {"int": "int", "bool": "bool", "float": "float", "str": "str", "tuple[str, ...]": "list[str]"}


def describe() -> dict[str, Any]:
    """The contract as the Python definitions state it (what bundle_contract.json must hold)."""
    def ports(kind: str) -> dict[str, Any]:
        inputs, outputs = interface.graph_ports(kind)
        return {role: [{"name": p.name, "dtype": p.dtype, "axes": [a.name for a in p.axes]} for p in group]
                for role, group in (("inputs", inputs), ("outputs", outputs))}

    return {
        "about": "The rules of a seq2edge bundle's bundle.json, read by every host; written by "
                 "tools/bundle_contract.py from runtime/config.py, runtime/conventions.py and runtime/interface.py.",
        "format_version": interface.FORMAT_VERSION,
        "plain_format_version": interface.PLAIN_FORMAT_VERSION,
        "bundle_file": interface.BUNDLE_FILE,
        "max_metadata_bytes": interface.MAX_METADATA_BYTES,
        "max_json_depth": interface.MAX_JSON_DEPTH,
        "max_graph_bytes": interface.MAX_GRAPH_BYTES,
        "max_onnx_depth": interface.MAX_ONNX_DEPTH,
        "precisions": list(interface.PRECISIONS),
        "graphs": list(interface.GRAPHS),
        "optional_graphs": list(interface.OPTIONAL_GRAPHS),
        "graph_formats": list(interface.GRAPH_FORMATS),
        "graph_metadata_keys": {"format_version": interface.META_FORMAT_VERSION, "bundle_id": interface.META_BUNDLE_ID,
                                "precision": interface.META_PRECISION, "model": interface.META_MODEL, "graph": interface.META_GRAPH},
        "vocab_starts_with": list(SPECIALS),
        "dynamic_axes": sorted({a.name for kind in interface.ALL_GRAPHS for group in interface.graph_ports(kind)
                                for p in group for a in p.axes if a.dynamic} | set(STATE_RULES["step_axis"].values())),
        "ports": {kind: ports(kind) for kind in interface.ALL_GRAPHS},
        "model": {
            "own": {"fields": field_specs(ModelConfig),
                    "rules": ["even_hidden", "special_ids"],
                    "axis_sizes": {"hidden": "hidden", "state_size": "cell_states x decoder_layers x hidden (+ hidden with input_feed)",
                                   "vocab": "tgt_vocab_size"}},
            "external": {"marker": "origin", "fields": field_specs(ExternalModelConfig),
                         "rules": ["origin_named", "special_ids"],
                         "axis_sizes": {"hidden": "memory_size", "state_size": "state_size", "vocab": "tgt_vocab_size"}},
            "cell_states": {cell: list(states) for cell, states in CELL_STATES.items()},
        },
        "conventions": {"since": Conventions.SINCE, "fields": field_specs(Conventions),
                        "max_len": "without a requested limit, an input of n source ids (an appended </s> counted) may "
                                   "produce floor(min(max_len_cap, max_len_ratio x n + max_len_offset)) tokens, at least 0 "
                                   "and at most max_tgt_len; max_len_cap 0 is no cap; max_len_ratio 0 is max_tgt_len"},
        "state": STATE_RULES,
        "parity_ranges": PARITY_RANGES,
        "messages": MESSAGES,
    }


def formatted(value, indent: str = "") -> str:
    """JSON with each value on one line where it fits in 110 characters (a field's rule reads as one line)."""
    flat = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, (dict, list)) or len(indent) + len(flat) <= 110:
        return flat
    inner = indent + " "
    if isinstance(value, list):
        return "[\n" + ",\n".join(inner + formatted(v, inner) for v in value) + "\n" + indent + "]"
    return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {formatted(v, inner)}" for k, v in value.items()) + "\n" + indent + "}"


def expected_files() -> dict[Path, str]:
    """Each generated file and the text it must hold."""
    data = formatted(describe())
    module = ("// Generated by tools/bundle_contract.py from the Python definitions: do not edit. The same data as\n"
              "// runtime/bundle_contract.json, as a module (a browser imports it with no JSON loader).\n"
              f"export default {data};\n")
    literal = ("// Generated by tools/bundle_contract.py from the Python definitions: do not edit. The same data as\n"
               "// runtime/bundle_contract.json, as a C++ raw string literal (the library holds no file of its own).\n"
               f'R"contract({data})contract"\n')
    return {CONTRACT_FILE: data + "\n", JS_MODULE: module, C_INCLUDE: literal}


def main() -> int:
    stale = [path for path, text in expected_files().items() if not path.exists() or path.read_text(encoding="utf-8") != text]
    if "--check" in sys.argv[1:]:
        for path in stale:
            print(f"{path.relative_to(REPO)} differs from the Python definitions: run tools/bundle_contract.py")
        return 1 if stale else 0
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
