"""Checkpoint -> bundle: orchestrates graphs, bundle.json, parity gates and atomic placement.

The bundle is built in a temporary directory beside its destination and renamed
into place only after the parity check passed, so a bundle is complete or absent.
Graphs come from export.onnx and export.quantize; every check from export.verify.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import torch

from seq2edge.runtime.conventions import Conventions
from seq2edge.runtime.errors import BundleError, Seq2EdgeError
from seq2edge.runtime.interface import BUNDLE_FILE, graph_metadata
from seq2edge.runtime.model import GREEDY_GRAPH_BATCHED_SPEEDUP, Seq2Seq
from seq2edge.runtime.schema import BundleMeta, GraphEntry, SideMeta
from seq2edge.runtime.tokenize import TextCodec
from seq2edge.runtime.util import atomic_directory, refuse_overlap, sha256_file, write_json_atomic

from .greedy import build_greedy_graph
from .limits import FROZEN_SIZE_HINT, check_graph_limits, fit_limits
from .onnx import export_graphs, mha_fastpath_off, state_tensors
from .ort_format import REQUIRED_OPERATORS, write_ort_copies
from .quantize import write_precision
from .verify import GraphFailed, ParityInput, check_greedy_graph, check_parity, compare_precision, int8_gate


class ExportError(Seq2EdgeError):
    """Export produced graphs that do not match PyTorch; no bundle was written."""


def export_bundle(checkpoint: str | Path, out: str | Path, force: bool = False, int8: bool = False, fp16: bool = False,
                  exporter: str = "torchscript", decoder_step: str = "traced", corpus: str | None = None, parity_words: int = 500,
                  atol: float | None = None, greedy_graph: bool = False, ort: bool = False, accept_int8: bool = False,
                  option_style: str = "python", log: Callable[[str], None] = print) -> Path:
    """Export `checkpoint` to the bundle directory `out`, verify it, and return its path.

    atol: the largest |log-prob difference| from PyTorch that parity accepts; default: 10 x the
    float32 rounding PyTorch itself shows against float64 on the same steps, at least 1e-4.
    decoder_step: "traced" (each decoder cell as its matrix products and elementwise nodes) or "node"
    (one ONNX recurrent node per layer; export/decoder_graph.py)."""
    checkpoint, out = Path(checkpoint), Path(out)
    refuse_overlap(out, [("checkpoint", checkpoint), ("corpus", corpus if corpus not in (None, "cmudict") else None)])
    refuse_existing(out, force)
    from seq2edge.train.checkpoint import load_checkpoint  # seq2edge's own checkpoints only: export_model never reads one

    model, source, target = load_checkpoint(checkpoint)
    sides = {"source": Side(source, checkpoint / "source.spm.model"), "target": Side(target, checkpoint / "target.spm.model")}
    entries = parity_entries(checkpoint, corpus, parity_words)
    provenance = {"path": str(checkpoint), "train": _train_summary(checkpoint)}
    return write_bundle(model, out, sides, entries, provenance, exporter=exporter, decoder_step=decoder_step, int8=int8,
                        fp16=fp16, atol=atol, greedy_graph=greedy_graph, ort=ort, accept_int8=accept_int8,
                        option_style=option_style, log=log)


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise Seq2EdgeError(f"{out}: already exists; pass --force to replace it")


@dataclass(frozen=True)
class Side:
    """One side's codec and, for spm, the SentencePiece model file to copy into the bundle."""

    codec: TextCodec
    spm_model: Path | None = None


