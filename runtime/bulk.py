"""Decoding many lines: chunks decoded in this process or in worker processes, written in input order.

One function, `decode_chunk`, turns a chunk of input lines into the exact bytes to write (and the
lines to say on stderr), so one process and N worker processes write the same output by
construction. Workers each load the bundle once, with one onnxruntime thread; at most two chunks
per worker are in flight, so memory stays bounded and a slow writer holds the reader back.

A worker that dies (killed, out of memory) is reported as `WorkerDied` once the chunks before its
own are written, so every finished line is kept and `--resume` continues; workers exit when their
parent dies, so a killed parent leaves none behind.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import Seq2EdgeError
from .model import Result, Seq2Seq
from .options import SearchOptions

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


class WorkerDied(Seq2EdgeError):
    """A worker process ended without finishing its chunk; the lines before that chunk were written."""

    exit_code = 1


def decoded_chunks(job: Job, chunks: Iterable[list], workers: int, model: Seq2Seq | None = None,
                   flush: Any = None) -> Iterator[list[Line]]:
    """Each chunk's Lines, in input order: in this process (workers == 1, with `model`) or in
    `workers` processes. Stopping the iteration (or an exception in the caller) stops the workers.
    With workers, a chunk for which `flush(chunk)` is true (one cut where a live stream paused) is
    decoded and yielded before the next chunk is read, as one process would."""
    if workers <= 1:
        model = model or Seq2Seq.load(job.bundle, **job.load)
        for chunk in chunks:
            yield decode_chunk(model, job, chunk)
        return
    with _WorkerPool(job, workers) as pool:
        for chunk in chunks:
            pool.submit(chunk)
            while pool.pending >= 2 * workers or (pool.pending and flush is not None and flush(chunk)):
                yield pool.next_result()  # back-pressure: read no further ahead than two chunks a worker
        while pool.pending:
            yield pool.next_result()


class _WorkerPool:
    """`size` spawned processes, each with its own pipe; chunk k goes to worker k mod size, so results
    come back in input order by reading the workers in turn. A worker's death is seen by its
    process sentinel, never by waiting on a pipe it may have left half-written."""

    def __init__(self, job: Job, size: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.links, self.processes = [], []
        for _ in range(size):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, args=(job, child), daemon=True)
            process.start()
            child.close()
            self.links.append(parent)
            self.processes.append(process)
        self.sent = self.received = 0
        self.chunks: dict[int, list] = {}

    def __enter__(self) -> _WorkerPool:
        return self

    @property
    def pending(self) -> int:
        return self.sent - self.received

    def submit(self, chunk: list) -> None:
        worker = self.sent % len(self.links)
        try:
            self.links[worker].send(chunk)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._died(worker, chunk) from None
        self.chunks[self.sent] = chunk
        self.sent += 1

    def next_result(self) -> list[Line]:
        from multiprocessing.connection import wait

        worker = self.received % len(self.links)
        link, process = self.links[worker], self.processes[worker]
        chunk = self.chunks.pop(self.received)
        while True:
            ready = wait([link, process.sentinel])
            if process.sentinel in ready and not link.poll():
                raise self._died(worker, chunk)
            if link in ready or link.poll():
                break
        try:
            reply = link.recv()
        except (EOFError, OSError):
            raise self._died(worker, chunk) from None
        self.received += 1
        if isinstance(reply, Seq2EdgeError):  # the worker could not load the bundle: as exit 2 in this process
            raise reply
        return reply

    def _died(self, worker: int, chunk: list) -> WorkerDied:
        process = self.processes[worker]
        process.join(timeout=1)
        code = process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        first, last = chunk[0][0], chunk[-1][0]
        return WorkerDied(f"worker process {process.pid} {how} while decoding lines {first}-{last}; the lines "
                          "before them were written")

    def __exit__(self, *exc: Any) -> None:
        for link in self.links:
            link.close()  # a worker waiting for a chunk sees the end and exits
        for process in self.processes:
            process.join(timeout=0.5)
            if process.is_alive():  # still decoding a chunk nobody will read
                process.terminate()
                process.join(timeout=5)


def _worker_main(job: Job, link: Any) -> None:
    """A worker: load the bundle once, then decode the chunks that come down `link` until it closes."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    _exit_with(multiprocessing.parent_process())
    try:
        model = Seq2Seq.load(job.bundle, **job.load)
    except Seq2EdgeError as exc:
        link.send(Seq2EdgeError(str(exc)))  # a plain one: every subclass pickles so
        return
    while True:
        try:
            chunk = link.recv()
        except (EOFError, OSError):
            return
        lines = decode_chunk(model, job, chunk)
        for line in lines:
            line.result = None  # not sent back: only the bytes and notes are needed
        try:
            link.send(lines)
        except OSError:  # the parent stopped reading (it finished, or failed): nothing left to do
            return


def _exit_with(parent: Any) -> None:
    """End this process as soon as `parent` ends (SIGKILL of the parent leaves no worker asleep for good)."""
    from multiprocessing.connection import wait

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


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


