"""Backends: where the graphs run and where decoding state lives between steps.

One small protocol, two implementations:
- `HostBackend` runs the sessions with numpy arrays in and out (the CPU path);
- `DeviceBackend` keeps memory, mask and state on the execution provider's
  device with IOBinding (GPU memory under CUDA): each step sends the previous
  ids and brings back only what the search asks for (the k best ids per row
  from a TopK graph run on the device, the distribution when sampling,
  attention when asked); reordering beams and dropping rows are Gather graphs
  on the device. The same code runs on the CPU provider, which is how it is
  tested without a GPU.

The search sees neither: it calls a `Stepper` (one encoded batch) for steps and
for the rows of a state. Every session a backend runs is in its `sessions`
dict, so a benchmark can time them from outside (bench.measure.SessionTimer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from . import helpers
from .engine import Engine
from .fpenv import flushing
from .interface import state_port_names
from .search import HostStep, StepResult

# onnxruntime's device names for OrtValue and IOBinding, by execution provider.
DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda",
           "DmlExecutionProvider": "dml"}
PARTS = ("state", "memory", "mask")  # what a backend can take rows of
# What session.run raises when a graph cannot run on its inputs (a Gather past a table's end, a Reshape that does not
# fit): onnxruntime's own exception classes, which derive from Exception alone.
ONNXRUNTIME_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented", "EPFail")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name))


def device_of(providers: list[str]) -> str:
    """Where outputs should live for these active providers: the first accelerator's device, else the CPU."""
    for name in providers:
        if name in DEVICES:
            return DEVICES[name]
    return "cpu"


@dataclass
class Encoded:
    """One batch after the encoder, in the backend's own values (numpy arrays or OrtValues)."""

    memory: Any  # [B, S, hidden]
    state: Any  # the first decoder state: [B, state_size], or a tuple of bundle.json's state tensors (bundle format 3)
    mask: Any  # [B, S] bool, True at real positions
    rows: int  # B


class Backend(Protocol):
    sessions: dict[str, Any]  # every onnxruntime session this backend runs, by name

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> Encoded:
        """Run the encoder on a padded batch."""

    def step(self, prev_ids: np.ndarray, state: Any, memory: Any, mask: Any) -> StepResult:
        """One decoder step; its result hands out ids, log-probs and attention on request."""

    def take(self, value: Any, index: np.ndarray, part: str) -> Any:
        """Rows `index` of a state, memory or mask (`part`): reorders beams, drops finished rows."""


def _mask(src_lengths: np.ndarray, width: int) -> np.ndarray:
    return np.arange(width)[None, :] < src_lengths[:, None]


class StatePorts:
    """The names a decoder state travels under: one packed tensor ("state" in, "new_state" out), or, where bundle.json
    lists the state's tensors (bundle format 3), one port per tensor, the state then being a tuple of them."""

    def __init__(self, engine: Engine):
        listed = engine.bundle.meta.state
        self.listed = bool(listed)
        self.inputs, self.outputs = state_port_names(listed)
        self.dtypes = [t.dtype for t in listed] if listed else ["float"]

    def feeds(self, state: Any) -> dict[str, Any]:
        return dict(zip(self.inputs, state if self.listed else (state,)))

    def value(self, tensors: list[Any]) -> Any:
        """The state as the search holds it, from the graph's state outputs in order."""
        return tuple(tensors) if self.listed else tensors[0]


class HostBackend:
    """Numpy arrays in and out of session.run."""

    def __init__(self, engine: Engine):
        self.sessions: dict[str, Any] = engine.sessions  # created on first use (runtime.engine.Sessions)
        self.ports = StatePorts(engine)

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> Encoded:
        memory, *state = self.sessions["encoder"].run(None, {"src_ids": src_ids, "src_lengths": src_lengths})
        return Encoded(memory, self.ports.value(state), _mask(src_lengths, src_ids.shape[1]), len(src_lengths))

    def step(self, prev_ids: np.ndarray, state: Any, memory: np.ndarray, mask: np.ndarray) -> HostStep:
        log_probs, *state, attention = self.sessions["decoder"].run(
            None, {"prev_ids": prev_ids, **self.ports.feeds(state), "memory": memory, "src_mask": mask})
        return HostStep(log_probs, self.ports.value(state), attention)

    def take(self, value: Any, index: np.ndarray, part: str) -> Any:
        if isinstance(value, tuple):
            return tuple(tensor[index] for tensor in value)
        return value[index]


_HELPERS = ("TOPK", "BIAS", "GATHER_STATE", "GATHER_MEMORY", "GATHER_MASK", "COPY_ATTENTION")
_STATE_GATHERS = {"float": "GATHER_FLOAT_STATE", "int64": "GATHER_INT64_STATE"}  # a listed state's tensors, by type


