"""Find external-data references in a serialised ONNX model without the onnx package.

A bundle's graphs are self-contained. A graph that points its weights at other
files (TensorProto.data_location = EXTERNAL, or external_data entries) could
make onnxruntime read files outside the bundle, so the runtime refuses it
before onnxruntime opens the graph. This walks the protobuf wire format over
the messages that can hold tensors, skipping weight bytes by their length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from .interface import MAX_ONNX_DEPTH

T = TypeVar("T")

# message -> {field number: message type of that field}, for every path to a TensorProto
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MODEL_METADATA_PROPS = 14


class MalformedModel(ValueError):
    pass


def uses_external_data(data: bytes | memoryview) -> bool:
    """True when any tensor of the model stores its data outside the model bytes."""
    return _scan(data, lambda view: _walk(view, "model"))


def metadata(data: bytes | memoryview) -> dict[str, str]:
    """The model's metadata_props (ModelProto field 14: key 1, value 2), without the onnx package."""
    def read(view: memoryview) -> dict[str, str]:
        found = {}
        for field, wire, entry in _fields(view):
            if field == _MODEL_METADATA_PROPS and wire == 2:
                pair = {f: bytes(v).decode("utf-8", errors="replace") for f, w, v in _fields(entry) if w == 2}
                found[pair.get(1, "")] = pair.get(2, "")
        return found

    return _scan(data, read)


def _scan(data: bytes | memoryview, read: Callable[[memoryview], T]) -> T:
    """`read` over a view of `data`. A MalformedModel is raised anew outside the view, so that no frame of
    the walk keeps a slice of the caller's buffer alive (an mmap then cannot close: BufferError)."""
    with memoryview(data) as view:
        try:
            return read(view)
        except MalformedModel as exc:
            problem = str(exc)
    raise MalformedModel(problem)


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message: the number of a varint, the bytes of a
    length-delimited field; fixed-width fields are skipped (nothing here reads them)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise MalformedModel("field runs past the end")
            yield field, wire, buf[pos : pos + length]
            pos += length
        else:
            raise MalformedModel(f"unknown wire type {wire}")
    if pos != len(buf):
        raise MalformedModel("field runs past the end")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedModel("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _walk(buf: memoryview, kind: str, depth: int = 1) -> bool:
    if depth > MAX_ONNX_DEPTH:
        raise MalformedModel(f"messages nested more than {MAX_ONNX_DEPTH} deep")
    children = _SCHEMA[kind]
    for field, wire, value in _fields(buf):
        if kind == "tensor" and ((wire == 0 and field == _TENSOR_DATA_LOCATION and value == _EXTERNAL)
                                 or (wire == 2 and field == _TENSOR_EXTERNAL_DATA)):
            return True
        if wire == 2 and field in children and _walk(value, children[field], depth + 1):
            return True
    return False
