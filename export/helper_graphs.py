"""Build the runtime's helper graphs with onnx.helper and print them as the hex that runtime/helpers.py embeds.

The runtime cannot import onnx, so these small graphs are stored there as bytes;
tests/test_device_path.py rebuilds them with this module and checks the bytes match.
Run `python -m seq2edge.export.helper_graphs` after changing a definition here, and paste its output.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

OPSET, IR_VERSION = 13, 7


def _model(name: str, nodes, inputs, outputs) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="seq2edge")
    if all(v.type.tensor_type.HasField("shape") for v in [*graph.input, *graph.output]):
        onnx.checker.check_model(model, full_check=True)  # which needs every input's rank: rank-free gathers run in tests
    return model.SerializeToString()


def _tensor(name: str, elem: int, rank: int | None):
    """A value of `rank` named axes, or of any rank (None: a listed state's tensors differ in rank)."""
    return helper.make_tensor_value_info(name, elem, None if rank is None else [f"d{i}" for i in range(rank)])


def _gather(name: str, elem: int, rank: int | None) -> bytes:
    """Rows `index` of `data` (axis 0): reorders beams and drops finished rows on the device."""
    return _model(name, [helper.make_node("Gather", ["data", "index"], ["rows"], axis=0)],
                  [_tensor("data", elem, rank), helper.make_tensor_value_info("index", TensorProto.INT64, ["m"])],
                  [_tensor("rows", elem, rank)])


def build() -> dict[str, bytes]:
    f, i64, b = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
    log_probs = helper.make_tensor_value_info("log_probs", f, ["n", "vocab"])
    bias = helper.make_tensor_value_info("bias", f, ["vocab"])
    return {
        "TOPK": _model("topk", [helper.make_node("Add", ["log_probs", "bias"], ["biased"]),
                                helper.make_node("TopK", ["biased", "k"], ["values", "ids"], axis=1, largest=1, sorted=1)],
                       [log_probs, bias, helper.make_tensor_value_info("k", i64, [1])],
                       [helper.make_tensor_value_info("values", f, ["n", "k"]),
                        helper.make_tensor_value_info("ids", i64, ["n", "k"])]),
        "BIAS": _model("bias", [helper.make_node("Add", ["log_probs", "bias"], ["biased"])], [log_probs, bias],
                       [helper.make_tensor_value_info("biased", f, ["n", "vocab"])]),
        "GATHER_STATE": _gather("gather_state", f, 2),
        "GATHER_MEMORY": _gather("gather_memory", f, 3),
        "GATHER_MASK": _gather("gather_mask", b, 2),
        "GATHER_FLOAT_STATE": _gather("gather_float_state", f, None),  # a tensor of a listed state (bundle format 3)
        "GATHER_INT64_STATE": _gather("gather_int64_state", i64, None),
        "COPY_ATTENTION": _model("copy_attention", [helper.make_node("Identity", ["data"], ["copy"])],
                                 [_tensor("data", f, 2)], [_tensor("copy", f, 2)]),
    }


if __name__ == "__main__":
    for name, data in build().items():
        text = data.hex()
        print(f"{name} = bytes.fromhex(")
        for start in range(0, len(text), 96):
            print(f'    "{text[start:start + 96]}"')
        print(")")
