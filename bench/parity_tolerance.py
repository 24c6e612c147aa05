"""Measure what float32 does to log-probabilities: ONNX vs PyTorch against PyTorch float32 vs float64.

    python -m seq2edge.bench.parity_tolerance --shipped         # the shipped model on dev words and long inputs
    python -m seq2edge.bench.parity_tolerance --hidden 64 256 512 1024   # briefly trained BiLSTMs on long inputs

Prints one row per model and input set: the largest |log-prob difference| between onnxruntime and
PyTorch, PyTorch's own float32-vs-float64 difference ("noise") on the same steps, and their ratio.
docs/export.md gives the figures; export's parity gate allows 10 x the noise (at least 1e-4).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

from seq2edge.export.bundle import export_bundle
from seq2edge.export.verify import check_parity
from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C
from seq2edge.train.checkpoint import load_checkpoint
from seq2edge.train.config import TrainConfig
from seq2edge.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]


def long_inputs(path: Path, count: int = 3000, seed: int = 0) -> list[str]:
    """A TSV of 4-7 CMUdict words run together (30-60 characters) with their phonemes; returns the sources."""
    words = [e for e in C.load_cmudict().entries if e.source.isalpha()]
    rng, lines = random.Random(seed), set()
    while len(lines) < count:
        picks = rng.sample(words, rng.randint(4, 7))
        source = "".join(e.source for e in picks)
        if 30 <= len(source) <= 60:
            lines.add(f"{source}\t{' '.join(e.references[0] for e in picks)}\n")
    path.write_text("".join(sorted(lines)))
    return [line.split("\t")[0] for line in sorted(lines)]


def row(name: str, inputs: str, model, runtime, texts) -> None:
    p = check_parity(model, runtime, texts)
    print(f"| {name} | {inputs} | {p.max_abs_log_prob_diff:.1e} | {p.float32_noise:.1e} | "
          f"{p.max_abs_log_prob_diff / max(p.float32_noise, 1e-12):.2f} | {100 * p.token_agreement:.0f}% |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shipped", action="store_true")
    parser.add_argument("--hidden", type=int, nargs="*", default=[])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "g2p-en-checkpoint", help="With --shipped: this model.")
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "g2p-en", help="With --shipped: its bundle.")
    parser.add_argument("--dev-words", type=int, default=500)
    parser.add_argument("--long", type=int, default=300, help="Long inputs per model (150 for the trained ones).")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="parity-tolerance."))
    longs = long_inputs(work / "long.tsv", count=max(3000 if args.hidden else 0, args.long))
    print("| model | inputs | max abs log-prob diff | float32 noise | ratio | token agreement |\n|---|---|---|---|---|---|")
    if args.shipped:
        model, _, _ = load_checkpoint(args.checkpoint)
        runtime = Seq2Seq.load(args.bundle, providers="cpu")
        name = args.bundle.name
        dev = [e.source for e in C.split(C.load_cmudict().entries, "dev")[: args.dev_words]]
        row(name, f"{len(dev)} dev words", model, runtime, dev)
        row(name, f"{args.long} inputs of 30-60 characters", model, runtime, longs[: args.long])
    for hidden in args.hidden:
        tc = TrainConfig(corpus=str(work / "long.tsv"), epochs=1, train_limit=400 if hidden < 1024 else 200, dev_limit=20,
                         batch_size=32, save_every_minutes=60)
        arch = {"embed": 64, "hidden": hidden, "bidirectional": True, "attention": "general", "tgt_tokens": "word",
                "max_src_len": 64, "max_tgt_len": 48}
        Trainer(tc, arch, work / f"h{hidden}", log=lambda m: None).run()
        bundle = export_bundle(work / f"h{hidden}", work / f"b{hidden}", parity_words=20, atol=10.0, log=lambda m: None)
        model, _, _ = load_checkpoint(work / f"h{hidden}")
        row(f"BiLSTM hidden {hidden}, general attention, 1 epoch", f"{args.long // 2} inputs of 30-60 characters", model,
            Seq2Seq.load(bundle, providers="cpu"), longs[: args.long // 2])


if __name__ == "__main__":
    sys.exit(main())
