"""Where `seq2edge decode` writes, and how --resume continues a file.

A regular --output file is written beside it as `.NAME.partial`, each finished chunk flushed and synced
to disk, and renamed into place at the end (or, when interrupted, holding the records finished so far);
a run killed outright leaves `.NAME.partial`. A FIFO or device is written as it is. While a regular
file is unfinished, `.NAME.decode.json` beside it holds the settings that decide its bytes (removed when
the run completes). --resume continues a file only when those settings are the same and every record
it holds is the record of the input line it stands for (a torn last record is dropped); otherwise it
refuses in one line and leaves the file as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from .bulk import Job
from .errors import Seq2EdgeError
from .model import Seq2Seq
from .util import remove_orphans, write_json_atomic


def output_settings(model: Seq2Seq, job: Job, precision: str, unknown: str, too_long: str, greedy_graph: bool | None,
              input_format: str) -> dict:
    """What decides an output's bytes: --resume continues a file only with the same (workers, threads and the
    provider do not change them)."""
    search = {k: v for k, v in dataclasses.asdict(job.options).items() if k not in ("errors", "return_attention")}
    return {"bundles": [model.bundle.bundle_id, *(m.bundle.bundle_id for m in model.members)], "precision": precision,
            "format": job.fmt, "nbest": job.with_nbest, "input_format": input_format, "column": job.column,
            "unknown": unknown, "too_long": too_long, "greedy_graph": greedy_graph, "search": search}


class ResumeRefused(Seq2EdgeError):
    """--resume found a file it cannot continue; the file is left as it was."""


class Sink:
    """stdout; a FIFO or device, written as it is; or a regular file, written so that no crash loses a finished line.

    A regular FILE is written at `.FILE.partial` beside it (or, when --resume continues an unfinished FILE, at
    FILE itself), after `.FILE.decode.json`, the settings that write it. Each chunk's records are flushed and
    synced to disk as the chunk finishes (`end_chunk`). A finished run renames the partial file onto FILE and
    removes the settings record; an interrupted one (SIGINT, SIGTERM, an error) renames what it wrote onto FILE
    and keeps the record, so that --resume continues it; one killed outright (SIGKILL, a power cut) leaves
    `.FILE.partial` and the record, which --resume continues first. `records` reads back the old file's
    complete records (a torn last one is dropped), `recorded` says whether its settings record was there."""

    def __init__(self, path: Path | None, resume: bool, settings: dict):
        self.path, self.resume, self.settings = path, resume, settings
        self.done = 0
        self.records: OldRecords | None = None
        self.recorded = False
        self.target: Path | None = None  # the file records go to: .FILE.partial, or FILE when continued in place
        self._kept_bytes = 0  # bytes of the old file's records kept so far: the rest is cut before the first new one
        self._keep = False
        self.continuing = False  # --resume found a file to continue

    @property
    def settings_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.decode.json")

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.partial")

    def __enter__(self) -> Sink:
        if self.path is None:
            self.stream = sys.stdout
            return self
        kind = _file_kind(self.path)
        if kind == "directory":
            raise Seq2EdgeError(f"{self.path}: is a directory; give --output a file name")
        if kind == "special":  # a FIFO or a device: written as it is, never replaced by a regular file
            if self.resume:
                raise ResumeRefused(f"{self.path}: --resume continues a regular file, not a pipe or device")
            self.stream = self._open(self.path, "w")
            return self
        remove_orphans(self.path, ".tmp")  # temporaries of versions that wrote `.FILE.PID.tmp`
        partial = self.partial_path.exists()
        self.continuing = self.resume and (partial or kind == "file")
        if self.continuing:
            self.recorded = self._check_settings()
            self.target = self.partial_path if partial else self.path  # a killed run's partial file is the newest
        else:
            self.target = self.partial_path
        self.stream = self._open(self.target, "a")
        self._lock()
        if self.continuing:
            if self.target.stat().st_size:
                self.records = OldRecords(self.target, self.settings["format"])
            return self
        if partial:
            print(f"seq2edge: {self.partial_path} held an unfinished run's records; replaced (--resume would have "
                  "continued it)", file=sys.stderr)
        try:  # the settings first: a file on disk is never without the record that lets --resume continue it
            write_json_atomic(self.settings_path, {"written_by": "seq2edge decode", "settings": self.settings})
            os.truncate(self.target, 0)
        except OSError as exc:
            self.stream.close()
            raise Seq2EdgeError(f"{self.path}: cannot write: {exc.strerror}") from None
        return self

    def _open(self, path: Path, mode: str):
        try:
            return open(path, mode, encoding="utf-8", newline="")
        except OSError as exc:
            raise Seq2EdgeError(f"{self.path}: cannot write: {exc.strerror}") from None

    def _lock(self) -> None:
        """One writer per output: a second decode into the same FILE is refused, not interleaved."""
        import fcntl

        try:
            fcntl.flock(self.stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.stream.close()
            raise Seq2EdgeError(f"{self.path}: another seq2edge decode is writing it") from None

    def _check_settings(self) -> bool:
        """False when there is no record (a finished file, or one not written by seq2edge decode)."""
        try:
            saved = json.loads(self.settings_path.read_text(encoding="utf-8"))["settings"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            raise ResumeRefused(f"{self.settings_path}: unreadable; decode into a new --output") from None
        changed = [f"{name} {saved.get(name)!r} -> {value!r}" for name, value in self.settings.items() if saved.get(name) != value]
        if changed:
            raise ResumeRefused(f"{self.path}: was written with other settings ({'; '.join(changed)}); --resume continues "
                                "a file with the same bundle, format and search settings")
        return True

    def keep(self, record: str) -> None:
        """A record of the old file, checked: it stays where it is."""
        self._kept_bytes += len(record.encode("utf-8"))
        self.done += 1

    def write(self, text: str) -> None:
        if self.records is not None and not self.records.ended_at_write:
            self.records.ended_at_write = True
            self.stream.flush()
            os.truncate(self.target, self._kept_bytes)  # a torn last record, or one --resume does not keep
        self.stream.write(text)
        self.done += 1
        if self.target is None:
            self.stream.flush()

    def end_chunk(self) -> None:
        """The chunk's records are on disk (flushed, and synced for a file): a crash from here on keeps them."""
        self.stream.flush()
        if self.target is not None:
            os.fsync(self.stream.fileno())

    def keep_partial(self) -> None:
        """Rename what was written into place although the run did not finish."""
        self._keep = True

    def __exit__(self, kind, value, tb):
        if self.path is None:
            return False
        if self.records is not None:
            self.records.close()
        if self.target is None:
            self.stream.close()
            return False
        self.end_chunk()
        self.stream.close()
        finished = kind is None and not self._keep
        fresh = self.target == self.partial_path and not self.continuing
        if fresh and not self.done and not finished:  # stopped before its first record: nothing to keep
            self.target.unlink(missing_ok=True)
            self.settings_path.unlink(missing_ok=True)
            return False
        if (finished or self._keep) and self.target != self.path:
            os.replace(self.target, self.path)
            _sync_directory(self.path.parent)
        if finished:  # nothing left to resume
            self.settings_path.unlink(missing_ok=True)
        return False


