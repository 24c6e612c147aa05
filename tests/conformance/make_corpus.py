"""The conformance corpus: what the Python runtime does, written down as cases both hosts must reproduce.

    .venv/bin/python tests/conformance/make_corpus.py            # cases.jsonl from the committed bundles
    .venv/bin/python tests/conformance/make_corpus.py --bundles  # train and export the bundles first

Each line of cases.jsonl is one case: a bundle (a folder of tests/conformance/bundles/), optional damage
done to a copy of it, load options, inputs and search options, and what the Python runtime gave:
per input the tokens and score, or the error; or the error loading the bundle gave. Errors are kept
as their class and the first characters of their message with the bundle's directory left out
(`normalise`), so that each host may say where it looked in its own words. tests/test_conformance.py
runs the cases against the Python runtime, hosts/js/test/conformance.test.mjs (`npm test`, `node
--test`) against the JavaScript host; a change of behaviour is a change of this file.

Options use the Python runtime's names; the JavaScript runner maps them to its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLES = HERE / "bundles"
CASES = HERE / "cases.jsonl"
PREFIX = 60  # characters of an error message that both hosts must agree on


def normalise(message: str) -> str:
    """An error message without the directory of the file it names, or the input it quotes."""
    message = re.sub(r"^[^\s:]*/(?=[^/\s:]+[ :])", "", message)  # /tmp/x/bundle.json: ... -> bundle.json: ...
    message = re.sub(r"^input \d+: ", "", message)
    message = re.sub(r"^'.*?': ", "", message)  # the quoted input that Python puts first
    message = re.sub(r" \(to decode it anyway: .*\)$", "", message)  # the option to pass, in each host's own spelling
    message = re.sub(r" \(onnxruntime: .*\)$", "", message)  # onnxruntime's own words, which differ between its bindings
    message = re.sub(r"(not valid JSON \(line \d+\)).*", r"\1", message)  # the rest is each JSON parser's own words
    return message[:PREFIX]


# ---- damage done to a copy of a bundle: plain operations both runners implement


DAMAGE = {
    "missing bundle.json": [["remove", "bundle.json"]],
    "missing decoder": [["remove", "decoder.onnx"]],
    "truncated decoder": [["truncate", "decoder.onnx"]],
    "bit-flipped encoder": [["flip", "encoder.onnx"]],
    "newer format": [["set", ["format_version"], 99]],
    "not JSON": [["write", "bundle.json", "{ not json"]],
    "not an object": [["write", "bundle.json", "[1, 2]"]],
    "vocabulary size": [["set", ["target", "vocab"], ["<pad>", "<s>", "</s>", "<unk>"]]],
    "unknown config key": [["set", ["model", "heads"], 8]],
    "graph path escapes": [["set", ["graphs", "fp32", "decoder", "file"], "../decoder.onnx"]],
    "bundle.json is a directory": [["remove", "bundle.json"], ["mkdir", "bundle.json"]],
    "eos_id out of range": [["set", ["model", "eos_id"], 999], ["delete", ["special_ids"]]],
    "special id of the wrong type": [["set", ["model", "eos_id"], "2"], ["delete", ["special_ids"]]],
    "duplicated vocabulary token": [["set", ["target", "vocab", 5], "@4"]],
    "missing model section": [["delete", ["model"]]],
    "parity of the wrong type": [["set", ["parity", "fp32"], [1, 2]]],
    "parity figure out of range": [["set", ["parity", "fp32", "token_agreement"], "all"]],
    "graph links out of the bundle": [["link-out", "decoder.onnx"]],
    "bundle.json unreadable (a link to itself)": [["remove", "bundle.json"], ["self-link", "bundle.json"]],
    "bundle.json is a FIFO": [["fifo", "bundle.json"]],
    "graph is a FIFO": [["fifo", "decoder.onnx"]],
    "bundle.json nested deep": [["nest", "bundle.json", 100000]],
    "NaN in the parity figures": [["replace", "bundle.json", '"parity": {', '"parity": {"fp32": {"tolerance": NaN}, "x": {']],
    "truncated graph re-hashed": [["truncate", "decoder.onnx"], ["rehash", "decoder.onnx", ["graphs", "fp32", "decoder", "sha256"]]],
    "decoder input renamed": [["copy", "decoder.onnx", "damaged/decoder-input-renamed.onnx"],
                              ["rehash", "decoder.onnx", ["graphs", "fp32", "decoder", "sha256"]]],
    "format_version a fraction": [["set", ["format_version"], 1.5]],
    "no format_version": [["delete", ["format_version"]]],
    "bidirectional with an odd hidden size": [["set", ["model", "bidirectional"], True], ["set", ["model", "hidden"], 47]],
    "no fp32 graphs": [["delete", ["graphs", "fp32"]]],
    "graphs of an unknown precision": [["set", ["graphs", "fp64"], {"encoder": {"file": "encoder.onnx", "sha256": "0"},
                                                                    "decoder": {"file": "decoder.onnx", "sha256": "0"}}]],
    "parity not an object": [["set", ["parity"], [1]]],
    "parity's greedy_graph not an object": [["set", ["parity", "fp32", "greedy_graph"], [1]]],
    "special_ids disagree with the model": [["set", ["special_ids", "unk"], 4]],
    "conventions in a format 1 bundle": [["set", ["format_version"], 1]],
    "conventions not an object": [["set", ["conventions"], [1]]],
    "unknown convention": [["set", ["conventions"], {"beam_bonus": 1}]],
    "graph nested 1,500 subgraphs deep": [["copy", "decoder.onnx", "damaged/deep-graph.onnx"],
                                          ["rehash", "decoder.onnx", ["graphs", "fp32", "decoder", "sha256"]]],
    "graph over 2 GiB": [["grow", "decoder.onnx", 2**31]],
    "a convention that ends no output": [["set", ["conventions"], {"never_emit": ["</s>"]}]],
    "vocabulary without the specials first": [["set", ["target", "vocab", 3], "AA0"], ["set", ["target", "vocab", 4], "<unk>"]],
}


def damage(bundle: Path, steps: list) -> None:
    """Apply DAMAGE steps to the bundle copy at `bundle` (the JavaScript runner has the same operations)."""
    for step in steps:
        op, target = step[0], step[1]
        if op == "remove":
            (bundle / target).unlink()
        elif op == "truncate":
            data = (bundle / target).read_bytes()
            (bundle / target).write_bytes(data[: len(data) // 2])
        elif op == "flip":
            data = bytearray((bundle / target).read_bytes())
            data[len(data) // 2] ^= 0x10
            (bundle / target).write_bytes(bytes(data))
        elif op == "write":
            (bundle / target).write_text(step[2])
        elif op == "mkdir":
            (bundle / target).mkdir()
        elif op == "copy":  # a file made by make_damaged_decoder, in place of `target`
            shutil.copyfile(BUNDLES / step[2], bundle / target)
        elif op == "self-link":
            (bundle / target).symlink_to(bundle / target)
        elif op == "fifo":
            (bundle / target).unlink()
            os.mkfifo(bundle / target)
        elif op == "grow":  # a sparse file of step[2] bytes: nothing is written
            os.truncate(bundle / target, step[2])
        elif op == "nest":
            (bundle / target).write_text("[" * step[2] + "]" * step[2])
        elif op == "replace":
            (bundle / target).write_text((bundle / target).read_text().replace(step[2], step[3], 1))
        elif op == "rehash":
            damage(bundle, [["set", step[2], hashlib.sha256((bundle / target).read_bytes()).hexdigest()]])
        elif op == "link-out":
            outside = bundle.parent / f"elsewhere-{target}"
            shutil.move(bundle / target, outside)
            (bundle / target).symlink_to(outside)
        elif op in ("set", "delete", "delete-if-present"):
            meta = json.loads((bundle / "bundle.json").read_text())
            *path, last = target
            node = meta
            for key in path:
                node = node[key]
            if op == "delete-if-present":
                node.pop(last, None)
            elif op == "delete":
                del node[last]
            else:
                value = step[2]
                node[last] = node[int(value[1:])] if isinstance(value, str) and value.startswith("@") else value
            (bundle / "bundle.json").write_text(json.dumps(meta))
        else:
            raise ValueError(f"unknown damage {op}")


# ---- the cases


WORDS = ["edge", "attention", "onnx", "phoneme", "device", "tokenizer", "a", "knightley", "pronunciation", "xylophone"]


# Sources of the attention bundle: short ones, and ones far longer than the 5 positions export traced with.
ATTENTION_INPUTS = ["abc", "jihgf", "a", "bead", "hgfedcba", "abcdefghij" * 6, "jihgfedcba" * 9]


def decoding_cases() -> list[dict]:
    """(bundle, load options, inputs, search options) of every decoding case."""
    tokenising = ["cafe\u0301", "caf\u00e9", "  edge\t", "\ufeffedge", "EDGE", "q1q", "", "edge" * 20]
    cases = [
        ("g2p", {}, WORDS, {}),
        ("g2p", {}, WORDS, {"batch_size": 1}),
        ("g2p", {"precision": "int8"}, WORDS, {"batch_size": 1}),
        ("g2p", {"greedy_graph": True}, WORDS, {"batch_size": 1}),
        ("g2p", {"greedy_graph": True, "precision": "int8"}, WORDS, {"batch_size": 1}),
        ("g2p", {}, WORDS, {"beam_size": 3, "nbest": 3}),
        ("g2p", {}, WORDS, {"beam_size": 4, "nbest": 2, "length_penalty": 1.0}),
        ("g2p", {}, WORDS, {"min_len": 6}),
        ("g2p", {}, WORDS, {"max_len": 2}),
        ("g2p", {}, WORDS, {"sample": True, "seed": 7}),
        ("g2p", {}, WORDS, {"sample": True, "seed": 7, "temperature": 0.6, "top_k": 5}),
        ("g2p", {}, WORDS, {"sample": True, "seed": 3, "top_p": 0.8, "batch_size": 1}),
        ("g2p", {"ensemble": ["g2p"]}, WORDS, {}),
        ("g2p", {"ensemble": ["g2p"]}, WORDS, {"beam_size": 3}),
        ("g2p", {}, tokenising, {}),
        ("g2p", {"unknown": "unk"}, tokenising, {}),
        ("g2p", {"unknown": "skip"}, tokenising, {}),
        ("g2p", {"unknown": "unk", "too_long": "truncate"}, tokenising, {}),
        ("g2p", {}, ["\u2003edge\u00a0", "\u3000onnx", "edge\r"], {}),
        ("spm", {}, ["ka to mi", "KA TO", "\u00e7a\u00fcn lo", "ka  to\u00a0mi", "\uff4b\uff41 to", "ka xq to", "\u00e7a \U0001f600"], {}),
        ("spm", {"unknown": "unk"}, ["ka xq to", "\u00e7a \U0001f600", "Mi Ra"], {"beam_size": 3, "nbest": 2}),
        ("spm", {"unknown": "skip"}, ["ka xq to", "\U0001f600"], {}),
        ("conventions", {}, ["abc", "a b", "hgfedcba", "b", "h g f e d c b a hg", "jj"], {}),
        ("conventions", {"greedy_graph": True}, ["abc", "a b", "hgfedcba", "b"], {"batch_size": 1}),
        ("conventions", {}, ["abc", "a b", "hgfedcba"], {"beam_size": 3, "nbest": 2}),
        ("conventions", {}, ["abc", "a b", "hgfedcba"], {"max_len": 1}),
        ("positions-unprobed", {}, ["abc", "abcdefghijabc", "jab", "hgfedcbaabcdefghij", "fig"], {}),
        ("positions-unprobed", {}, ["abc", "abcdefghijabc", "jab", "hgfedcbaabcdefghij", "fig"], {"batch_size": 1}),
        ("positions-unprobed", {}, ["abc", "abcdefghijabc", "jab"], {"beam_size": 2, "nbest": 2}),
        ("attention", {}, ATTENTION_INPUTS, {}),
        ("attention", {}, ATTENTION_INPUTS, {"batch_size": 1}),
        ("attention", {"greedy_graph": True}, ATTENTION_INPUTS, {"batch_size": 1}),
        ("attention", {}, ATTENTION_INPUTS, {"beam_size": 3, "nbest": 2}),
        ("growing", {}, ATTENTION_INPUTS, {}),
        ("growing", {}, ATTENTION_INPUTS, {"batch_size": 1}),
        ("growing", {"greedy_graph": True}, ATTENTION_INPUTS, {"batch_size": 1}),
        ("growing", {}, ATTENTION_INPUTS, {"beam_size": 3, "nbest": 2}),
        ("growing", {}, ATTENTION_INPUTS, {"max_len": 3, "min_len": 2}),
        ("growing", {}, ATTENTION_INPUTS, {"sample": True, "seed": 5, "temperature": 0.8}),
        ("growing", {"ensemble": ["attention"]}, ATTENTION_INPUTS, {}),
        ("growing", {"ensemble": ["attention"]}, ATTENTION_INPUTS, {"beam_size": 2, "nbest": 2}),
    ]
    return [{"kind": "decode", "bundle": b, "load": load, "inputs": inputs, "options": options} for b, load, inputs, options in cases]


def results_of(case: dict, bundle: Path | None = None) -> list[dict]:
    from seq2edge.runtime import Seq2Seq

    load = {**case["load"], "ensemble": [BUNDLES / name for name in case["load"].get("ensemble", [])]}
    model = Seq2Seq.load(bundle or BUNDLES / case["bundle"], providers="cpu", threads=1, **load)
    out = []
    for r in model.decode(case["inputs"], errors="return", **case["options"]):
        if not r.ok:
            out.append({"error": normalise(r.error)})
            continue
        hyps = r.nbest or [r]
        out.append({"hypotheses": [{"text": h.text, "tokens": h.tokens, "score": round(h.score, 6)} for h in hyps]})
    return out


def load_error_of(case: dict) -> dict:
    from seq2edge.runtime import Seq2Seq
    from seq2edge.runtime.errors import Seq2EdgeError

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(BUNDLES / case["bundle"], bundle)
        damage(bundle, case["damage"])
        try:
            Seq2Seq.load(bundle, providers="cpu")
        except Seq2EdgeError as exc:
            return {"class": type(exc).__name__, "message": normalise(str(exc))}
    raise AssertionError(f"{case['name']}: the damaged bundle loaded")


def outcome_of(case: dict) -> dict:
    """What loading a changed copy of a bundle gives: the error, or the settings it resolved (every default filled)
    and the decoding of a few inputs."""
    import dataclasses

    from seq2edge.runtime import Seq2Seq
    from seq2edge.runtime.errors import Seq2EdgeError

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(BUNDLES / case["bundle"], bundle)
        damage(bundle, case["damage"])
        try:
            model = Seq2Seq.load(bundle, providers="cpu", threads=1)
        except Seq2EdgeError as exc:
            return {"class": type(exc).__name__, "message": normalise(str(exc))}
        conventions = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.bundle.meta.conventions).items()}
        return {"model": model.config.to_dict(), "conventions": conventions,
                "results": results_of({**case, "load": {}, "options": {}, "inputs": CONTRACT_INPUTS[case["bundle"]]}, bundle)}


# Sampling's draws: splitmix64 of (seed, input position, step) as a uniform number in [0, 1). Seeds and positions
# are strings: JSON numbers past 2 ** 53 do not survive JavaScript.
DRAWS = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 0, 1), (7, 12, 3), (-1, 5, 2), (2**63, 2**40, 250), (2**64 - 1, 2**63 - 1, 0),
         (123456789, 99999, 63)]


def uniform_of(seed: str, position: str, step: int) -> float:
    import numpy as np

    from seq2edge.runtime.search import _uniform

    return float(_uniform(int(seed), np.array([int(position)], dtype=np.uint64), step)[0])


# ---- the contract's cases: every optional key of bundle.json left out and at each end of its range, and every refusal


CONTRACT_INPUTS = {"g2p": ["edge", "onnx", "a"], "conventions": ["abc", "a b", "hgfedcba"], "growing": ["abc", "hgfedcba"]}

# bundle.json's list of state tensors (format 3), changed one way at a time in the growing-state bundle.
STATE_CHANGES = [
    ("state left out", [["delete", ["state"]]]),
    ("state not a list", [["set", ["state"], {"dtype": "float", "dims": [2, None, 8]}]]),
    ("state an empty list", [["set", ["state"], []]]),
    ("state over the most tensors", [["set", ["state"], [{"dtype": "float", "dims": [1]}] * 1025]]),
    ("state entry not an object", [["set", ["state", 0], "int64"]]),
    ("state entry with another key", [["set", ["state", 0, "step_axis"], 1]]),
    ("state dtype float16", [["set", ["state", 0, "dtype"], "float16"]]),
    ("state dtype of the wrong type", [["set", ["state", 0, "dtype"], 7]]),
    ("state dims with two step axes", [["set", ["state", 1, "dims"], [2, None, None]]]),
    ("state dims with a 0", [["set", ["state", 1, "dims"], [0, None, 8]]]),
    ("state dims past the largest size", [["set", ["state", 1, "dims"], [2, None, 2**24 + 1]]]),
    ("state dims of nine axes", [["set", ["state", 1, "dims"], [1] * 9]]),
    ("state dims a fraction", [["set", ["state", 1, "dims"], [2, None, 8.5]]]),
    ("state dims true", [["set", ["state", 1, "dims"], [True, None, 8]]]),
    ("state dims not a list", [["set", ["state", 1, "dims"], 8]]),
    ("state in a format 2 bundle", [["set", ["format_version"], 2]]),
    ("state with a packed state size", [["set", ["model", "state_size"], 32]]),
    ("state one tensor short of the graphs", [["delete", ["state", 2]]]),
    ("state axis other than the graphs'", [["set", ["state", 1, "dims"], [2, None, 4]]]),
    ("state int64 where the graphs have float", [["set", ["state", 1, "dtype"], "int64"]]),
    ("state in seq2edge's own model", [["set", ["state"], [{"dtype": "float", "dims": [8]}]], ["set", ["format_version"], 3]]),
]


def field_values(spec: dict) -> list[tuple[str, object]]:
    """(label, value) for a field of the contract: its range's ends, one past each end, and a value of the wrong type."""
    kind, low, high = spec["type"], spec.get("min"), spec.get("max")
    if "choices" in spec:
        values = [(f"= {c}", c) for c in spec["choices"]] + [("not a choice", "none-of-these")]
    elif kind == "bool":
        values = [("true", True), ("false", False)]
    elif kind == "list[str]":
        values = [("empty", []), ("one token", ["t"]), ("an empty token", [""])]
    elif kind == "str":
        values = [("empty", ""), ("one character", "\u2581")] + ([("past max_chars", "ab")] if "max_chars" in spec else [])
    else:
        values = []
        if low is not None:
            values += [("at min", low), ("below min", low - 1 if kind == "int" else low - 0.5)]
        if high is not None:
            values += [("at max", high), ("past max", high + 1)]
        if low is None and high is None:
            values += [("-1", -1), ("large", 2**31)]
        if kind == "float":
            values += [("fraction", 0.25)]
    wrong = "1" if kind != "str" else 1
    return values + [("of the wrong type", wrong)]


def contract_cases() -> list[dict]:
    """Every field the contract lists, in the bundle that uses it: left out (when optional) and at each end of its range."""
    contract = json.loads((HERE.parents[1] / "runtime" / "bundle_contract.json").read_text(encoding="utf-8"))
    groups = [("g2p", ["model"], contract["model"]["own"]["fields"]),
              ("conventions", ["model"], contract["model"]["external"]["fields"]),
              ("conventions", ["conventions"], contract["conventions"]["fields"])]
    cases = []
    for bundle, path, specs in groups:
        for spec in specs:
            where = [*path, spec["name"]]
            steps = [] if path == ["conventions"] else [["delete", ["special_ids"]]]  # special_ids would repeat the model's ids
            cases.append((bundle, f"{'.'.join(where)} left out", [*steps, ["delete-if-present", where]]))
            for label, value in field_values(spec):
                cases.append((bundle, f"{'.'.join(where)} {label}", [*steps, ["set", where, value]]))
    for bundle, key in [("g2p", ["special_ids"]), ("g2p", ["created"]), ("g2p", ["parity"]), ("g2p", ["exported_with"]),
                        ("g2p", ["checkpoint"]), ("g2p", ["source", "tokenizer"]), ("g2p", ["target", "lowercase"]),
                        ("g2p", ["graphs", "fp32", "encoder", "bytes"]), ("g2p", ["graphs", "fp32", "greedy"]),
                        ("g2p", ["graphs", "int8"]), ("conventions", ["conventions"])]:
        cases.append((bundle, f"{'.'.join(key)} left out", [["delete-if-present", key]]))
    for label, steps in STATE_CHANGES:
        cases.append(("g2p" if "own model" in label else "growing", label, steps))
    for name, (low, high) in contract["parity_ranges"].items():
        for label, value in [("at min", low), ("below min", low - 0.5)] + ([("at max", high), ("past max", high + 0.5)] if high else []):
            cases.append(("g2p", f"parity.fp32.{name} {label}", [["set", ["parity", "fp32", name], value]]))
    return [{"name": f"contract: {bundle} {label}", "kind": "contract", "bundle": bundle, "damage": steps}
            for bundle, label, steps in cases]


def make_cases() -> list[dict]:
    cases = [{"name": f"draw: seed {seed}, position {position}, step {step}", "kind": "draw", "seed": str(seed),
              "position": str(position), "step": step, "expect": uniform_of(str(seed), str(position), step)}
             for seed, position, step in DRAWS]
    for i, case in enumerate(decoding_cases()):
        case = {"name": f"decode {i}: {case['bundle']} {case['load']} {case['options']}", **case}
        case["expect"] = results_of(case)
        cases.append(case)
    for name, steps in DAMAGE.items():
        bundle = "conventions" if "convention" in name else "g2p"
        case = {"name": f"broken bundle: {name}", "kind": "load", "bundle": bundle, "damage": steps}
        case["expect"] = load_error_of(case)
        cases.append(case)
    for case in contract_cases():
        case["expect"] = outcome_of(case)
        cases.append(case)
    return cases


# ---- the bundles (--bundles): trained in seconds, committed


def make_bundles() -> None:
    sys.path.insert(0, str(HERE.parent))
    import torch
    from conftest import export_tiny, train_tiny
    from test_own_model import RULES, SPACED, SPACED_TEXTS, TARGET, TwoLayerLSTM

    from seq2edge.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        # trained enough to have preferences: near ties could round either way on another host
        checkpoint = train_tiny(Path(tmp) / "ckpt", epochs=10, limit=3000, embed=24, hidden=48, batch_size=32)
        shutil.rmtree(BUNDLES / "g2p", ignore_errors=True)
        export_tiny(checkpoint, BUNDLES / "g2p", int8=True, greedy_graph=True, parity_words=100)
    torch.manual_seed(2)
    model = TwoLayerLSTM(len(SPACED), len(TARGET)).eval()
    with torch.no_grad():
        model.out.bias[3] -= 0.5
    make_spm_bundle()
    make_damaged_decoder()
    make_unprobed_bundle()
    make_attention_bundle()
    make_growing_bundle()
    export_model(model, BUNDLES / "conventions", source_vocab=SPACED, target_vocab=TARGET, pad="<blank>", bos="<bos>",
                 eos="<eos>", target_tokens="word", parity_sources=SPACED_TEXTS, greedy_graph=True, conventions=RULES, force=True,
                 log=lambda m: None)


def make_attention_bundle() -> None:
    """A model with Transformer parts written plainly (tests/test_own_model.py's TransformerEncoded): an
    nn.TransformerEncoder over the source and nn.MultiheadAttention over the memory in each step, exported with the
    attention every length stays dynamic in; every host decodes sources far longer than the traced ones alike."""
    sys.path.insert(0, str(HERE.parent))
    import torch
    from test_own_model import SOURCE, TARGET, TEXTS, TransformerEncoded

    from seq2edge.export import export_model

    torch.manual_seed(1)
    export_model(TransformerEncoded(len(SOURCE), len(TARGET)).eval(), BUNDLES / "attention", source_vocab=SOURCE,
                 target_vocab=TARGET, pad="<blank>", bos="<bos>", eos="<eos>", unk="<unk>", target_tokens="word",
                 parity_sources=TEXTS, max_tgt_len=30, greedy_graph=True, force=True, log=lambda m: None)


def make_growing_bundle() -> None:
    """A decoder state that grows (bundle format 3; tests/test_transformer.py's CachedWithPrefix): every layer's
    self-attention keys and values and the ids decoded so far (int64), all of length 0 from the encoder. It shares the
    attention bundle's vocabularies, so the two make an ensemble of members with different states."""
    sys.path.insert(0, str(HERE.parent))
    import torch
    from test_own_model import SOURCE, TARGET, TEXTS
    from test_transformer import CachedWithPrefix

    from seq2edge.export import export_model

    torch.manual_seed(4)
    model = CachedWithPrefix(len(SOURCE), len(TARGET), size=16, heads=2, layers=1, feedforward=32, dropout=0.0, max_len=100).eval()
    export_model(model, BUNDLES / "growing", source_vocab=SOURCE, target_vocab=TARGET, pad="<blank>", bos="<bos>", eos="<eos>",
                 unk="<unk>", target_tokens="word", parity_sources=TEXTS, max_src_len=100, max_tgt_len=30, greedy_graph=True,
                 force=True, log=lambda m: None)


