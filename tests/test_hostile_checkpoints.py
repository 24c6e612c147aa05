"""The checkpoint reader (export/importers/torch_zip.py) against files made to break it: the committed toolkit
fixtures with their pickle's sizes, strides, offsets and opcodes, their zip entries and names changed. The reader
either refuses the file (ImportRefused) or returns tensors made only of the storages' own elements: never process
memory, never a crash."""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seq2edge.export.importers import ImportRefused
from seq2edge.export.importers.torch_zip import STORAGES, read_checkpoint

FIXTURES = sorted([*(REPO / "tests" / "fixtures").glob("*/*/best.ckpt"), *(REPO / "tests" / "fixtures").glob("*/*/model.pt")])
INTS = ("BININT", "BININT1", "BININT2", "LONG1")


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write(entries: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _pickle_name(entries: dict[str, bytes]) -> str:
    return next(n for n in entries if n.endswith("data.pkl"))


def _with_int(data: bytes, index: int, value: int) -> bytes:
    """The pickle with its `index`-th integer opcode replaced by one pushing `value`."""
    try:
        ops = [(op, pos) for op, _, pos in pickletools.genops(data) if op.name in INTS]
    except ValueError:  # a pickle an earlier change broke: change what comes first
        ops = []
    if not ops:
        return data
    op, pos = ops[index % len(ops)]
    end = next(p for o, _, p in pickletools.genops(data) if p > pos)
    encoded = pickle.encode_long(value)
    return data[:pos] + b"\x8a" + bytes([len(encoded)]) + encoded + data[end:]


def _allowed_bits(entries: dict[str, bytes]) -> dict[np.dtype, set]:
    """Every element value the archive's storages hold, as bit patterns, by element size."""
    bits: dict[int, set] = {}
    for name, data in entries.items():
        if "/data/" in name:
            for size in (1, 2, 4, 8):
                usable = len(data) - len(data) % size
                bits.setdefault(size, set()).update(np.frombuffer(data[:usable], dtype=f"u{size}").tolist())
    return bits


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "__dict__"):
        yield from _tensors(vars(value))


def _read_or_refuse(path: Path, entries: dict[str, bytes]) -> None:
    """The property: a refusal, or tensors whose every element is one of the storages' elements."""
    try:
        value = read_checkpoint(path)
    except ImportRefused:
        return
    bits = _allowed_bits(entries)
    for tensor in _tensors(value):
        array = tensor.numpy()
        if array.size:
            found = set(np.ascontiguousarray(array).view(f"u{array.itemsize}").ravel().tolist())
            assert found <= bits.get(array.itemsize, set()), "a tensor holds values no storage of the file holds"


mutation = st.one_of(
    st.tuples(st.just("int"), st.integers(0, 10_000), st.one_of(st.integers(-2**63, 2**63), st.sampled_from(
        [-1, 0, 1, 7, 4096, 50_000_000, 2**31, 2**62]))),
    st.tuples(st.just("flip"), st.integers(0, 10**9), st.integers(1, 255)),
    st.tuples(st.just("cut pickle"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("cut storage"), st.integers(0, 10**9), st.integers(0, 10**9)),
    st.tuples(st.just("drop storage"), st.integers(0, 10**9), st.just(0)),
    st.tuples(st.just("rename storage"), st.integers(0, 10**9), st.sampled_from(["99", "../0", "x", ""])),
    st.tuples(st.just("flip archive"), st.integers(0, 10**9), st.integers(1, 255)),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FIXTURES), st.lists(mutation, min_size=1, max_size=3))
