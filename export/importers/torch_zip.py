"""Read a PyTorch checkpoint (torch.save's zip format) without unpickling it.

The archive's data.pkl is a pickle, but nothing here runs it: its opcodes are walked with
pickletools and interpreted by a small machine that builds only plain containers (dict, list, tuple,
set, str, numbers), tensors (from the archive's raw storages), OrderedDicts and argparse Namespaces
(OpenNMT-py's opt). Any other class or function the pickle names refuses the file, so a checkpoint
that would run code when loaded is read as data or not at all.
"""

from __future__ import annotations

import argparse
import math
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import ImportRefused

STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16, "LongStorage": np.int64,
            "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
            "BoolStorage": np.bool_}
ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
           ("argparse", "Namespace"), ("__builtin__", "set"), ("builtins", "set")} | {("torch", s) for s in STORAGES}


CONSTANTS = {"EMPTY_TUPLE": (), "NONE": None, "NEWTRUE": True, "NEWFALSE": False}


class _Mark:
    pass


# Bounds on what a checkpoint may claim before anything is read or viewed: toolkit checkpoints of seq2seq models
# are megabytes to a few gigabytes, with tensors of at most a few axes.
MAX_PICKLE_BYTES = 256 << 20
MAX_STORAGE_BYTES = 16 << 30
MAX_COMPRESSION = 100  # uncompressed/compressed bytes of an entry (torch.save stores entries uncompressed)
MAX_AXES = 32


def read_checkpoint(path: Path) -> object:
    """The object torch.save wrote to `path`, built from data alone; every size, stride and offset it claims is
    checked against the bytes that are there before a tensor is made."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ImportRefused(f"{path}: not a PyTorch zip checkpoint ({exc}); save it with torch 1.6 or newer") from None
    with archive:
        names = archive.namelist()
        pickle_name = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pickle_name is None:
            raise ImportRefused(f"{path}: holds no data.pkl; not a PyTorch checkpoint")
        prefix = pickle_name[: -len("data.pkl")]
        storages = _Storages(archive, prefix, path)
        try:
            return _interpret(_entry(archive, pickle_name, MAX_PICKLE_BYTES, path), storages, path)
        except ImportRefused:
            raise
        except Exception as exc:  # a malformed pickle or archive
            raise ImportRefused(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None


def _entry(archive: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    """A zip entry's bytes, refused when its recorded size is over `limit`, it inflates beyond any checkpoint's ratio,
    or what it holds is not the size it records."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ImportRefused(f"{path}: entry {name} claims {info.file_size} bytes, more than the {limit} a checkpoint's may hold")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION * max(info.compress_size, 1):
        raise ImportRefused(f"{path}: entry {name} inflates {info.file_size // max(info.compress_size, 1)}-fold; refused")
    data = archive.read(name)
    if len(data) != info.file_size:
        raise ImportRefused(f"{path}: entry {name} holds {len(data)} bytes, its record says {info.file_size}")
    return data


