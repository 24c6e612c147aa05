"""onnxruntime sessions for one bundle's encoder and decoder, checked against the contract.

The engine verifies what it loads: graph bytes against bundle.json's sha256,
each graph's inputs and outputs against runtime.interface and the model
config, its metadata against the bundle id, and the providers that are really
active against those requested.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort

from . import providers as P
from .bundle import Bundle
from .errors import BundleError
from .interface import Port, graph_ports

# Dimensions that must be the model's own sizes; the rest must stay dynamic.
_FIXED_AXES = ("hidden", "state_size", "vocab")


class Engine:
    """The two sessions of a bundle at one precision, and their run calls."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", providers: P.ProviderSpec = "auto",
                 threads: int | None = None, optimization: str = "all"):
        self.bundle = bundle
        self.precision = precision
        requested, explicit = P.resolve(providers)
        options = P.session_options(threads, optimization)
        self.requested, self.options = requested, options
        self.sessions: dict[str, ort.InferenceSession] = {}
        for kind in ("encoder", "decoder"):
            path = bundle.verified_graph(kind, precision)
            session = _create_session(path, options, requested)
            P.check_active(session, requested, explicit, path.name)
            self._check_graph(session, kind, path.name)
            self.sessions[kind] = session
        self.providers = self.sessions["decoder"].get_providers()
        self.run_seconds = None  # set to 0.0 to add up time spent inside session.run (benchmarks)

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> memory [B, S, H] and the first decoder state [B, state_size]."""
        return self._run("encoder", {"src_ids": src_ids, "src_lengths": src_lengths})

    def step(self, prev_ids: np.ndarray, state: np.ndarray, memory: np.ndarray, src_mask: np.ndarray):
        """One decoder step -> log_probs [B, V], new state, attention [B, S]."""
        return self._run("decoder", {"prev_ids": prev_ids, "state": state, "memory": memory, "src_mask": src_mask})

    def _run(self, kind: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.run_seconds is None:
            return self.sessions[kind].run(None, feeds)
        start = time.perf_counter()
        out = self.sessions[kind].run(None, feeds)
        self.run_seconds += time.perf_counter() - start
        return out

    def _check_graph(self, session: ort.InferenceSession, kind: str, name: str) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        owner = meta.get("seq2edge.bundle_id")
        if owner != self.bundle.bundle_id:
            raise BundleError(f"{name}: exported for bundle {owner or '(none)'}, but bundle.json is bundle "
                              f"{self.bundle.bundle_id}; the graph comes from another export, re-export the bundle")
        if meta.get("seq2edge.graph") != kind:
            raise BundleError(f"{name}: holds the {meta.get('seq2edge.graph')!r} graph, expected the {kind}")
        inputs, outputs = graph_ports(kind)
        sizes = {"hidden": self.bundle.config.hidden, "state_size": self.bundle.config.state_size,
                 "vocab": self.bundle.config.tgt_vocab_size}
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
            raise BundleError(f"{name}: {role} {port.name} has {len(arg.shape)} axes, expected {len(port.axes)} ({', '.join(port.axes)})")
        for axis, dim in zip(port.axes, arg.shape):
            if axis in _FIXED_AXES:
                if isinstance(dim, int) and dim != sizes[axis]:
                    raise BundleError(f"{name}: {role} {port.name} has {axis} {dim}, bundle.json's model says {sizes[axis]}")
            elif isinstance(dim, int):
                raise BundleError(f"{name}: {role} {port.name} has its {axis} axis fixed to {dim}; "
                                  "it must be dynamic, re-export the bundle")