def test_a_mutated_checkpoint_is_refused_or_read_within_its_storages(tmp_path, fixture, mutations):
    entries = _entries(fixture)
    pkl = _pickle_name(entries)
    storages = sorted(n for n in entries if "/data/" in n)
    archive_flips = []
    for kind, where, value in mutations:
        if kind in ("int", "flip", "cut pickle") and not entries[pkl]:
            continue  # nothing left to change
        if kind == "int":
            entries[pkl] = _with_int(entries[pkl], where, value)
        elif kind == "flip":
            data = bytearray(entries[pkl])
            data[where % len(data)] ^= value
            entries[pkl] = bytes(data)
        elif kind == "cut pickle":
            entries[pkl] = entries[pkl][: where % len(entries[pkl])]
        elif kind == "cut storage":
            name = storages[where % len(storages)]
            if name in entries:
                entries[name] = entries[name][: value % (len(entries[name]) + 1)]
        elif kind == "drop storage":
            entries.pop(storages[where % len(storages)], None)
        elif kind == "rename storage":
            name = storages[where % len(storages)]
            if name in entries:
                entries[name.rsplit("/", 1)[0] + "/" + value] = entries.pop(name)
        else:
            archive_flips.append((where, value))
    path = _write(entries, tmp_path / "mutated.pt")
    if archive_flips:  # the zip's own bytes: headers, names, sizes, CRCs
        raw = bytearray(path.read_bytes())
        for where, value in archive_flips:
            raw[where % len(raw)] ^= value
        path.write_bytes(bytes(raw))
    _read_or_refuse(path, entries)


def _first_tensor_with(fixture: Path, size: tuple[int, ...] | None = None, offset: int | None = None,
                       stride: tuple[int, ...] | None = None) -> dict[str, bytes]:
    """The fixture with its first tensor's size, offset or stride replaced (re-pickled by the reader's own rules)."""
    entries = _entries(fixture)
    pkl = _pickle_name(entries)
    ops = list(pickletools.genops(entries[pkl]))
    # the first tensor: BINPERSID, then the offset, then the size tuple's integers, then the stride's
    start = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    ints = [i for i in range(start, start + 12) if ops[i][0].name in INTS]
    offset_at, dims = ints[0], (len(ints) - 1) // 2
    data = entries[pkl]
    replacements = {}
    if offset is not None:
        replacements[0] = offset
    for k, v in enumerate(size or ()):
        replacements[1 + k] = v
    for k, v in enumerate(stride or ()):
        replacements[1 + dims + k] = v
    for k in sorted(replacements, reverse=True):  # back to front: earlier positions stay valid
        index = [j for j, (op, _, _) in enumerate(ops) if op.name in INTS].index(ints[k])
        data = _with_int(data, index, replacements[k])
    assert offset_at == ints[0]
    entries[pkl] = data
    return entries


@pytest.mark.parametrize("change, words", [
    ({"size": (50_000_000, 32)}, "reaches element"),  # SIGSEGV before the bounds
    ({"size": (4096, 32)}, "reaches element"),  # process memory before the bounds
    ({"offset": 10**12}, "reaches element"),
    ({"offset": -1}, "storage offset -1"),
    ({"size": (-2, 32)}, "is not at most 32 whole numbers >= 0"),
    ({"stride": (0, 1)}, "place two elements at one position"),
    ({"stride": (1, 1)}, "place two elements at one position"),
])
def test_a_tensor_claiming_more_than_its_storage_is_refused_by_name(tmp_path, change, words):
    fixture = next(f for f in FIXTURES if f.name == "model.pt")
    path = _write(_first_tensor_with(fixture, **change), tmp_path / "crafted.pt")
    with pytest.raises(ImportRefused, match=f"tensor 'encoder.embeddings.make_embedding.emb_luts.0.weight'.*{words}"):
        read_checkpoint(path)


def test_a_storage_shorter_than_its_record_is_refused(tmp_path):
    fixture = next(f for f in FIXTURES if f.name == "model.pt")
    entries = _entries(fixture)
    name = sorted(n for n in entries if "/data/" in n)[0]
    entries[name] = entries[name][:8]
    with pytest.raises(ImportRefused, match="holds 2 elements, its record says"):
        read_checkpoint(_write(entries, tmp_path / "short.pt"))


def test_the_fixtures_read_whole_with_the_bounds():
    for fixture in FIXTURES:
        tensors = list(_tensors(read_checkpoint(fixture)))
        assert tensors and all(t.dtype in {torch.from_numpy(np.zeros(1, d)).dtype for d in STORAGES.values()} for t in tensors)
