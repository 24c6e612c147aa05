"""Sequence-level knowledge distillation (Kim & Rush 2016): train on a teacher's beam-search outputs.

`seq2edge train --teacher BUNDLE --kd seq` labels every training source (and, with --extra-inputs,
unlabelled sources of the training part of the split) with the teacher bundle's best beam
hypothesis, decoded by the runtime (onnxruntime). Labels are cached in OUT/teacher/, keyed by the
teacher's bundle id and beam size, so a resumed run (or a second student) does not decode again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.interface import BUNDLE_FILE
from seq2edge.runtime.util import write_text_atomic

from .config import TrainConfig
from .corpus import Entry, split_of

KD_MODES = ("seq",)
CHUNK = 4096  # sources decoded (and cached) at a time


def distilled_entries(tc: TrainConfig, entries: list[Entry], out: Path, log: Callable[[str], None]) -> list[Entry]:
    """The training entries with the teacher's outputs as targets (before the references with
    kd_mix_references), plus the --extra-inputs sources of the training part, teacher-labelled."""
    sources = [e.source for e in entries]
    known = set(sources)
    extra = [s for s in _extra_inputs(tc.extra_inputs) if s not in known and split_of(s) == "train"]
    labels = teacher_labels(tc, list(dict.fromkeys(sources + extra)), out, log)
    distilled = []
    for entry in entries:
        label = labels.get(entry.source)
        refs = tuple(dict.fromkeys(((label,) if label else ()) + (entry.references if tc.kd_mix_references or not label else ())))
        distilled.append(Entry(entry.source, refs))
    distilled += [Entry(s, (labels[s],)) for s in dict.fromkeys(extra) if labels.get(s)]
    log(f"distillation: {len(entries)} training sources labelled by the teacher"
        f"{' (references kept)' if tc.kd_mix_references else ''}, {len(distilled) - len(entries)} extra inputs added")
    return distilled


def teacher_labels(tc: TrainConfig, sources: list[str], out: Path, log: Callable[[str], None]) -> dict[str, str]:
    """source -> the teacher's best beam output, from the cache or decoded now (and cached)."""
    cache = _cache_path(tc, out / "teacher")
    cached = {}
    if cache.exists():
        cached = {r["source"]: r["output"] for r in map(json.loads, cache.read_text(encoding="utf-8").splitlines())}
    missing = [s for s in sources if s not in cached]
    if not missing:
        return cached
    model = _load_teacher(Path(tc.teacher))
    log(f"distillation: the teacher labels {len(missing)} sources (beam {tc.kd_beam}; cached in {cache})")
    lines = [json.dumps({"source": s, "output": o}, ensure_ascii=False) for s, o in cached.items()]
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start : start + CHUNK]
        for source, result in zip(chunk, model.decode(chunk, beam_size=tc.kd_beam, errors="return")):
            cached[source] = result.text if result.ok else ""
            lines.append(json.dumps({"source": source, "output": cached[source]}, ensure_ascii=False))
        write_text_atomic(cache, "\n".join(lines) + "\n")  # a killed run keeps the labels decoded so far
    return cached


def _cache_path(tc: TrainConfig, directory: Path) -> Path:
    """OUT/teacher/seq-<teacher bundle id>-beam<N>.jsonl; when the teacher is no longer there (a
    resumed run elsewhere), the one cache of that beam size."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = Path(tc.teacher) / BUNDLE_FILE
    if meta.exists():
        try:
            bundle_id = json.loads(meta.read_text(encoding="utf-8"))["bundle_id"]
        except (OSError, ValueError, KeyError, TypeError):
            raise Seq2EdgeError(f"{meta}: not a readable bundle.json; --teacher needs a bundle") from None
        return directory / f"seq-{bundle_id}-beam{tc.kd_beam}.jsonl"
    found = sorted(directory.glob(f"seq-*-beam{tc.kd_beam}.jsonl"))
    if len(found) == 1:
        return found[0]
    return directory / f"seq-missing-teacher-beam{tc.kd_beam}.jsonl"  # _load_teacher will say what is wrong


def _load_teacher(teacher: Path):
    from seq2edge.runtime import Seq2Seq

    if not (teacher / BUNDLE_FILE).exists():
        hint = "; export it first: seq2edge export CHECKPOINT BUNDLE" if (teacher / "config.json").exists() else ""
        raise Seq2EdgeError(f"{teacher}: --kd seq needs a teacher bundle (its beam search runs in the runtime){hint}")
    return Seq2Seq.load(teacher, providers="cpu", unknown="unk", too_long="truncate")


def _extra_inputs(path: str | None) -> list[str]:
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Seq2EdgeError(f"{path}: cannot read the extra inputs: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and "\t" not in line]
