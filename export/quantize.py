"""Reduced-precision graphs: dynamic int8 (for CPUs) and fp16 (for GPUs), each with its own parity figures.

Both keep the fp32 graphs' inputs and outputs (float32 state, memory and
log-probs), so the runtime drives every precision with the same code. Their
figures compare them with the fp32 graphs on the parity words: token
agreement, WER against the references, largest log-probability difference.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from seq2edge.runtime.interface import graph_file
from seq2edge.runtime.model import Seq2Seq as Runtime
from seq2edge.train.checkpoint import write_json
from seq2edge.train.data import Entry
from seq2edge.train.metrics import score

from .onnx import graph_metadata, save_single_file, set_metadata


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised per call (MatMulInteger, DynamicQuantizeLSTM)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False)


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and arithmetic inside, float32 at the inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    onnx.save_model(graph, str(dst))


CONVERTERS: dict[str, Callable[[Path, Path], None]] = {"int8": quantize_int8, "fp16": convert_fp16}


def add_precisions(bundle_dir: Path, meta: dict, fp32: Runtime, entries: Sequence[Entry], int8: bool, fp16: bool,
                   log: Callable[[str], None] = print) -> None:
    """Write the requested reduced-precision graphs into bundle_dir and record them (and their parity) in meta."""
    from .bundle import graph_entry

    texts = [e.source for e in entries]
    reference = fp32.decode(texts, errors="return")
    for precision in [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]:
        files = {}
        for kind in ("encoder", "decoder"):
            src, dst = bundle_dir / graph_file(kind, "fp32"), bundle_dir / graph_file(kind, precision)
            CONVERTERS[precision](src, dst)
            graph = onnx.load(str(dst))
            set_metadata(graph, {**graph_metadata(meta["bundle_id"], meta["model"], precision), "seq2edge.graph": kind})
            save_single_file(graph, dst)
            files[kind] = graph_entry(dst)
        meta["graphs"][precision] = files
        write_json(bundle_dir / "bundle.json", meta)
        meta["parity"][precision] = _compare(bundle_dir, meta, precision, entries, reference, fp32)
        figures = meta["parity"][precision]
        if figures.get("measured"):
            log(f"parity {precision}: token agreement with fp32 {100 * figures['token_agreement_with_fp32']:.2f}%, "
                f"WER {figures['wer']:.2f}% (fp32 {figures['fp32_wer']:.2f}%), size {100 * figures['size_ratio']:.0f}% of fp32")
        else:
            log(f"parity {precision}: not measured here ({figures['reason']})")


def _compare(bundle_dir: Path, meta: dict, precision: str, entries: Sequence[Entry], reference, fp32: Runtime) -> dict:
    sizes = {p: sum(entry["bytes"] for entry in meta["graphs"][p].values()) for p in ("fp32", precision)}
    figures: dict = {"size_ratio": round(sizes[precision] / sizes["fp32"], 4), "bytes": sizes[precision]}
    try:
        model = Runtime.load(bundle_dir, providers="cpu", precision=precision, unknown="unk")
        results = model.decode([e.source for e in entries], errors="return")
    except Exception as exc:  # a precision the CPU provider cannot run (fp16 on some builds)
        return {**figures, "measured": False, "reason": f"the CPU provider cannot run these graphs: {str(exc).splitlines()[0]}"}
    target = fp32.bundle.target
    refs = [[target.split(r) for r in e.references] for e in entries]
    agree = sum(a.ok and b.ok and a.tokens == b.tokens for a, b in zip(reference, results))
    return {
        **figures,
        "measured": True,
        "provider": "CPUExecutionProvider",
        "words": len(entries),
        "token_agreement_with_fp32": agree / max(len(entries), 1),
        "wer": round(score([r.tokens for r in results], refs).wer, 3),
        "fp32_wer": round(score([r.tokens for r in reference], refs).wer, 3),
    }