def write_bundle(model, out: Path, sides: dict[str, Side], entries: list[ParityInput], provenance: dict, *,
                 exporter: str = "torchscript", decoder_step: str = "traced", int8: bool = False, fp16: bool = False,
                 atol: float | None = None,
                 greedy_graph: bool = False, ort: bool = False, conventions: Conventions = Conventions(),
                 accept_int8: bool = False, chosen_limits: frozenset[str] = frozenset(("max_src_len", "max_tgt_len")),
                 option_style: str = "python", log: Callable[[str], None] = print) -> Path:
    """Graphs, bundle.json and every parity gate for `model` (seq2edge's Seq2SeqModule or a
    protocol model wrapped in export.protocol.ProtocolModule), placed at `out` only when all passed.
    conventions: the decoding rules of the toolkit the model came from (runtime/conventions.py).
    chosen_limits: the length limits the user set, refused when the model cannot take them; the others are
    lowered to what it takes (export/limits.py).
    accept_int8: write int8 graphs that fail the int8 gate (export.verify.int8_gate), saying so in their figures.
    option_style: "python" or "cli", how a message names an option (accept_int8=True, --accept-int8)."""
    texts = [e.source for e in entries]
    with mha_fastpath_off():  # PyTorch as export traces it: without nested tensors
        fit_limits(model, chosen_limits, log)
    with atomic_directory(out) as tmp:
        bundle_id = uuid.uuid4().hex
        paths = export_graphs(model, tmp, bundle_id, exporter, decoder_step)
        meta = _bundle_meta(bundle_id, model, tmp, sides, paths, {"exporter": exporter, "decoder_step": decoder_step}, provenance)
        meta.conventions = conventions
        meta.state = state_tensors(model)
        write_json_atomic(tmp / BUNDLE_FILE, meta.to_dict())
        runtime = _verify(tmp, exporter)
        check_graph_limits(runtime)
        meta.parity["fp32"] = check_parity_or_fail(model, runtime, texts, log, atol)
        if int8 or fp16:
            reference = runtime.decode(texts, errors="return")
            for precision in [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]:
                meta.graphs[precision] = write_precision(tmp, bundle_id, meta.model.to_dict(), precision)
                write_json_atomic(tmp / BUNDLE_FILE, meta.to_dict())
                meta.parity[precision] = compare_precision(tmp, meta, precision, entries, reference, runtime)
                _log_precision(precision, meta.parity[precision], log)
                refused = int8_gate(meta.parity[precision]) if precision == "int8" else None
                option = "--accept-int8" if option_style == "cli" else "accept_int8=True"
                if refused and not accept_int8:
                    raise ExportError(f"{refused}. No bundle was written. The int8 graphs differ from fp32 far more than "
                                      f"int8 rounding does; pass {option} to write them anyway.")
                if refused:
                    meta.parity[precision]["gate"] = f"overridden by {option}: {refused}"
                    log(f"int8 gate overridden ({option}): {refused}")
        if greedy_graph:
            _add_greedy_graphs(tmp, meta, texts, log)
        if ort:
            write_ort_copies(tmp, meta)
            log(f"ORT format: {', '.join(e.ort.file for g in meta.graphs.values() for e in g.values())} and "
                f"{REQUIRED_OPERATORS}")
        write_json_atomic(tmp / BUNDLE_FILE, meta.to_dict())
        kept = carry_over_other_files(out, tmp)
        if kept:
            log(f"kept in {out}: {', '.join(kept)} (not written by export)")
    return out


# What an export writes: bundle.json, the graphs at each precision and format, the tokeniser models. Anything else in
# the output directory (a model card, notes) is the user's, and a re-export keeps it.
_BUNDLE_FILES = re.compile(r"(bundle\.json|(encoder|decoder|greedy)(\.(int8|fp16))?\.(onnx|ort)|(source|target)\.spm\.model)")


def carry_over_other_files(out: Path, tmp: Path) -> list[str]:
    """Copy (hard-link where it can) every file and folder of the existing `out` that no export writes into `tmp`,
    the new bundle that replaces it; their names, sorted."""
    if not out.is_dir():
        return []
    kept = []
    for entry in sorted(out.iterdir()):
        if _BUNDLE_FILES.fullmatch(entry.name) or (tmp / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, tmp / entry.name)
        kept.append(entry.name)
    return kept


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    if Path(source).is_symlink():
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def _add_greedy_graphs(tmp: Path, meta: BundleMeta, texts: list[str], log: Callable[[str], None]) -> None:
    """greedy[.int8].onnx for the fp32 (and int8) graphs, each verified against the step-by-step runtime."""
    for precision in [p for p in ("fp32", "int8") if p in meta.graphs]:
        metadata = graph_metadata(meta.bundle_id, meta.model.to_dict(), precision, "greedy")
        rules = meta.conventions
        never = tuple(meta.target.vocab.index(t) for t in rules.never_emit)
        path = build_greedy_graph(tmp, meta.model, precision, metadata, never, rules.min_len, meta.state)
        meta.graphs[precision]["greedy"] = GraphEntry.of_file(path)
        write_json_atomic(tmp / BUNDLE_FILE, meta.to_dict())
        figures = check_greedy_graph(tmp, precision, texts)
        meta.parity.setdefault(precision, {})["greedy_graph"] = figures
        own = figures.get("runtime_batch_sensitivity")
        batched = (f"{100 * figures['matching_batched']:.2f}% batched" if own is None else
                   f"the same tokens on {100 * figures['token_agreement_batched']:.2f}% batched (the runtime itself changes "
                   f"{100 * own:.2f}% between batch 1 and batched)")
        log(f"greedy graph {precision}: same tokens and score as the step-by-step runtime on "
            f"{100 * figures['matching_batch_1']:.2f}% of the words at batch 1, {batched}; max |score diff| "
            f"{max(figures['max_abs_score_diff_batch_1'], figures['max_abs_score_diff_batched']):.1e}; "
            f"{figures['batched_speedup']:.2f}x the step-by-step speed batched"
            f"{' (used on batches too)' if figures['batched_speedup'] >= GREEDY_GRAPH_BATCHED_SPEEDUP else ''}")
        if not figures["passed"]:
            raise ExportError(f"greedy.onnx ({precision}) does not decode like the runtime: {figures}. No bundle was written.")


