"""Evaluation of a bundle (through the runtime) or a checkpoint (through PyTorch) on a corpus split.

Torch is imported only for a checkpoint, so `seq2edge eval BUNDLE` runs in a
runtime-only install (corpus reading, splitting and scoring need no torch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.interface import BUNDLE_FILE
from seq2edge.runtime.util import write_json_atomic, write_text_atomic

from . import corpus as C
from .metrics import Scores, score, score_both

EVAL_SPLITS = (*C.SPLITS, "all")


@dataclass
class Evaluation:
    corpus: str
    split: str
    scores: dict[str, Scores]  # CMUdict: "stress" (as given) and "stressless"; any other corpus: "as_given"
    seconds: float
    rows: list[tuple[str, str, list[str], bool]]  # input, output, references, correct
    target_tokens: str = "word"  # the target tokeniser: char targets report CER
    problems: list[str] = field(default_factory=list)  # corpus lines that could not be used (first 20, then a count)
    unusable: int = 0  # how many corpus lines could not be used

    @property
    def error_rate_name(self) -> str:
        """What the token-level error rate is called: CER for character targets, else token error rate."""
        return "CER" if self.target_tokens == "char" else "token error rate"

    def to_dict(self) -> dict:
        out = {"corpus": self.corpus, "split": self.split, "seconds": round(self.seconds, 2), "unusable_lines": self.unusable}
        for name, s in self.scores.items():
            if name == "as_given":
                key = "cer" if self.target_tokens == "char" else "token_error_rate"
                out[name] = {"exact_match": round(100 - s.wer, 3), key: round(s.per, 3), "inputs": s.words}
            else:
                out[name] = {"wer": round(s.wer, 3), "per": round(s.per, 3), "inputs": s.words}
        return out


def corpus_of(path: Path) -> str:
    """The corpus a bundle or checkpoint was trained on, as recorded at training (checked to be here)."""
    name = _recorded_corpus(path)
    if name != "cmudict" and not Path(name).exists():
        raise Seq2EdgeError(f"{path} was trained on {name}, which is not here; pass --corpus PATH to evaluate on a file")
    return name


def _recorded_corpus(path: Path) -> str:
    for meta, keys in ((path / BUNDLE_FILE, ("checkpoint", "train", "corpus")), (path / "train.json", ("train_config", "corpus"))):
        try:
            value = json.loads(meta.read_text())
            for key in keys:
                value = value[key]
            if value:
                return value
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return "cmudict"


def evaluate(path: str | Path, corpus: str | None = None, split: str = "test", beam: int = 1, batch_size: int = 256,
             limit: int | None = None, precision: str = "fp32", threads: int | None = None,
             ensemble: Sequence[str | Path] = ()) -> Evaluation:
    """Decode `split` of the corpus ("all": every entry) and score it; CMUdict gets WER/PER with and without stress.
    `ensemble`: other bundles that decode together with the bundle at `path` (Seq2Seq.load's ensemble)."""
    path = Path(path)
    name = corpus or corpus_of(path)
    if split not in EVAL_SPLITS:
        raise Seq2EdgeError(f"unknown split {split!r}; use one of {', '.join(EVAL_SPLITS)}")
    loaded = C.load_corpus(name)
    entries = (loaded.entries if split == "all" else C.split(loaded.entries, split))[:limit]
    if not entries:
        raise Seq2EdgeError(f"{name}: the {split} split is empty" + ("; --split all scores every line" if split != "all" else ""))
    texts = [e.source for e in entries]
    start = time.perf_counter()
    if (path / BUNDLE_FILE).exists():
        hyps, codec = _decode_bundle(path, texts, beam, batch_size, precision, threads, ensemble)
    elif (path / "config.json").exists():
        if beam != 1 or precision != "fp32" or ensemble:
            raise Seq2EdgeError(f"{path}: a checkpoint is evaluated with greedy fp32 PyTorch decoding; export it for --beam, --precision "
                                "or --ensemble")
        hyps, codec = _decode_checkpoint(path, texts, batch_size)
    else:
        raise Seq2EdgeError(f"{path}: neither a bundle ({BUNDLE_FILE}) nor a checkpoint (config.json)")
    seconds = time.perf_counter() - start
    refs = [[codec.split(r) for r in e.references] for e in entries]
    scores = score_both(hyps, refs) if name == "cmudict" else {"as_given": score(hyps, refs)}
    rows = [(e.source, codec.join(h), list(e.references), any(h == r for r in rs)) for e, h, rs in zip(entries, hyps, refs)]
    return Evaluation(name, split, scores, seconds, rows, codec.kind, list(loaded.problems), loaded.skipped)


def _decode_bundle(path, texts, beam, batch_size, precision, threads, ensemble):
    from seq2edge.runtime.model import Seq2Seq

    model = Seq2Seq.load(path, providers="cpu", precision=precision, threads=threads, unknown="unk", too_long="truncate",
                         ensemble=ensemble)
    results = model.decode(texts, beam_size=beam, batch_size=batch_size, errors="return")
    return [r.tokens if r.ok else [] for r in results], model.bundle.target


def _decode_checkpoint(path, texts, batch_size):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise Seq2EdgeError(f"{path}: evaluating a checkpoint runs PyTorch, which is not installed; "
                            "export it to a bundle, or pip install 'seq2edge[train]'")
    from .checkpoint import load_checkpoint
    from .infer import decode_entries

    model, source, target = load_checkpoint(path)
    return decode_entries(model, texts, source, target, batch_size), target


def write_rows(evaluation: Evaluation, out: Path) -> None:
    """Per-input results as TSV (input, output, correct, references joined by ' | '), written atomically."""
    lines = ["input\toutput\tcorrect\treferences"]
    lines += [f"{src}\t{out_text}\t{int(ok)}\t{' | '.join(refs)}" for src, out_text, refs, ok in evaluation.rows]
    write_text_atomic(out, "\n".join(lines) + "\n")


def write_metrics(evaluation: Evaluation, out: Path) -> None:
    write_json_atomic(out, evaluation.to_dict())
