"""Knowledge distillation from a teacher bundle, run by the runtime (onnxruntime).

Sequence level (Kim & Rush 2016), `--kd seq`: train on the teacher's beam-search outputs. Token
level (Hinton et al.; Kim & Rush's word-level KD), `--kd token`: the loss mixes the cross-entropy on
the references with the cross-entropy against the teacher's next-token distribution at every
reference step (its top `--kd-top-k` tokens, renormalised), weighted by `--kd-alpha`. Both,
`--kd seq+token` (Kim & Rush's best student): the teacher's beam outputs become the targets, and the
student also matches the teacher's distributions at every step of them.

`seq2edge train --teacher BUNDLE --kd seq` labels every training source (and, with --extra-inputs,
unlabelled sources of the training part of the split) with the teacher bundle's best beam
hypothesis, decoded by the runtime (onnxruntime). Labels are cached in OUT/teacher/ (or --kd-cache),
keyed by the teacher's bundle id and beam size, so a resumed run (or a second student given the same
--kd-cache) does not decode again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.interface import BUNDLE_FILE
from seq2edge.runtime.util import atomic_path, pad_batch, write_text_atomic

from .config import TrainConfig
from .corpus import Entry, split_of

KD_MODES = ("seq", "token", "seq+token")
CHUNK = 4096  # sources decoded (and cached) at a time


def relabels(kd: str | None) -> bool:
    """Whether this --kd mode trains on the teacher's beam outputs."""
    return kd in ("seq", "seq+token")


def matches_distributions(kd: str | None) -> bool:
    """Whether this --kd mode adds the loss against the teacher's per-step distributions."""
    return kd in ("token", "seq+token")


def distilled_entries(tc: TrainConfig, entries: list[Entry], out: Path, log: Callable[[str], None],
                      held_out: Collection[str] = ()) -> list[Entry]:
    """--kd seq and seq+token: the training entries with the teacher's outputs as targets (before the
    references with kd_mix_references); --kd token: the entries as they are. All: plus the
    --extra-inputs sources of the training part, labelled by the teacher's beam search.

    held_out: the dev and test sources, casefolded. An extra input that equals one of them but for
    case is left out as well: a model that lowercases its input would see a dev or test word."""
    if not relabels(tc.kd) and not tc.extra_inputs:
        return entries
    sources = [e.source for e in entries] if relabels(tc.kd) else []
    known = {e.source for e in entries}
    extra = [s for s in _extra_inputs(tc.extra_inputs)
             if s not in known and split_of(s) == "train" and s.casefold() not in held_out]
    labels = teacher_labels(tc, list(dict.fromkeys(sources + extra)), out, log)
    distilled = []
    for entry in entries:
        if not relabels(tc.kd):
            distilled.append(entry)
            continue
        label = labels.get(entry.source)
        refs = tuple(dict.fromkeys(((label,) if label else ()) + (entry.references if tc.kd_mix_references or not label else ())))
        distilled.append(Entry(entry.source, refs))
    distilled += [Entry(s, (labels[s],)) for s in dict.fromkeys(extra) if labels.get(s)]
    relabelled = len(entries) if relabels(tc.kd) else 0
    log(f"distillation: {relabelled} training sources labelled by the teacher"
        f"{' (references kept)' if tc.kd_mix_references else ''}, {len(distilled) - len(entries)} extra inputs added")
    return distilled


