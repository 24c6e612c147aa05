"""Decoding many lines: chunks decoded in this process or in worker processes, written in input order.

One function, `decode_chunk`, turns a chunk of input lines into the exact bytes to write (and the
lines to say on stderr), so one process and N worker processes write the same output by
construction. Workers each load the bundle once, with one onnxruntime thread; at most two chunks
per worker are in flight, so memory stays bounded and a slow writer holds the reader back.
"""

from __future__ import annotations

import json
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import Seq2EdgeError
from .model import Result, Seq2Seq
from .options import SearchOptions

if TYPE_CHECKING:  # imported where workers start: a one-process decode need not pay for them at start-up
    from concurrent.futures import Future, ProcessPoolExecutor

INPUT_FORMATS = ("lines", "tsv")


@dataclass(frozen=True)
class Job:
    """What a decoding process needs, picklable: how to load the model, how to search, what to write."""

    bundle: str
    load: dict[str, Any]  # keyword arguments of Seq2Seq.load
    options: SearchOptions
    fmt: str = "text"  # text | tsv | jsonl
    with_nbest: bool = False
    column: int | None = None  # 1-based TSV column to decode; None: the whole line


@dataclass
class Line:
    """One input's output: the bytes to write, what to say on stderr, whether it failed."""

    number: int  # the input's line number
    out: str
    notes: list[str] = field(default_factory=list)
    failed: bool = False
    result: Result | None = None  # kept only in this process (attention plots)


def decode_chunk(model: Seq2Seq, job: Job, chunk: list[tuple[int, str, str | None]]) -> list[Line]:
    """Decode a chunk of (line number, line, problem) and format every line of it."""
    texts: list[str | _MissingColumn | None] = []
    good: list[str] = []
    # Sampling draws follow the line number, not the place in this chunk, so that they do not depend
    # on where a chunk was cut (chunk size, a pause in a live stream) or on a bad line before.
    positions: list[int] = []
    for number, line, problem in chunk:
        text = None if problem is not None else _column(line, job.column)
        texts.append(text)
        if isinstance(text, str):
            good.append(text)
            positions.append(number - 1)
    results = iter(model.decode(good, job.options, positions=positions)) if good else iter(())
    lines = []
    for (number, line, problem), text in zip(chunk, texts):
        result = None
        if problem is None and not isinstance(text, str):
            problem = text.problem  # a missing column
        elif problem is None:
            result = next(results)
            problem = result.error
        notes = [f"line {number}: {problem}"] if problem is not None else []
        if problem is None and result.source_truncated_from is not None:
            notes.append(f"line {number}: truncated from {result.source_truncated_from} to {len(result.source_tokens)} "
                         "source tokens (--too-long truncate)")
        lines.append(Line(number, format_line(job, number, line, text if isinstance(text, str) else None, result, problem),
                          notes, problem is not None, result))
    return lines


@dataclass(frozen=True)
class _MissingColumn:
    problem: str


def _column(line: str, column: int | None) -> str | _MissingColumn:
    if column is None:
        return line
    fields = line.split("\t")
    if len(fields) < column:
        return _MissingColumn(f"has {len(fields)} column(s), --column {column} asked for")
    return fields[column - 1]


def format_line(job: Job, number: int, line: str, text: str | None, result: Result | None, problem: str | None) -> str:
    """One input's record: text (`input -> output`), tsv (`input<TAB>output`) or jsonl. With --column,
    text and tsv write the whole input line with the output appended as a new column."""
    shown = line if job.column is None else text if text is not None else line
    if job.fmt == "jsonl":
        record: dict = {"line": number, "input": shown}
        if job.column is not None:
            record["columns"] = line.split("\t")
        if problem is not None:
            record["error"] = problem
        else:
            record.update(output=result.text, tokens=result.tokens, score=round(result.score, 6))
            if result.truncated:
                record["truncated"] = True
            if result.source_truncated_from is not None:
                record["source_truncated_from"] = result.source_truncated_from
            if job.with_nbest:
                record["nbest"] = [{"output": r.text, "tokens": r.tokens, "score": round(r.score, 6)}
                                   for r in (result.nbest or [result])]
        return json.dumps(record, ensure_ascii=False) + "\n"
    hyps = [] if problem is not None else (result.nbest or [result]) if job.with_nbest else [result]
    if job.column is not None:  # the line back, the output as a new last column
        if problem is not None:
            return f"{line}\t\n"
        return "".join(f"{line}\t{r.text}" + (f"\t{r.score:.4f}" if job.with_nbest else "") + "\n" for r in hyps)
    if problem is not None:
        return f"{line}\t\n" if job.fmt == "tsv" else f"{line} -> (error: {problem})\n"
    if job.fmt == "tsv":
        return "".join(f"{line}\t{r.text}" + (f"\t{r.score:.4f}" if job.with_nbest else "") + "\n" for r in hyps)
    return "".join(f"{line} -> {r.text}" + (f"  ({r.score:.3f})" if job.with_nbest else "") + "\n" for r in hyps)


def decoded_chunks(job: Job, chunks: Iterable[list], workers: int, model: Seq2Seq | None = None) -> Iterator[list[Line]]:
    """Each chunk's Lines, in input order: in this process (workers == 1, with `model`) or in
    `workers` processes. Stopping the iteration (or an exception in the caller) stops the workers."""
    if workers <= 1:
        model = model or Seq2Seq.load(job.bundle, **job.load)
        for chunk in chunks:
            yield decode_chunk(model, job, chunk)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(job,))
    pending: deque[Future] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_decode_in_worker, chunk))
            while len(pending) >= 2 * workers:  # back-pressure: read no further ahead than this
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        _stop(pool)


def _stop(pool: ProcessPoolExecutor) -> None:
    processes = list((pool._processes or {}).values())  # noqa: SLF001 - no public way to stop workers mid-chunk
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


_WORKER: dict[str, Any] = {}


def _start_worker(job: Job) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    _WORKER["job"] = job
    _WORKER["model"] = Seq2Seq.load(job.bundle, **job.load)


def _decode_in_worker(chunk: list) -> list[Line]:
    lines = decode_chunk(_WORKER["model"], _WORKER["job"], chunk)
    for line in lines:
        line.result = None  # not sent back: only the bytes and notes are needed
    return lines


def worker_count(value: str) -> int:
    """--workers: a number, or "auto" (the cores this process may run on)."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        count = int(value)
    except ValueError:
        raise Seq2EdgeError(f"--workers takes a number or auto, not {value!r}") from None
    if count < 1:
        raise Seq2EdgeError("--workers must be at least 1")
    return count


