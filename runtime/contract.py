"""The bundle contract: every rule of bundle.json as data, read by every host.

runtime/bundle_contract.json holds each field of the model configs and of the decoding conventions
(type, default or required, range, the format version that needs it), the graph ports, the parity
figures' ranges and the words of every refusal. The Python dataclasses (runtime/config.py,
runtime/conventions.py) declare the rules beside their fields; tools/bundle_contract.py writes them out
as the contract and a test fails when the committed file differs. This module validates from the file, as
hosts/js/bundle-checks.mjs does (from its generated copy, hosts/js/bundle-contract.mjs), so no host holds a
hand copy of a default, a range or a message.

    .venv/bin/python tools/bundle_contract.py   # after changing a rule: rewrite both files, review the diff
"""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path
from typing import Any

CONTRACT_FILE = Path(__file__).with_name("bundle_contract.json")


def rule(*, minimum: float | None = None, maximum: float | None = None, exclusive_maximum: bool = False,
         choices: tuple | None = None, max_chars: int | None = None, since: int | None = None) -> dict[str, Any]:
    """dataclasses.field metadata: the range a field's value must be in, and the format version that introduced it."""
    spec = {"min": minimum, "max": maximum, "max_exclusive": exclusive_maximum or None,
            "choices": list(choices) if choices is not None else None, "max_chars": max_chars, "since": since}
    return {"contract": {k: v for k, v in spec.items() if v is not None}}


# The words of every refusal of bundle.json, by name: {placeholders} are filled with values as Python's repr()
# writes them (`shown`). The JavaScript host formats the same templates (bundle-checks.mjs, `say`).
MESSAGES = {
    "not_object": "expected a JSON object",
    "too_deep": "nested more than {limit} deep, far beyond a bundle's metadata; refused",
    "graph_too_large": "larger than {limit} bytes, more than a self-contained ONNX model can hold; refused",
    "no_format_version": "no format_version; not a seq2edge bundle",
    "bad_format_version": "format_version must be a whole number >= 1, found {value}",
    "newer_format_version": "format version {value} is newer than this seq2edge reads ({newest}); upgrade seq2edge",
    "needs_format_version": "{name} needs format_version {since} or newer, found {value}; re-export the bundle",
    "missing_field": "missing or malformed field {name}",
    "unknown_model_keys": "unknown model config keys {keys}; was it written by a newer seq2edge?",
    "invalid_model_config": "invalid model config: {problems}",
    "type_int": "{name} must be a whole number, not {value}",
    "type_bool": "{name} must be true or false, not {value}",
    "type_float": "{name} must be a finite number, not {value}",
    "type_str": "{name} must be a string, not {value}",
    "type_list_str": "{name} must be a list of non-empty strings, not {value}",
    "choices": "{name} must be one of {choices}, not {value}",
    "at_least": "{name} must be at least {min}, not {value}",
    "in_range": "{name} must be in [{min}, {max}], not {value}",
    "in_open_range": "{name} must be in [{min}, {max}), not {value}",
    "max_chars": "{name} must be at most {max_chars} character(s), not {value}",
    "even_hidden": "hidden must be even for a bidirectional encoder (half per direction)",
    "special_ids": "special ids {ids} must be distinct and below both vocabulary sizes ({src_vocab_size}, {tgt_vocab_size})",
    "origin_named": "origin must say what made the model",
    "vocab_not_strings": "{side}.vocab must be a list of non-empty strings",
    "vocab_duplicate": "{side}.vocab holds {token} twice; a token must have one id",
    "vocab_size": "{side} vocabulary has {found} tokens, the model config says {size}",
    "vocab_specials": "{side} vocabulary must start with {specials}, found {found}",
    "side_disagrees": "{side}.{name} is {value} but the model config says {expected}; re-export the bundle",
    "spm_model_not_plain": "{side}.spm_model must be a plain file name in the bundle",
    "special_ids_disagree": "special_ids {value} disagree with the model config {expected}; re-export the bundle",
    "conventions_not_object": "conventions must be an object",
    "unknown_conventions": "unknown conventions {keys}; was it written by a newer seq2edge?",
    "invalid_conventions": "invalid conventions: {problems}",
    "never_emit_unknown": "conventions.never_emit names {token}, which is not in the target vocabulary",
    "never_emit_eos": "conventions.never_emit names </s>: no output could end",
    "parity_not_object": "parity must be an object of figures per precision",
    "parity_precision": "parity.{precision} must be an object of figures of a known precision",
    "parity_figure": "parity.{precision}.{name} must be a number in [{min}, {max}], not {value}",
    "parity_greedy_not_object": "parity.{precision}.greedy_graph must be an object",
    "no_fp32_graphs": "graphs lists no fp32 encoder and decoder",
    "unknown_precision": "unknown graph precision {value}",
    "graph_entry": "{name} needs file and sha256",
    "graph_file_not_plain": "{name}.file must be a plain file name in the bundle",
    "state_needs_origin": "state lists a decoder state's tensors, which only a model with an origin has",
    "state_size_with_list": ("model.state_size is {value}: it must be 0 when bundle.json lists the state's tensors (state), "
                             "and at least 1 when it does not"),
    "state_not_list": "state must be a list of 1 to {limit} tensors",
    "state_entry": "state[{index}] must be an object with dtype and dims",
    "state_dtype": "state[{index}].dtype must be one of {choices}, not {value}",
    "state_dims": ("state[{index}].dims must list at most {rank} sizes after the batch axis, each a whole number in [1, {max}] "
                   "or null (the one step axis), not {value}"),
}

