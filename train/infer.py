"""Greedy decoding in PyTorch, for the per-epoch dev WER, `eval CHECKPOINT` and the benchmark."""

from __future__ import annotations

import torch

from seq2edge.runtime.tokenize import TextCodec
from seq2edge.runtime.util import pad_batch

from .corpus import Entry
from .metrics import score
from .model import Seq2SeqModule, greedy_decode


@torch.no_grad()
def dev_wer(model: Seq2SeqModule, entries: list[Entry], source: TextCodec, target: TextCodec, batch_size: int = 256) -> float:
    """Greedy WER (percent) on entries, in PyTorch."""
    model.eval()
    hyps = decode_entries(model, [e.source for e in entries], source, target, batch_size)
    refs = [[target.split(r) for r in e.references] for e in entries]
    return score(hyps, refs).wer


def decode_entries(model: Seq2SeqModule, texts: list[str], source: TextCodec, target: TextCodec, batch_size: int = 256) -> list[list[str]]:
    """Greedy target tokens for each text, batched by length; unknown source tokens become <unk>."""
    c = model.config
    ids = [source.encode(t, unknown="unk")[: c.max_src_len] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in ids]
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        src, lengths = pad_batch([ids[i] for i in idx], c.pad_id)
        decoded, _ = greedy_decode(model, torch.from_numpy(src), torch.from_numpy(lengths), c.max_tgt_len)
        for row, i in enumerate(idx):
            out[i] = target.ids_to_tokens(decoded[row])
    return out