class _Storages:
    """The archive's raw storages, each read once, its size checked against its record and its element type."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, path: Path):
        self.archive, self.prefix, self.path, self.read = archive, prefix, path, {}

    def __call__(self, key: object, kind: object, numel: object) -> np.ndarray:
        if not isinstance(key, str) or not key.isdigit():
            raise ImportRefused(f"{self.path}: a storage key {key!r} that torch.save never writes")
        if kind not in STORAGES:
            raise ImportRefused(f"{self.path}: storage {key} has the type {kind!r}, not one of {', '.join(STORAGES)}")
        name = f"{self.prefix}data/{key}"
        if name not in self.read:
            if name not in self.archive.namelist():
                raise ImportRefused(f"{self.path}: storage {key} is missing from the archive")
            data = _entry(self.archive, name, MAX_STORAGE_BYTES, self.path)
            itemsize = np.dtype(STORAGES[kind]).itemsize
            if len(data) % itemsize:
                raise ImportRefused(f"{self.path}: storage {key} holds {len(data)} bytes, not whole {kind} elements")
            self.read[name] = np.frombuffer(data, dtype=STORAGES[kind])
        array = self.read[name]
        if array.dtype != np.dtype(STORAGES[kind]):
            raise ImportRefused(f"{self.path}: storage {key} is read as two element types")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel != array.size:
            raise ImportRefused(f"{self.path}: storage {key} holds {array.size} elements, its record says {numel!r}")
        return array


def _interpret(data: bytes, storage: _Storages, path: Path) -> object:
    stack: list = []
    memo: dict = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name == "MARK":
            stack.append(_Mark)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name in CONSTANTS:
            stack.append(CONSTANTS[name])
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "BINFLOAT", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
                      "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
            stack.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name in ("TUPLE", "LIST"):
            items = _pop_mark(stack)
            stack.append(tuple(items) if name == "TUPLE" else items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name == "APPENDS":
            items = _pop_mark(stack)
            stack[-1].extend(items)
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = _pop_mark(stack)
            for key, value in zip(items[::2], items[1::2]):
                stack[-1][key] = value
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            module, qualname = arg.split(" ", 1) if name == "GLOBAL" else (lambda q, m: (m, q))(stack.pop(), stack.pop())
            if (module, qualname) not in ALLOWED:
                raise ImportRefused(f"{path}: cannot be read as weights only: it names {module}.{qualname}, which only "
                                        "unpickling (running code) could build; seq2edge never unpickles code")
            stack.append((module, qualname))
        elif name == "BINPERSID":
            pid = stack.pop()  # ("storage", storage type, key, location, numel)
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], tuple)):
                raise ImportRefused(f"{path}: a persistent id {str(pid)[:80]} that torch.save never writes")
            stack.append(storage(pid[2], pid[1][1], pid[4]))
        elif name in ("REDUCE", "NEWOBJ"):
            args, what = stack.pop(), stack.pop()
            # a state dict's entry is its key, then its tensor: the key is on the stack beneath the tensor's constructor
            tensor_name = stack[-1] if stack and isinstance(stack[-1], str) else f"number {len(memo)}"
            stack.append(_build(what, args, tensor_name, path))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if isinstance(target, argparse.Namespace) and isinstance(state, dict):
                vars(target).update(state)
            elif isinstance(target, (torch.Tensor, OrderedDict)):
                pass  # a tensor's extra state, or a state dict's _metadata (module versions): not weights
            else:
                raise ImportRefused(f"{path}: sets state on a {type(target).__name__}, which a checkpoint of weights never does")
        elif name == "ADDITEMS":
            items = _pop_mark(stack)
            stack[-1].update(items)
        elif name == "EMPTY_SET":
            stack.append(set())
        else:
            raise ImportRefused(f"{path}: uses the pickle operation {name}, which a checkpoint of weights does not need")
    raise ImportRefused(f"{path}: its data.pkl ends without STOP")


def _pop_mark(stack: list) -> list:
    at = max(i for i, item in enumerate(stack) if item is _Mark)  # by identity: arrays compare elementwise
    items = stack[at + 1 :]
    del stack[at:]
    return items


def _build(what, args: tuple, tensor_name: str, path: Path):
    """The allow-listed constructors, applied to data (the pickle names them; it never calls them)."""
    if not isinstance(args, tuple):
        raise ImportRefused(f"{path}: a constructor applied to {type(args).__name__}, not to arguments")
    if what == ("collections", "OrderedDict"):
        return OrderedDict(*args)
    if what == ("argparse", "Namespace"):
        return argparse.Namespace()
    if what in (("__builtin__", "set"), ("builtins", "set")):
        return set(*args)
    if what == ("torch._utils", "_rebuild_tensor_v2"):
        return _tensor(*_tensor_layout(args, f"{path}: tensor {tensor_name!r}"))
    if what == ("torch._utils", "_rebuild_parameter"):
        return args[0]
    raise ImportRefused(f"cannot build {what}")  # a storage class called as a function: not torch.save's output


def _tensor_layout(args: tuple, where: str) -> tuple[np.ndarray, int, tuple[int, ...], tuple[int, ...]]:
    """(storage, offset, size, stride) of _rebuild_tensor_v2's arguments, refused unless every element the view
    reaches lies inside the storage and no two elements share a place."""
    if len(args) < 4 or not isinstance(args[0], np.ndarray):
        raise ImportRefused(f"{where}: is not built from a storage, an offset, a size and a stride")
    data, offset, size, stride = args[:4]
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not whole(offset) or offset < 0:
        raise ImportRefused(f"{where}: storage offset {offset!r} is not a whole number >= 0")
    for label, axes in (("size", size), ("stride", stride)):
        if not isinstance(axes, tuple) or len(axes) > MAX_AXES or not all(whole(v) and v >= 0 for v in axes):
            raise ImportRefused(f"{where}: {label} {str(axes)[:80]} is not at most {MAX_AXES} whole numbers >= 0")
    if len(size) != len(stride):
        raise ImportRefused(f"{where}: size {size} and stride {stride} have different numbers of axes")
    numel = math.prod(size)
    if numel == 0:
        return data, offset, size, stride
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= data.size:
        raise ImportRefused(f"{where}: reaches element {last} of a storage of {data.size}; refused")
    reach = 0  # the span of the axes so far, smallest stride first: each next stride must step past it
    for n, s in sorted(((n, s) for n, s in zip(size, stride) if n > 1), key=lambda a: a[1]):
        if s <= reach:
            raise ImportRefused(f"{where}: size {size} and stride {stride} place two elements at one position; refused")
        reach += (n - 1) * s
    return data, offset, size, stride


def _tensor(data: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """A copy of the checked view (_tensor_layout) as a tensor."""
    if not size:
        return torch.from_numpy(data[offset : offset + 1].copy()).reshape(())
    if math.prod(size) == 0:
        return torch.from_numpy(np.zeros(size, dtype=data.dtype))
    view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * data.itemsize for s in stride])
    return torch.from_numpy(np.array(view))
