"""Find external-data references in a serialised ONNX model without the onnx package.

A bundle's graphs are self-contained. A graph that points its weights at other
files (TensorProto.data_location = EXTERNAL, or external_data entries) could
make onnxruntime read files outside the bundle, so the runtime refuses it
before onnxruntime opens the graph. This walks the protobuf wire format over
the messages that can hold tensors, skipping weight bytes by their length.
"""

from __future__ import annotations

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


class MalformedModel(ValueError):
    pass


def uses_external_data(data: bytes | memoryview) -> bool:
    """True when any tensor of the model stores its data outside the model bytes."""
    return _walk(memoryview(data), "model")


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


def _walk(buf: memoryview, kind: str) -> bool:
    children = _SCHEMA[kind]
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            if kind == "tensor" and field == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
                return True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise MalformedModel("field runs past the end")
            if kind == "tensor" and field == _TENSOR_EXTERNAL_DATA:
                return True
            if field in children and _walk(buf[pos : pos + length], children[field]):
                return True
            pos += length
        else:
            raise MalformedModel(f"unknown wire type {wire}")
    if pos != len(buf):
        raise MalformedModel("field runs past the end")
    return False