def _sync_directory(directory: Path) -> None:
    """The renames inside `directory` on disk too (a power cut after a rename must not undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_kind(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise Seq2EdgeError(f"{path}: cannot write: {exc.strerror}") from None
    return "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special"


class OldRecords:
    """The complete records of the file --resume continues, one by one: whole lines (split at a line
    feed only, so a lone CR inside an input stays inside its record), valid JSON for jsonl."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.file = open(path, "rb")
        self.count = 0
        self.ended = False
        self.ended_at_write = False  # the writer has cut the file after the records kept

    def next(self) -> str | None:
        if self.ended:
            return None
        raw = self.file.readline()
        if not raw.endswith(b"\n"):  # the end, or a line the interrupted run was writing when killed
            self.ended = True
            return None
        try:
            record = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ResumeRefused(f"{self.path}: record {self.count + 1} is not UTF-8 (byte {exc.start}); not a file seq2edge "
                                "decode wrote") from None
        if self.fmt == "jsonl":
            try:
                json.loads(record)
            except ValueError:
                self.ended = True
                return None
        self.count += 1
        return record

    def close(self) -> None:
        self.file.close()


def _matches(record: str, job: Job, number: int, line: str) -> bool:
    """Whether `record` is what this job writes for input `number` (its text, as the output shows it)."""
    if job.fmt == "jsonl":
        data = json.loads(record)
        shown = line if job.column is None else _shown_column(line, job.column)
        return isinstance(data, dict) and data.get("line") == number and data.get("input") == shown
    if job.column is not None or job.fmt == "tsv":
        return record.startswith(f"{line}\t")
    return record.startswith(f"{line} -> ")


def _shown_column(line: str, column: int) -> str:
    fields = line.split("\t")
    return fields[column - 1] if len(fields) >= column else line


def unwritten(chunks: Iterator[list], out: Sink, job: Job, already: deque) -> Iterator[list]:
    """The chunks not wholly in the output yet; for each, how many of its lines are (into `already`).
    With --resume, each line the old output holds is checked to be this input's record, and copied."""
    old = out.records
    for chunk in chunks:
        kept = 0
        while old is not None and kept < len(chunk):
            record = old.next()
            if record is None:
                break
            number, line, _ = chunk[kept]
            if not _matches(record, job, number, line):
                raise ResumeRefused(f"{out.path}: record {old.count} is not what --format {job.fmt} writes for input line "
                                    f"{number}; the file was written from another input or with other settings; decode into "
                                    "a new --output")
            out.keep(record)
            kept += 1
        if kept == len(chunk):
            continue
        if old is not None and old.count and not out.recorded:
            raise ResumeRefused(f"{out.path}: unfinished, with no record of the settings that wrote it "
                                f"(.{out.path.name}.decode.json); --resume continues only a file seq2edge decode left "
                                "unfinished; decode into a new --output")
        already.append(kept)
        yield chunk
    if old is not None and old.next() is not None:
        raise ResumeRefused(f"{out.path}: holds more records than the input has lines; it was written from another input")
