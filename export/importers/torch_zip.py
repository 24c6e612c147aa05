"""Read a PyTorch checkpoint (torch.save's zip format) without unpickling it.

The archive's data.pkl is a pickle, but nothing here runs it: its opcodes are walked with
pickletools and interpreted by a small machine that builds only plain containers (dict, list, tuple,
set, str, numbers), tensors (from the archive's raw storages), OrderedDicts and argparse Namespaces
(OpenNMT-py's opt). Any other class or function the pickle names refuses the file, so a checkpoint
that would run code when loaded is read as data or not at all.
"""

from __future__ import annotations

import argparse
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


def read_checkpoint(path: Path) -> object:
    """The object torch.save wrote to `path`, built from data alone."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImportRefused(f"{path}: not a PyTorch zip checkpoint ({exc}); save it with torch 1.6 or newer") from None
    with archive:
        names = archive.namelist()
        pickle_name = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pickle_name is None:
            raise ImportRefused(f"{path}: holds no data.pkl; not a PyTorch checkpoint")
        prefix = pickle_name[: -len("data.pkl")]
        storage = lambda key, kind: np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=STORAGES[kind])  # noqa: E731
        try:
            return _interpret(archive.read(pickle_name), storage, path)
        except ImportRefused:
            raise
        except Exception as exc:  # a malformed pickle or archive
            raise ImportRefused(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None


def _interpret(data: bytes, storage, path: Path) -> object:
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
            stack.append(storage(pid[2], pid[1][1]))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            stack.append(_build(stack.pop(), args))
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


def _build(what, args: tuple):
    """The allow-listed constructors, applied to data (the pickle names them; it never calls them)."""
    if what == ("collections", "OrderedDict"):
        return OrderedDict(*args)
    if what == ("argparse", "Namespace"):
        return argparse.Namespace()
    if what in (("__builtin__", "set"), ("builtins", "set")):
        return set(*args)
    if what == ("torch._utils", "_rebuild_tensor_v2"):
        data, offset, size, stride = args[:4]
        if not size:
            return torch.from_numpy(data[offset : offset + 1].copy()).reshape(())
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=[s * data.itemsize for s in stride])
        return torch.from_numpy(np.array(view))
    if what == ("torch._utils", "_rebuild_parameter"):
        return args[0]
    raise ImportRefused(f"cannot build {what}")  # a storage class called as a function: not torch.save's output
