"""Helpers every part of seq2edge uses: atomic file writes, file hashes, batch padding."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Seq2EdgeError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends
    normally, removed when it raises. The file gets the permissions a newly created file gets
    (0644 under the common umask), whatever the writer did to the temporary file: the temporary
    file is created first, by the OS under the process's umask, and its mode kept (reading the
    umask itself would mean setting it, for every thread of the process)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            tmp.unlink(missing_ok=True)  # a leftover of a killed run with this process id
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as exc:
            raise Seq2EdgeError(f"{path}: cannot write: {exc.strerror}") from None
        mode = tmp.stat().st_mode & 0o777
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Id sequences -> (ids int64 [B, longest] padded with pad_id, lengths int64 [B])."""
    if len(sequences) == 1:  # batch 1, the device app's call: no padding to do
        return np.array([sequences[0]], dtype=np.int64), np.array([len(sequences[0])], dtype=np.int64)
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    ids = np.full((len(sequences), int(lengths.max()) if len(sequences) else 0), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A temporary directory beside `path` to build in, put in place of `path` when the block ends
    normally (an existing one is moved aside, then removed), removed when it raises; so `path` is
    always complete or absent. Leftovers of runs killed outright are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path, ".partial")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old") if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        os.chmod(path, 0o755)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_overlap(out: str | Path, inputs: list[tuple[str, str | Path | None]], option: str = "OUT") -> None:
    """Refuse an output directory that is, contains or lies inside one of `inputs` ((name, path) pairs):
    replacing it would destroy what the command reads (`export CK CK --force` once left only the bundle)."""
    target = Path(out).resolve()
    for name, path in inputs:
        if path is None:
            continue
        source = Path(path).resolve()
        relation = ("is" if target == source else "contains" if target in source.parents
                    else "lies inside" if source in target.parents else None)
        if relation is not None:
            raise Seq2EdgeError(f"{out}: the output {relation} the {name} ({path}), which writing it would destroy; "
                                f"choose an {option} outside it")


def check_writable(path: str | Path, option: str) -> None:
    """Refuse, before any work, an output path whose directory is missing or that is a directory."""
    path = Path(path)
    if path.is_dir():
        raise Seq2EdgeError(f"{option} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise Seq2EdgeError(f"{option} {path}: the directory {path.parent} does not exist")


def remove_orphans(target: Path, suffix: str) -> None:
    """Remove `.NAME.PID...SUFFIX` leftovers beside `target` (NAME its name) whose process is gone:
    temporaries of runs killed outright (SIGKILL), which could not clean up after themselves."""
    for leftover in target.parent.glob(f".{target.name}.*{suffix}"):
        try:
            pid = int(leftover.name[len(target.name) + 2 :].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue
