"""seq2edge against CTranslate2 on an OpenNMT-py Transformer, the engine OpenNMT-py users pick for speed.

The same checkpoint two ways: imported by seq2edge (`seq2edge export --from opennmt`, the BUNDLE given) and converted
by CTranslate2's own OpenNMT-py converter, here, to float32 and int8. Both decode greedily (beam 1) on one thread, at
batch 1 and batch 64, and PyTorch eager runs the imported module (importers/opennmt_transformer.py, its own greedy
loop with the key/value cache) beside them: every variant is timed on each chunk of the inputs in turn, round after
round (measure.alternate), so that no variant gets a faster stretch of a shared machine.

    seq2edge bench BUNDLE --ctranslate2 CHECKPOINT.pt --inputs FILE [--rounds 5]

The checkpoint is read by the converter with torch.load(weights_only=True) and argparse.Namespace allowed (its
`opt`), so nothing in it runs. ctranslate2 comes with the bench extra (pip install 'seq2edge[bench]').
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from seq2edge.runtime import Seq2Seq
from seq2edge.runtime.errors import Seq2EdgeError

from .measure import alternate

BATCHES = (1, 64)


def convert(checkpoint: Path, out: Path, quantization: str) -> Path:
    """CTranslate2's own conversion of an OpenNMT-py checkpoint ("float32" or "int8"), as ct2-opennmt-py-converter does."""
    from ctranslate2.converters import OpenNMTPyConverter

    torch.serialization.add_safe_globals([argparse.Namespace])  # the checkpoint's opt: data, loaded without unpickling code
    try:
        return Path(OpenNMTPyConverter(str(checkpoint)).convert(str(out), quantization=quantization, force=True))
    except Exception as exc:  # the converter raises ValueError for what it refuses, others for broken files
        raise Seq2EdgeError(f"{checkpoint}: CTranslate2's converter refuses it ({str(exc).splitlines()[0]})") from None


@torch.inference_mode()
def torch_greedy(model, batch: list[list[int]], bos: int, eos: int, max_len: int) -> list[list[int]]:
    """Greedy ids of a batch of source ids in PyTorch eager, finished rows leaving the batch (as the runtime decodes)."""
    from seq2edge.train.model import state_rows

    lengths = torch.tensor([len(ids) for ids in batch])
    src = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)
    for row, ids in enumerate(batch):
        src[row, : len(ids)] = torch.tensor(ids)
    mask = torch.arange(src.shape[1])[None, :] < lengths[:, None]
    memory, state = model.encode(src, lengths)
    rows, prev, out = torch.arange(len(batch)), torch.full((len(batch),), bos), [[] for _ in batch]
    for _ in range(max_len):
        scores, state, _ = model.step(prev, state, memory, mask)
        prev = scores.argmax(dim=-1)
        live = prev != eos
        for row, token in zip(rows[live].tolist(), prev[live].tolist()):
            out[row].append(token)
        if not bool(live.any()):
            break
        rows, prev, memory, mask, state = rows[live], prev[live], memory[live], mask[live], state_rows(state, live)
    return out