# A decoder state of several tensors (bundle.json's "state", format 3): what a tensor may be, and the ports that take
# the place of the one packed state tensor. Bounds keep a hostile bundle.json from describing tensors no host could hold.
STATE_RULES = {"since": 3, "dtypes": ["float", "int64"], "max_tensors": 1024, "max_rank": 8, "max_dim": 1 << 24,
               "inputs": "state_{index}", "outputs": "new_state_{index}", "replaces": {"state": "inputs", "new_state": "outputs"},
               "step_axis": {"inputs": "steps", "outputs": "next_steps"}}

# Parity figures a host reads, and their ranges: a bundle.json that breaks them is refused at load, not when decoding
# first reads them. Any other figure is free-form (what export measured, for people).
PARITY_RANGES = {"token_agreement": [0, 1], "token_agreement_with_fp32": [0, 1], "batched_speedup": [0, None],
                 "tolerance": [0, None], "max_abs_log_prob_diff": [0, None]}


@functools.lru_cache(maxsize=1)
def contract() -> dict[str, Any]:
    """The committed contract file (what every host validates from)."""
    return json.loads(CONTRACT_FILE.read_text(encoding="utf-8"))


def say(message: str, **values: Any) -> str:
    """The named refusal's words with its placeholders filled; values that are not already text are shown as repr()."""
    template = contract()["messages"][message]
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)] if isinstance(values[m.group(1)], str) and m.group(1) in _TEXT
                  else shown(values[m.group(1)]), template)


# Placeholders that hold words (a field's name, a side, joined problems), not values to quote.
_TEXT = {"name", "side", "problems", "precision", "choices"}


def shown(value: Any) -> str:
    """A value as a message shows it: Python's repr() (the JavaScript host's pyRepr writes the same, infinity as inf)."""
    return repr(value)


def field_problems(specs: list[dict[str, Any]], values: dict[str, Any]) -> list[str]:
    """What is wrong with `values` (every field present) against the field specs: type problems first, and only
    when there are none, each field's range (a wrong type makes a range meaningless)."""
    problems = [p for spec in specs if (p := _type_problem(spec, values[spec["name"]]))]
    if problems:
        return problems
    return [p for spec in specs if (p := _range_problem(spec, values[spec["name"]]))]


def _type_problem(spec: dict[str, Any], value: Any) -> str | None:
    kind, name = spec["type"], spec["name"]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {"int": number and isinstance(value, int), "bool": isinstance(value, bool),
          "float": number and math.isfinite(value), "str": isinstance(value, str),
          "list[str]": isinstance(value, (list, tuple)) and all(isinstance(t, str) and t for t in value)}[kind]
    return None if ok else say(f"type_{kind.replace('[', '_').rstrip(']')}", name=name, value=value)


def _range_problem(spec: dict[str, Any], value: Any) -> str | None:
    name = spec["name"]
    if "choices" in spec and value not in spec["choices"]:
        return say("choices", name=name, choices=", ".join(spec["choices"]), value=value)
    low, high = spec.get("min"), spec.get("max")
    if high is not None and not (low <= value < high if spec.get("max_exclusive") else low <= value <= high):
        return say("in_open_range" if spec.get("max_exclusive") else "in_range", name=name, min=low, max=high, value=value)
    if low is not None and high is None and value < low:
        return say("at_least", name=name, min=low, value=value)
    if "max_chars" in spec and len(value) > spec["max_chars"]:
        return say("max_chars", name=name, max_chars=spec["max_chars"], value=value)
    return None


def with_defaults(specs: list[dict[str, Any]], given: dict[str, Any]) -> dict[str, Any]:
    """`given` with every missing optional field at its default (a missing required field stays missing)."""
    return {s["name"]: given[s["name"]] if s["name"] in given else s["default"] for s in specs
            if s["name"] in given or "default" in s}