def teacher_labels(tc: TrainConfig, sources: list[str], out: Path, log: Callable[[str], None]) -> dict[str, str]:
    """source -> the teacher's best beam output, from the cache or decoded now (and cached)."""
    cache = _cache_path(tc, cache_dir(tc, out), f"seq-{{}}-beam{tc.kd_beam}.jsonl")
    cached = {}
    if cache.exists():
        cached = {r["source"]: r["output"] for r in map(json.loads, cache.read_text(encoding="utf-8").splitlines())}
    missing = [s for s in sources if s not in cached]
    if not missing:
        return cached
    model = _load_teacher(tc)
    log(f"distillation: the teacher labels {len(missing)} sources (beam {tc.kd_beam}; cached in {cache})")
    lines = [json.dumps({"source": s, "output": o}, ensure_ascii=False) for s, o in cached.items()]
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start : start + CHUNK]
        for source, result in zip(chunk, model.decode(chunk, beam_size=tc.kd_beam, errors="return")):
            cached[source] = result.text if result.ok else ""
            lines.append(json.dumps({"source": source, "output": cached[source]}, ensure_ascii=False))
        write_text_atomic(cache, "\n".join(lines) + "\n")  # a killed run keeps the labels decoded so far
    return cached


def cache_dir(tc: TrainConfig, out: Path) -> Path:
    """--kd-cache, or OUT/teacher/. Entries are keyed by what they depend on (the teacher's bundle id
    and beam; for distributions also the student's pairs and vocabularies), so students share one."""
    return Path(tc.kd_cache) if tc.kd_cache else out / "teacher"


def _cache_path(tc: TrainConfig, directory: Path, pattern: str) -> Path:
    """directory / pattern with the teacher's key (its bundle id, read from bundle.json, no session
    loaded; an ensemble's: a digest of its members' ids); when the teacher is no longer there (a
    resumed run elsewhere), the one cache that fits."""
    directory.mkdir(parents=True, exist_ok=True)
    teachers = [tc.teacher, *tc.teacher_ensemble]
    metas = [Path(t) / BUNDLE_FILE for t in teachers]
    if all(meta.exists() for meta in metas):
        ids = [_bundle_id(meta) for meta in metas]
        key = ids[0] if len(ids) == 1 else "ensemble-" + hashlib.sha1("+".join(ids).encode()).hexdigest()[:16]
        return directory / pattern.format(key)
    found = sorted(directory.glob(pattern.format("*")))
    if len(found) == 1:
        return found[0]
    return directory / pattern.format("missing-teacher")  # _load_teacher will say what is wrong


