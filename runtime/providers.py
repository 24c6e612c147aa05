"""Execution providers and session options, with no silent fallback.

`providers="auto"` takes CUDA when onnxruntime offers it, else the CPU. A
provider asked for by name (or in an onnxruntime providers list) must be both
available and active after the session is created, or ProviderError says what
is available instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import onnxruntime as ort

from .errors import ProviderError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}
OPTIMIZATION_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ProviderSpec = str | Sequence[str | tuple[str, dict[str, Any]]] | None


def available() -> list[str]:
    return list(ort.get_available_providers())


def resolve(spec: ProviderSpec) -> tuple[list[Any], bool]:
    """onnxruntime's providers list for `spec`, and whether it was explicit.

    "auto" (or None) -> CUDA then CPU when CUDA is offered, else CPU; a name such
    as "cuda" -> that provider, with the CPU behind it for the operators it lacks;
    a list -> as given. Unknown or unavailable names raise ProviderError."""
    offered = available()
    if spec is None or spec == "auto":
        return ([CUDA, CPU] if CUDA in offered else [CPU]), False
    if not isinstance(spec, (str, list, tuple)):
        raise ProviderError(f"providers must be \"auto\", a provider name or a list of them, not {spec!r}")
    entries = [spec] if isinstance(spec, str) else list(spec)
    if not entries:
        raise ProviderError("the providers list is empty")
    chosen: list[Any] = []
    for entry in entries:
        if not isinstance(entry, str) and not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ProviderError(f"a providers entry is a name or a (name, options) pair, not {entry!r}")
        name, options = (entry, None) if isinstance(entry, str) else (entry[0], entry[1])
        full = ALIASES.get(name.lower(), name)
        if full not in offered:
            raise ProviderError(f"execution provider {name!r} is not available here; onnxruntime offers: {', '.join(offered)}"
                                + (_cuda_hint() if full == CUDA else ""))
        chosen.append(full if options is None else (full, options))
    if isinstance(spec, str) and chosen[0] != CPU:
        chosen.append(CPU)
    return chosen, True


def check_active(session: ort.InferenceSession, requested: list[Any], explicit: bool, what: str) -> None:
    """Raise (explicit request) or warn ("auto") when a requested provider did not become active."""
    active = session.get_providers()
    for entry in requested:
        name = entry if isinstance(entry, str) else entry[0]
        if name == CPU or name in active:
            continue
        message = (f"{what}: {name} was requested but onnxruntime did not activate it (active: {', '.join(active)})"
                   + (_cuda_hint() if name == CUDA else ""))
        if explicit:
            raise ProviderError(message)
        warnings.warn(message + "; running on the CPU", RuntimeWarning, stacklevel=4)


# Subnormal floats (a pruned, barely trained or imported model's tiny weights) run several times slower on x86;
# flushed to zero, they cost nothing (docs/performance.md, "Subnormal weights"). Both hosts flush them; only the
# benchmark that measures the difference (bench/subnormals.py) turns it off.
FLUSH_SUBNORMALS = True


def session_options(threads: int | None, optimization: str = "all") -> ort.SessionOptions:
    """Options for both graphs: intra-op threads (None: onnxruntime's default), sequential execution."""
    if optimization not in OPTIMIZATION_LEVELS:
        raise ProviderError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, not {optimization!r}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ProviderError("threads must be at least 1")
        options.intra_op_num_threads = threads
    # fatal only: a graph that fails on an input is that input's error, said once by the runtime (runtime/model.py)
    options.log_severity_level = 4
    if FLUSH_SUBNORMALS:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    # int8 GRU/RNN weights the encoder's Loop rewrite does not cover are int8 initializers behind a
    # DequantizeLinear (export/quantize.py; the rewritten ones are widened by Cast and Mul, folded
    # anyway). onnxruntime keeps such a node to fuse it into a quantized kernel (there is none for GRU), so it
    # would widen the weights on every call; without the QDQ rewrites, constant folding widens them
    # once, at load. The dynamic-int8 kernels (DynamicQuantizeMatMul, DynamicQuantizeLSTM) are not
    # QDQ rewrites and stay.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


def _cuda_hint() -> str:
    return ("; CUDA needs the onnxruntime-gpu package (not beside onnxruntime), an NVIDIA driver and the CUDA/cuDNN "
            "libraries it was built for: run `seq2edge info` to diagnose")