def make_unprobed_bundle() -> None:
    """A model with a table of 10 source positions whose bundle.json promises 64 (as a bundle exported before export
    probed the limits would): onnxruntime fails on a longer input, which must be that input's error alone."""
    sys.path.insert(0, str(HERE.parent))
    import torch
    from test_own_model import SOURCE, TARGET, TEXTS, PositionalLSTM

    from seq2edge.export import export_model

    torch.manual_seed(1)
    out = BUNDLES / "positions-unprobed"
    export_model(PositionalLSTM(len(SOURCE), len(TARGET)).eval(), out, source_vocab=SOURCE, target_vocab=TARGET,
                 pad="<blank>", bos="<bos>", eos="<eos>", unk="<unk>", target_tokens="word", parity_sources=TEXTS[:6],
                 force=True, log=lambda m: None)
    meta = json.loads((out / "bundle.json").read_text())
    meta["model"]["max_src_len"] = 64
    (out / "bundle.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


SYLLABLES = ["ka", "to", "mi", "ra", "ne", "su", "lo", "vi", "\u00e7a", "\u00fcn", "\u011f\u0131"]


def make_spm_bundle() -> None:
    """SentencePiece on both sides, a lowercased source: syllable words spelled backwards in capitals."""
    import random
    import subprocess

    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for _ in range(1200):
            words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
            lines.append(" ".join(words) + "\t" + " ".join(w.upper()[::-1] for w in words))
        corpus = Path(tmp) / "pairs.tsv"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        cli = [sys.executable, "-m", "seq2edge.runtime.cli"]
        subprocess.run([*cli, "train", "--corpus", str(corpus), "--out", f"{tmp}/ckpt", "--src-tokens", "spm", "--tgt-tokens", "spm",
                        "--src-vocab-size", "60", "--tgt-vocab-size", "60", "--embed", "32", "--hidden", "64", "--epochs", "4",
                        "--lr", "0.01", "--batch-size", "32", "--threads", "1", "--lowercase-source"], check=True, capture_output=True)
        subprocess.run([*cli, "export", f"{tmp}/ckpt", str(BUNDLES / "spm"), "--parity-words", "60", "--force"], check=True,
                       capture_output=True)


def make_damaged_decoder() -> None:
    """g2p's decoder with its src_mask input renamed (and the graph still consistent): a graph that breaks the contract."""
    import onnx

    graph = onnx.load(str(BUNDLES / "g2p" / "decoder.onnx"))
    for node in graph.graph.node:
        node.input[:] = ["mask" if name == "src_mask" else name for name in node.input]
    next(i for i in graph.graph.input if i.name == "src_mask").name = "mask"
    (BUNDLES / "damaged").mkdir(exist_ok=True)
    onnx.save(graph, str(BUNDLES / "damaged" / "decoder-input-renamed.onnx"))


def make_deep_graph(levels: int = 1500) -> None:
    """A 13 KB "model" of `levels` nested subgraphs (graph -> node -> attribute -> graph ...): a reader that recurses
    into subgraphs without a bound overflows its stack on it."""
    def field(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    graph = b""
    for _ in range(levels):
        graph = field(1, field(5, field(6, graph)))  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g
    (BUNDLES / "damaged").mkdir(exist_ok=True)
    (BUNDLES / "damaged" / "deep-graph.onnx").write_bytes(field(7, graph))  # ModelProto.graph


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", action="store_true", help="Train and export the bundles first (they are committed).")
    args = parser.parse_args()
    if args.bundles:
        make_bundles()
    make_deep_graph()
    cases = make_cases()
    CASES.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    print(f"{CASES}: {len(cases)} cases")


if __name__ == "__main__":
    main()