def _bundle_id(meta: Path) -> str:
    try:
        return json.loads(meta.read_text(encoding="utf-8"))["bundle_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise Seq2EdgeError(f"{meta}: not a readable bundle.json; --teacher needs a bundle") from None


def _load_teacher(tc: TrainConfig):
    """The teacher bundle (with --teacher given more than once, the ensemble of those bundles)."""
    from seq2edge.runtime import Seq2Seq

    for teacher in map(Path, [tc.teacher, *tc.teacher_ensemble]):
        if not (teacher / BUNDLE_FILE).exists():
            hint = "; export it first: seq2edge export CHECKPOINT BUNDLE" if (teacher / "config.json").exists() else ""
            raise Seq2EdgeError(f"{teacher}: distillation needs a teacher bundle (it runs in the runtime){hint}")
    # --threads bounds the teacher too: onnxruntime's default (a thread per core) next to torch's
    # threads oversubscribes the cores and slows both.
    return Seq2Seq.load(tc.teacher, providers="cpu", threads=tc.threads, unknown="unk", too_long="truncate",
                        ensemble=tc.teacher_ensemble)


def _extra_inputs(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Seq2EdgeError(f"{path}: cannot read the extra inputs: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and "\t" not in line]


# -- token level: KL to the teacher's per-step distributions ---------------------------------------

@dataclass
class TokenTargets:
    """The teacher's k most likely next tokens (student ids, -1 where the student has no such token)
    and their probabilities, for every decoder step of every training pair: pair i's steps are rows
    offsets[i] .. offsets[i + 1] (its target tokens, then </s>)."""

    ids: np.ndarray  # int32 [steps, k]
    probs: np.ndarray  # float32 [steps, k]
    offsets: np.ndarray  # int64 [pairs + 1]

    def batch(self, pairs: list[int], width: int) -> tuple[np.ndarray, np.ndarray]:
        """[B, width, k] ids and probabilities for these pairs, padded with id -1 and probability 0."""
        k = self.ids.shape[1]
        ids = np.full((len(pairs), width, k), -1, dtype=np.int64)
        probs = np.zeros((len(pairs), width, k), dtype=np.float32)
        for row, pair in enumerate(pairs):
            start, end = self.offsets[pair], self.offsets[pair + 1]
            ids[row, : end - start] = self.ids[start:end]
            probs[row, : end - start] = self.probs[start:end]
        return ids, probs


def token_targets(tc: TrainConfig, src: list[list[int]], tgt: list[list[int]], source, target, out: Path,
                  log: Callable[[str], None]) -> TokenTargets:
    """The teacher's top-k distributions on every step of the training pairs (teacher forcing on the
    references), from OUT/teacher/ or computed now by the runtime and cached there."""
    from safetensors.numpy import load_file, save_file

    digest = hashlib.sha1(json.dumps([src, tgt, source.vocab.tokens, target.vocab.tokens]).encode()).hexdigest()[:16]
    cache = _cache_path(tc, cache_dir(tc, out), f"token-{{}}-k{tc.kd_top_k}-{digest}.safetensors")
    if cache.exists():
        arrays = load_file(str(cache))
        return TokenTargets(arrays["ids"], arrays["probs"], arrays["offsets"])
    model = _load_teacher(tc)
    log(f"distillation: the teacher scores {sum(len(t) + 1 for t in tgt)} decoder steps of {len(tgt)} pairs "
        f"(top {tc.kd_top_k}; cached in {cache})")
    targets = _teacher_forced(model, src, tgt, source, target, tc.kd_top_k)
    with atomic_path(cache) as tmp:
        save_file({"ids": targets.ids, "probs": targets.probs, "offsets": targets.offsets}, str(tmp))
    return targets


def _teacher_forced(model, src, tgt, source, target, k: int, batch_size: int = 256) -> TokenTargets:
    """Step the teacher's decoder on the reference tokens and keep its k best next tokens per step."""
    teacher_src = model.bundle.source.vocab.index
    teacher_tgt = model.bundle.target.vocab.index
    unk = teacher_src["<unk>"]
    to_student = np.full(len(model.bundle.target.vocab), -1, dtype=np.int32)  # teacher target id -> student id
    for token, i in teacher_tgt.items():
        to_student[i] = target.vocab.index.get(token, -1)
    c = model.config
    ids_out, probs_out, lengths = [], [], []
    for start in range(0, len(src), batch_size):
        rows = range(start, min(start + batch_size, len(src)))
        src_ids, src_lengths = pad_batch([[teacher_src.get(source.vocab.tokens[i], unk) for i in src[r]] for r in rows], c.pad_id)
        gold = [[teacher_tgt.get(target.vocab.tokens[i], teacher_tgt["<unk>"]) for i in tgt[r]] for r in rows]
        stepper, state = model.stepper(src_ids, src_lengths)
        steps, every_row = max(len(g) for g in gold) + 1, np.arange(len(gold))
        prev = np.full(len(gold), c.bos_id, dtype=np.int64)
        top_ids, top_probs = [], []
        for t in range(steps):
            out = stepper(prev, state, every_row)
            state = out.state
            values, ids = out.top(k, np.zeros(c.tgt_vocab_size, dtype=np.float32))
            top_ids.append(to_student[ids])
            top_probs.append(np.exp(values))
            prev = np.array([g[t] if t < len(g) else c.eos_id for g in gold], dtype=np.int64)
        for row, g in enumerate(gold):
            ids_out.append(np.stack([top_ids[t][row] for t in range(len(g) + 1)]))
            probs_out.append(np.stack([top_probs[t][row] for t in range(len(g) + 1)]))
            lengths.append(len(g) + 1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenTargets(np.concatenate(ids_out).astype(np.int32), np.concatenate(probs_out).astype(np.float32), offsets)