def _bundle_meta(bundle_id, model, tmp: Path, sides: dict[str, Side], paths: dict, export_settings: dict[str, str],
                 provenance: dict) -> BundleMeta:
    return BundleMeta(
        bundle_id=bundle_id,
        model=model.config,
        source=_side_meta(tmp, "source", sides["source"]),
        target=_side_meta(tmp, "target", sides["target"]),
        graphs={"fp32": {kind: GraphEntry.of_file(p) for kind, p in paths.items()}},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        exported_with={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                       **export_settings},
        checkpoint=provenance,
    )


def _log_precision(precision: str, figures: dict, log: Callable[[str], None]) -> None:
    if figures.get("measured"):
        wer = f"WER {figures['wer']:.2f}% (fp32 {figures['fp32_wer']:.2f}%), " if "wer" in figures else ""
        log(f"parity {precision}: token agreement with fp32 {100 * figures['token_agreement_with_fp32']:.2f}%, "
            f"{wer}size {100 * figures['size_ratio']:.0f}% of fp32")
    else:
        log(f"parity {precision}: not measured here ({figures['reason']})")


def _verify(tmp: Path, exporter: str) -> Seq2Seq:
    """Load the new bundle through the runtime's own checks (contract, metadata, sha256)."""
    try:
        return Seq2Seq.load(tmp, providers="cpu", unknown="unk")
    except BundleError as exc:
        hint = (" The dynamo exporter is known to fix RNN sequence axes to the traced length; use --exporter torchscript."
                if exporter == "dynamo" else "")
        raise ExportError(f"the exported graphs break the bundle contract: {exc}.{hint} No bundle was written.") from None


def check_parity_or_fail(model, runtime: Seq2Seq, texts: list[str], log, atol: float | None = None) -> dict:
    """The parity figures, or ExportError when the graphs do not match PyTorch (or onnxruntime cannot run them)."""
    try:
        parity = check_parity(model, runtime, texts, atol=atol)
    except GraphFailed as failed:
        raise ExportError(f"{failed.graph} fails in onnxruntime on a parity batch whose longest source has {failed.longest} "
                          f"tokens ({failed.problem}); no bundle was written. {FROZEN_SIZE_HINT}") from None
    log(f"parity fp32: {parity.words} words, {parity.steps} decoder steps, token agreement "
        f"{100 * parity.token_agreement:.2f}%, max |log-prob diff| {parity.max_abs_log_prob_diff:.2e} "
        f"(limit {parity.tolerance:.2e}; PyTorch float32 vs float64: {parity.float32_noise:.2e})")
    if not parity.passed:
        detail = "; ".join(parity.disagreements[:3])
        raise ExportError(
            f"exported graphs do not match PyTorch: token agreement {100 * parity.token_agreement:.2f}% (need 100%), "
            f"max |log-prob diff| {parity.max_abs_log_prob_diff:.2e} (limit {parity.tolerance:.2e}, {parity.tolerance_rule}; "
            f"PyTorch's own float32 rounding here: {parity.float32_noise:.2e}){'; ' + detail if detail else ''}. "
            "No bundle was written. If tokens agree and the difference is only a little over the limit, "
            "pass --atol with a larger value; if tokens differ, try --exporter torchscript or report the model "
            "config (the graphs compute something else than the model).")
    return parity.to_dict()


def parity_entries(checkpoint: Path, corpus: str | None, count: int) -> list[ParityInput]:
    """`count` entries for the parity check: dev first, then test and train if the dev part is small."""
    from seq2edge.train import corpus as C
    from seq2edge.train.checkpoint import read_json

    name = corpus or read_json(checkpoint / "train.json")["train_config"]["corpus"]
    if name != "cmudict" and not Path(name).exists():
        raise Seq2EdgeError(f"the parity check needs the training corpus, {name}, which is not here; pass --corpus PATH")
    entries = C.load_corpus(name).entries
    chosen: list[ParityInput] = []
    for part in ("dev", "test", "train"):
        chosen += C.split(entries, part)[: count - len(chosen)]
        if len(chosen) >= count:
            break
    return chosen


def _side_meta(tmp: Path, side: str, given: Side) -> SideMeta:
    codec = given.codec
    if codec.kind != "spm":
        return SideMeta(codec.kind, codec.lowercase, codec.vocab.tokens)
    name = f"{side}.spm.model"
    shutil.copyfile(given.spm_model, tmp / name)
    return SideMeta(codec.kind, codec.lowercase, codec.vocab.tokens, name, sha256_file(tmp / name))


def _train_summary(checkpoint: Path) -> dict:
    try:
        train = json.loads((checkpoint / "train.json").read_text())
    except (OSError, ValueError):
        return {}
    history = train.get("history") or []
    return {"corpus": train["train_config"].get("corpus"), "epochs": len(history),
            "best_dev_wer": train.get("best_dev_wer"), "minutes": history[-1]["minutes"] if history else None}
