"""Find external-data references in a serialised ONNX model without the onnx package.

A bundle's graphs are self-contained. A graph that points its weights at other
files (TensorProto.data_location = EXTERNAL, or external_data entries) could
make onnxruntime read files outside the bundle, so the runtime refuses it
before onnxruntime opens the graph. This walks the protobuf wire format over
the messages that can hold tensors, skipping weight bytes by their length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PortInfo:
    """A graph input or output as the bytes declare it, in the shape of onnxruntime's NodeArg (name, type, shape)."""

    name: str
    type: str  # "tensor(float)", as onnxruntime writes it
    shape: list  # an int per fixed axis, a name (or None) per dynamic one


# TensorProto.DataType -> onnxruntime's type names, for the types a bundle's ports use (others are named by number)
_ELEMENT_TYPES = {1: "float", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "double"}
_GRAPH, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _TENSOR_NAME = 7, 5, 11, 12, 8


def ports(data: bytes | memoryview) -> tuple[list[PortInfo], list[PortInfo]]:
    """(inputs, outputs) of the model's main graph, read from its bytes: what a session would report, without one."""
    def read(view: memoryview) -> tuple[list[PortInfo], list[PortInfo]]:
        found: tuple[list[PortInfo], list[PortInfo]] = ([], [])
        initializers: set[str] = set()
        for field, wire, graph in _fields(view):
            if field == _GRAPH and wire == 2:
                for f, w, value in _fields(graph):
                    if f in (_GRAPH_INPUT, _GRAPH_OUTPUT) and w == 2:
                        found[f - _GRAPH_INPUT].append(_value_info(value))
                    elif f == _GRAPH_INITIALIZER and w == 2:
                        initializers.update(bytes(v).decode("utf-8", errors="replace") for g, x, v in _fields(value)
                                            if g == _TENSOR_NAME and x == 2)
        # an input with an initializer is a weight with a default, which onnxruntime does not list among the inputs
        return [p for p in found[0] if p.name not in initializers], found[1]

    return _scan(data, read)


def _value_info(view: memoryview) -> PortInfo:
    """ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2 -> dim 1 -> value 1 | param 2."""
    name, element, shape = "", 0, []
    for field, wire, value in _fields(view):
        if field == 1 and wire == 2:
            name = bytes(value).decode("utf-8", errors="replace")
        elif field == 2 and wire == 2:
            for f, w, tensor in _fields(value):
                if f != 1 or w != 2:
                    continue
                for g, x, part in _fields(tensor):
                    if g == 1 and x == 0:
                        element = part
                    elif g == 2 and x == 2:
                        shape = [_dimension(dim) for h, y, dim in _fields(part) if h == 1 and y == 2]
    return PortInfo(name, f"tensor({_ELEMENT_TYPES.get(element, str(element))})", shape)


def _dimension(view: memoryview) -> int | str | None:
    for field, wire, value in _fields(view):
        if field == 1 and wire == 0:
            return value
        if field == 2 and wire == 2:
            return bytes(value).decode("utf-8", errors="replace")
    return None


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
