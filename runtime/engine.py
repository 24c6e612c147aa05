"""onnxruntime sessions for one bundle's encoder and decoder, checked against the contract.

Running them is a backend's job (runtime.backend); the engine only creates and checks.

The engine verifies what it loads: graph bytes against bundle.json's sha256,
each graph's inputs and outputs against runtime.interface and the model
config, its metadata against the bundle id, and the providers that are really
active against those requested.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

from . import providers as P
from .bundle import Bundle
from .errors import BundleError
from .interface import GRAPHS, META_BUNDLE_ID, META_GRAPH, META_PRECISION, Port, graph_ports


class Engine:
    """The verified sessions of a bundle at one precision: encoder and decoder at once, the
    optional greedy graph when first asked for (`load`), so a load that never uses it pays nothing."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", providers: P.ProviderSpec = "auto",
                 threads: int | None = None, optimization: str = "all", graph_format: str = "auto",
                 greedy_graph: bool | None = None):
        self.bundle = bundle
        self.precision = precision
        self.format = bundle.graph_format(graph_format, precision)
        self.requested, self.explicit = P.resolve(providers)
        self.options = P.session_options(threads, optimization)
        if greedy_graph:
            bundle.graph_entry("greedy", precision)  # raises when there is none: says how to export one
        self.sessions: dict[str, ort.InferenceSession] = {kind: self.load(kind) for kind in GRAPHS}
        self.providers = self.sessions["decoder"].get_providers()

    def load(self, kind: str) -> ort.InferenceSession:
        """A verified session for the `kind` graph (encoder, decoder, greedy) of this precision."""
        path = self.bundle.verified_graph(kind, self.precision, self.format)
        session = _create_session(path, self.options, self.requested)
        P.check_active(session, self.requested, self.explicit, path.name)
        self._check_graph(session, kind, path.name)
        return session

    def _check_graph(self, session: ort.InferenceSession, kind: str, name: str) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        if self.format == "ort" and not meta:  # ORT format keeps no metadata_props; sha256 tied the file to bundle.json
            meta = {META_BUNDLE_ID: self.bundle.bundle_id, META_GRAPH: kind}
        owner = meta.get(META_BUNDLE_ID)
        if owner != self.bundle.bundle_id:
            raise BundleError(f"{name}: exported for bundle {owner or '(none)'}, but bundle.json is bundle "
                              f"{self.bundle.bundle_id}; the graph comes from another export, re-export the bundle")
        if meta.get(META_GRAPH) != kind:
            raise BundleError(f"{name}: holds the {meta.get(META_GRAPH)!r} graph, expected the {kind}")
        if meta.get(META_PRECISION, self.precision) != self.precision:
            raise BundleError(f"{name}: is a {meta.get(META_PRECISION)} graph, bundle.json lists it as {self.precision}; "
                              "re-export the bundle")
        inputs, outputs = graph_ports(kind)
        sizes = self.bundle.config.axis_sizes
        for role, ports, args in (("input", inputs, session.get_inputs()), ("output", outputs, session.get_outputs())):
            _check_ports(name, role, ports, args, sizes)


def _create_session(path, options: ort.SessionOptions, requested: list[Any]) -> ort.InferenceSession:
    # From the path: onnxruntime then needs no copy of the file in memory (about 20 MB less
    # peak memory for the shipped model than loading from bytes). The file was verified just before.
    try:
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
                if isinstance(dim, int) and dim != sizes[axis.name]:
                    raise BundleError(f"{name}: {role} {port.name} has {axis.name} {dim}, bundle.json's model says {sizes[axis.name]}")
            elif isinstance(dim, int):
                raise BundleError(f"{name}: {role} {port.name} has its {axis.name} axis fixed to {dim}; "
                                  "it must be dynamic, re-export the bundle")