class DeviceBackend:
    """IOBinding: memory, mask and state stay on `device` from the first step to the last."""

    def __init__(self, engine: Engine, device: str | None = None):
        self.device = device or device_of(engine.providers)
        self.sessions: dict[str, Any] = engine.sessions
        self.ports = StatePorts(engine)
        self._gathers = [_STATE_GATHERS[dtype] for dtype in self.ports.dtypes] if self.ports.listed else ["GATHER_STATE"]
        with flushing():
            for name in (*_HELPERS, *self._gathers):
                self.sessions[name] = ort.InferenceSession(getattr(helpers, name), sess_options=engine.options,
                                                           providers=engine.requested)

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(self, name: str, feeds: dict[str, Any], outputs: dict[str, str]) -> list[ort.OrtValue]:
        """Run session `name` with inputs as numpy arrays (copied in) or OrtValues (used in place)
        and outputs allocated on the named devices ("cpu" brings them back to the host)."""
        session = self.sessions[name]
        binding = session.io_binding()
        for key, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(key, value)
            else:
                binding.bind_ortvalue_input(key, value)
        for key, device in outputs.items():
            binding.bind_output(key, device, 0)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> Encoded:
        here = self.device
        memory, *state = self.run("encoder", {"src_ids": src_ids, "src_lengths": src_lengths},
                                  {"memory": here, **dict.fromkeys(self.ports.inputs, here)})
        return Encoded(memory, self.ports.value(state), self.to_device(_mask(src_lengths, src_ids.shape[1])), len(src_lengths))

    def step(self, prev_ids: np.ndarray, state: Any, memory: ort.OrtValue, mask: ort.OrtValue) -> DeviceStep:
        here = self.device
        log_probs, *new_state, attention = self.run(
            "decoder", {"prev_ids": prev_ids, **self.ports.feeds(state), "memory": memory, "src_mask": mask},
            {"log_probs": here, **dict.fromkeys(self.ports.outputs, here), "attention": here})
        return DeviceStep(self, log_probs, self.ports.value(new_state), attention)

    def take(self, value: Any, index: np.ndarray, part: str) -> Any:
        index = np.asarray(index, dtype=np.int64)
        if part == "state":
            rows = [self._gather(gather, tensor, index) for gather, tensor in zip(self._gathers, self.ports.feeds(value).values())]
            return self.ports.value(rows)
        return self._gather(f"GATHER_{part.upper()}", value, index)

    def _gather(self, name: str, value: ort.OrtValue, index: np.ndarray) -> ort.OrtValue:
        (rows,) = self.run(name, {"data": value, "index": index}, {"rows": self.device})
        return rows


class DeviceStep:
    """One step's outputs, still on the device; the search pulls out what it needs."""

    def __init__(self, backend: DeviceBackend, log_probs: ort.OrtValue, state: Any, attention: ort.OrtValue):
        self._backend, self._log_probs, self.state, self._attention = backend, log_probs, state, attention

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, bias.shape[0])
        values, ids = self._backend.run("TOPK", {"log_probs": self._log_probs, "bias": bias, "k": np.array([k], dtype=np.int64)},
                                        {"values": "cpu", "ids": "cpu"})
        return values.numpy(), ids.numpy()

    def best(self, bias: np.ndarray) -> tuple[float, int]:
        values, ids = self.top(1, bias)
        return float(values[0, 0]), int(ids[0, 0])

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        (biased,) = self._backend.run("BIAS", {"log_probs": self._log_probs, "bias": bias}, {"biased": "cpu"})
        return biased.numpy()

    def attention(self) -> np.ndarray:
        (copy,) = self._backend.run("COPY_ATTENTION", {"data": self._attention}, {"copy": "cpu"})
        return copy.numpy()


class Stepper:
    """The search's view of one encoded batch: steps for any subset of its rows, and rows of a state.

    `rows` (one entry per hypothesis row: the input it belongs to) selects the memory and mask
    each row attends over; they are gathered again only when a new `rows` object arrives."""

    def __init__(self, backend: Backend, encoded: Encoded):
        self.backend, self.encoded = backend, encoded
        self._rows: np.ndarray | None = None
        self._memory, self._mask = encoded.memory, encoded.mask

    def __call__(self, prev_ids: np.ndarray, state: Any, rows: np.ndarray) -> StepResult:
        if rows is not self._rows:
            self._rows = rows
            e = self.encoded
            if rows.size == e.rows and bool((rows == np.arange(rows.size)).all()):
                self._memory, self._mask = e.memory, e.mask
            else:
                self._memory = self.backend.take(e.memory, rows, "memory")
                self._mask = self.backend.take(e.mask, rows, "mask")
        return self.backend.step(prev_ids, state, self._memory, self._mask)

    def take(self, state: Any, index: np.ndarray) -> Any:
        return self.backend.take(state, index, "state")