def compare(bundle: Path, checkpoint: Path, inputs: Sequence[str], rounds: int, chunk: int = 256, log=print) -> dict:
    """Words/s of every variant (median over rounds), each as a ratio to CTranslate2 of the same precision and batch,
    and how often the variants' outputs agree with CTranslate2's."""
    import ctranslate2

    from seq2edge.export.importers import import_model

    texts = [t for t in inputs if t.strip()]
    if not texts:
        raise Seq2EdgeError("--inputs holds no text to decode")
    imported = import_model("opennmt", checkpoint)
    torch_model = imported.model.eval()
    source_index = {t: i for i, t in enumerate(imported.source_vocab)}
    target_vocab = imported.target_vocab
    bos, eos = target_vocab.index(imported.specials["bos"]), target_vocab.index(imported.specials["eos"])
    unk = source_index[imported.specials["unk"]]

    def limit(text: str) -> int:  # onmt_translate's output limit, as the importer's conventions write it into the bundle
        return imported.conventions.max_len(len(text.split()), imported.max_tgt_len or 250)

    seq2edge = {p: Seq2Seq.load(bundle, precision=p, threads=1, unknown="unk") for p in ("fp32", "int8")}  # greedy graph: auto
    with tempfile.TemporaryDirectory() as tmp:
        translators = {}
        for precision, quantization in (("fp32", "float32"), ("int8", "int8")):
            log(f"CTranslate2: converting {checkpoint.name} to {quantization}")
            path = convert(checkpoint, Path(tmp) / quantization, quantization)
            translators[precision] = ctranslate2.Translator(str(path), device="cpu", compute_type=quantization, intra_threads=1,
                                                            inter_threads=1)

        def ct2(precision: str, batch: int):
            def call(part: list[str]) -> list[str]:
                results = translators[precision].translate_batch([t.split() for t in part], beam_size=1, max_batch_size=batch,
                                                                 max_decoding_length=max(limit(t) for t in part))
                return [" ".join(r.hypotheses[0]) for r in results]
            return call

        def edge(precision: str, batch: int):
            return lambda part: [r.text for r in seq2edge[precision].decode(part, batch_size=batch)]

        def eager(batch: int):
            def call(part: list[str]) -> list[str]:
                ids = [[source_index.get(token, unk) for token in t.split()] for t in part]
                out = []
                for start in range(0, len(ids), batch):
                    out += torch_greedy(torch_model, ids[start : start + batch], bos, eos, max(limit(t) for t in part))
                return [" ".join(target_vocab[i] for i in row) for row in out]
            return call

        calls = {}
        for batch in BATCHES:
            for precision in ("fp32", "int8"):
                calls[f"ctranslate2 {precision} {batch}"] = ct2(precision, batch)
                calls[f"seq2edge {precision} {batch}"] = edge(precision, batch)
            calls[f"pytorch fp32 {batch}"] = eager(batch)
        torch.set_num_threads(1)
        log(f"{len(calls)} variants in alternation, {rounds} rounds of {len(texts)} inputs")
        seconds = alternate(calls, texts, rounds, chunk)
        outputs = {name: call(texts) for name, call in calls.items()}
    rows = []
    for name, spent in seconds.items():
        engine, precision, batch = name.split()
        peer = f"ctranslate2 {precision if engine != 'pytorch' else 'fp32'} {batch}"
        per_round = [round(p / s, 3) for s, p in zip(spent, seconds[peer])]
        rows.append({"engine": engine, "precision": precision, "batch": int(batch),
                     "words_per_second": round(len(texts) / statistics.median(spent), 1),
                     "vs_ctranslate2": statistics.median(per_round), "rounds": per_round,
                     "same_output_as_ctranslate2": round(sum(a == b for a, b in zip(outputs[name], outputs[peer])) / len(texts), 4)})
    return {"bundle": str(bundle), "checkpoint": str(checkpoint), "inputs": len(texts), "rounds": rounds, "chunk": chunk,
            "threads": 1, "ctranslate2": ctranslate2.__version__, "rows": rows}


def table(result: dict) -> str:
    lines = [f"{Path(result['checkpoint']).name}: {result['inputs']} inputs, {result['rounds']} rounds in alternation, one thread "
             f"(CTranslate2 {result['ctranslate2']})",
             f"{'engine':12s} {'precision':9s} {'batch':>5s} {'words/s':>9s} {'x CTranslate2':>13s} {'same output':>11s}"]
    for r in result["rows"]:
        lines.append(f"{r['engine']:12s} {r['precision']:9s} {r['batch']:5d} {r['words_per_second']:9.1f} {r['vs_ctranslate2']:13.2f} "
                     f"{100 * r['same_output_as_ctranslate2']:10.1f}%")
    return "\n".join(lines)
