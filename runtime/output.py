"""Where `seq2edge decode` writes, and how --resume continues a file.

A regular --output file is written to a temporary path and renamed into place at the end (or, when
interrupted, holding the records finished so far); a FIFO or device is written as it is. While a
regular file is unfinished, `.NAME.decode.json` beside it holds the settings that decide its bytes
(removed when the run completes). --resume continues a file only when those settings are the same and
every record it holds is the record of the input line it stands for; otherwise it refuses in one line
and leaves the file as it was.
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
from .util import atomic_path, remove_orphans, write_json_atomic


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
    """stdout; a regular file written to a temporary path and renamed into place at the end (or, when
    interrupted, with the records finished so far); or a FIFO or device written directly. Beside a
    regular file, `.NAME.decode.json` records the settings that write it until the run completes, so
    that --resume continues an unfinished file only with the same bundle, format and search;
    `records` reads back its complete records, `recorded` says whether that record was there."""

    def __init__(self, path: Path | None, resume: bool, settings: dict):
        self.path, self.resume, self.settings = path, resume, settings
        self.done = 0
        self.records: OldRecords | None = None
        self.recorded = False
        self._atomic = None
        self._keep = False

    @property
    def settings_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.decode.json")

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
            self.stream = self._open(self.path)
            return self
        if self.resume and kind == "file":
            self.recorded = self._check_settings()
        remove_orphans(self.path, ".tmp")
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self.stream = self._open(tmp)
            write_json_atomic(self.settings_path, {"written_by": "seq2edge decode", "settings": self.settings})
            if self.resume and kind == "file":
                self.records = OldRecords(self.path, self.settings["format"])
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _open(self, path: Path):
        try:
            return open(path, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise Seq2EdgeError(f"{self.path}: cannot write: {exc.strerror}") from None

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

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.done += 1
        if self._atomic is None:
            self.stream.flush()

    def keep_partial(self) -> None:
        """Rename what was written into place although the run did not finish."""
        self._keep = True

    def __exit__(self, kind, value, tb):
        if self.path is None:
            return False
        if self.records is not None:
            self.records.close()
        self.stream.close()
        if self._atomic is None:
            return False
        if self._keep or kind is None:
            self._atomic.__exit__(None, None, None)
            if not self._keep:  # finished: nothing left to resume
                self.settings_path.unlink(missing_ok=True)
        else:
            self._atomic.__exit__(kind, value, tb)
        return False


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
            out.write(record)
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
