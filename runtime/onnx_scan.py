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
_MODEL_METADATA_PROPS = 14


class MalformedModel(ValueError):
    pass


def uses_external_data(data: bytes | memoryview) -> bool:
    """True when any tensor of the model stores its data outside the model bytes."""
    with memoryview(data) as view:
        try:
            return _walk(view, "model")
        except MalformedModel as exc:  # raised anew below, so that no frame of the walk keeps a slice of the
            problem = str(exc)         # caller's buffer alive (an mmap then cannot close: BufferError)
    raise MalformedModel(problem)


def metadata(data: bytes | memoryview) -> dict[str, str]:
    """The model's metadata_props (ModelProto field 14: key 1, value 2), without the onnx package."""
    found: dict[str, str] = {}
    with memoryview(data) as view:
        try:
            for field, entry in _fields(view):
                if field == _MODEL_METADATA_PROPS:
                    pair = {f: bytes(v).decode("utf-8", errors="replace") for f, v in _fields(entry)}
                    found[pair.get(1, "")] = pair.get(2, "")
                    entry.release()
        except MalformedModel as exc:
            problem = str(exc)
        else:
            return found
    raise MalformedModel(problem)


def _fields(buf: memoryview):
    """(field number, bytes) of each length-delimited field of one message; other wire types skipped."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise MalformedModel("field runs past the end")
            yield field, buf[pos : pos + length]
            pos += length
        else:
            raise MalformedModel(f"unknown wire type {wire}")


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
