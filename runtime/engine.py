"""onnxruntime sessions for one bundle's encoder and decoder, checked against the contract.

Running them is a backend's job (runtime.backend); the engine only creates and checks.

The engine verifies what it loads: graph bytes against bundle.json's sha256,
each graph's inputs and outputs against runtime.interface and the model
config, its metadata against the bundle id, and the providers that are really
active against those requested.
"""

from __future__ import annotations

import mmap
from typing import Any

import onnxruntime as ort

from . import providers as P
from .bundle import Bundle
from .errors import BundleError
from .fpenv import flushing
from .interface import ALL_GRAPHS, GRAPHS, Port, graph_ports
from .onnx_scan import ports

# Operators whose results depend on onnxruntime's intra-op thread count: DynamicQuantizeLSTM (the int8
# LSTM layer) gave 12 of 3,000 CMUdict test words other tokens with 2 threads than with 1 (the shipped
# model's int8 encoder). A graph holding one runs on one thread, so that int8 outputs are the same
# whatever --threads and --workers say (docs/export.md, "Batch independence").
THREAD_DEPENDENT_OPS = (b"DynamicQuantizeLSTM",)


class Engine:
    """The verified sessions of a bundle at one precision. Every graph it may run is checked when it loads (bytes,
    owner, ports against the contract); a session is created when first used (`sessions[kind]`), so that a decode
    that runs only the greedy graph never holds the encoder's and decoder's weights too. Where the ports cannot be
    read from the bytes (ORT format) or the providers must be seen to be active (an accelerator), the encoder and
    decoder sessions are created at once."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", providers: P.ProviderSpec = "auto",
                 threads: int | None = None, optimization: str = "all", graph_format: str = "auto",
                 greedy_graph: bool | None = None):
        self.bundle = bundle
        self.precision = precision
        self.format = bundle.graph_format(graph_format, precision)
        self.requested, self.explicit = P.resolve(providers)
        self.options = P.session_options(threads, optimization)
        self.one_thread = P.session_options(1, optimization)
        if greedy_graph:
            bundle.graph_entry("greedy", precision)  # raises when there is none: says how to export one
        kinds = [*GRAPHS, *(["greedy"] if greedy_graph is not False and bundle.has_graph("greedy", precision) else [])]
        self.sessions = Sessions(self)
        lazy = self.format == "onnx" and all(_provider_name(p) == "CPUExecutionProvider" for p in self.requested)
        for kind in kinds:  # a broken graph fails the load, not the first input that reaches it
            path = bundle.verified_graph(kind, precision, self.format)
            if lazy:
                with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    inputs, outputs = ports(data)
                self._check_graph(inputs, outputs, kind, path.name)
        if not lazy:
            for kind in GRAPHS:
                self.sessions[kind]
        self.providers = self.sessions["decoder"].get_providers() if "decoder" in self.sessions else ["CPUExecutionProvider"]

    def load(self, kind: str) -> ort.InferenceSession:
        """A verified session for the `kind` graph (encoder, decoder, greedy) of this precision."""
        path = self.bundle.verified_graph(kind, self.precision, self.format)
        options = self.one_thread if _thread_dependent(path) else self.options
        session = _create_session(path, options, self.requested)
        P.check_active(session, self.requested, self.explicit, path.name)
        self._check_graph(session.get_inputs(), session.get_outputs(), kind, path.name)
        return session

    def _check_graph(self, inputs, outputs, kind: str, name: str) -> None:
        """Ports against the contract (the graph's owner, kind and precision: Bundle.verified_graph)."""
        expected_inputs, expected_outputs = graph_ports(kind, self.bundle.meta.state)
        sizes = self.bundle.config.axis_sizes
        for role, expected, args in (("input", expected_inputs, inputs), ("output", expected_outputs, outputs)):
            _check_ports(name, role, expected, args, sizes)


class Sessions(dict):
    """An engine's sessions by graph kind, each created on first use and then shared by whoever holds the dict
    (`"greedy" in sessions` says whether it was used). A backend adds its helper graphs' sessions beside them."""

    def __init__(self, engine: Engine):
        super().__init__()
        self.engine = engine

    def __missing__(self, kind: str) -> ort.InferenceSession:
        if kind not in ALL_GRAPHS:
            raise KeyError(kind)
        session = self[kind] = self.engine.load(kind)
        return session


def _provider_name(provider: Any) -> str:
    return provider[0] if isinstance(provider, tuple) else str(provider)


def _thread_dependent(path) -> bool:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return any(data.find(op) >= 0 for op in THREAD_DEPENDENT_OPS)


def _create_session(path, options: ort.SessionOptions, requested: list[Any]) -> ort.InferenceSession:
    # From the path: onnxruntime then needs no copy of the file in memory (about 20 MB less
    # peak memory for the shipped model than loading from bytes). The file was verified just before.
    try:
        with flushing():  # onnxruntime flushes subnormals on the thread of a process's first session, for good
            return ort.InferenceSession(str(path), sess_options=options, providers=requested)
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{path}: onnxruntime cannot load this graph: {first}") from None


def _check_ports(name: str, role: str, ports: tuple[Port, ...], args, sizes: dict[str, int]) -> None:
    found = {a.name: a for a in args}
    expected = {p.name for p in ports}
    if set(found) != expected:
        raise BundleError(f"{name}: {role}s are {sorted(found)}, the bundle format expects {sorted(expected)}; re-export the bundle")
    for port in ports:
        arg = found[port.name]
        dtype = arg.type.removeprefix("tensor(").removesuffix(")")
        if dtype != port.dtype:
            raise BundleError(f"{name}: {role} {port.name} is {dtype}, expected {port.dtype}")
        if len(arg.shape) != len(port.axes):
            axes = ", ".join(a.name for a in port.axes)
            raise BundleError(f"{name}: {role} {port.name} has {len(arg.shape)} axes, expected {len(port.axes)} ({axes})")
        for axis, dim in zip(port.axes, arg.shape):
            if not axis.dynamic:
                size = axis.fixed(sizes)
                if isinstance(dim, int) and dim != size:
                    raise BundleError(f"{name}: {role} {port.name} has {axis.name} {dim}, bundle.json's model says {size}")
            elif isinstance(dim, int):
                raise BundleError(f"{name}: {role} {port.name} has its {axis.name} axis fixed to {dim}; "
                                  "it must be dynamic, re-export the bundle")
