"""Device-resident decoding: with IOBinding, memory, mask and decoder state stay where the
execution provider runs (GPU memory under CUDA) from the first step to the last.

Each step sends the previous ids to the device and brings back only what the
search asks for: the k best ids and their log-probs per row (a TopK graph run
on the device), the whole distribution when sampling, attention when asked.
Reordering beams and dropping finished rows are Gather graphs on the device.
The same code runs on the CPU provider, which is how it is tested without a GPU.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort

from . import helpers
from .engine import Engine

_HELPERS = ("TOPK", "BIAS", "GATHER_STATE", "GATHER_MEMORY", "GATHER_MASK", "COPY_ATTENTION")
# onnxruntime's device names for OrtValue and IOBinding, by execution provider.
DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda",
           "DmlExecutionProvider": "dml"}


def device_of(providers: list[str]) -> str:
    """Where outputs should live for these active providers: the first accelerator's device, else the CPU."""
    for name in providers:
        if name in DEVICES:
            return DEVICES[name]
    return "cpu"


class DeviceRunner:
    """Runs the bundle's graphs and the helper graphs with IOBinding on one device."""

    def __init__(self, engine: Engine, device: str | None = None):
        self.engine = engine
        self.device = device or device_of(engine.providers)
        self.helpers = {name: ort.InferenceSession(getattr(helpers, name), sess_options=engine.options,
                                                   providers=engine.requested) for name in _HELPERS}

    def to_device(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(self, session: ort.InferenceSession, feeds: dict[str, Any], outputs: dict[str, str]) -> list[ort.OrtValue]:
        """Run with inputs as numpy arrays (copied in) or OrtValues (used in place) and outputs
        allocated on the named devices ("cpu" brings them back to the host)."""
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name, device in outputs.items():
            binding.bind_output(name, device, 0)
        timer = self.engine.run_seconds
        start = time.perf_counter() if timer is not None else 0.0
        session.run_with_iobinding(binding)
        if timer is not None:
            self.engine.run_seconds += time.perf_counter() - start
        return binding.get_outputs()

    def encode(self, src_ids: np.ndarray, src_lengths: np.ndarray) -> tuple[ort.OrtValue, ort.OrtValue]:
        here = self.device
        memory, state = self.run(self.engine.sessions["encoder"], {"src_ids": src_ids, "src_lengths": src_lengths},
                                 {"memory": here, "state": here})
        return memory, state

    def step(self, prev_ids: np.ndarray, state: ort.OrtValue, memory: ort.OrtValue, mask: ort.OrtValue) -> DeviceStep:
        here = self.device
        log_probs, new_state, attention = self.run(
            self.engine.sessions["decoder"], {"prev_ids": prev_ids, "state": state, "memory": memory, "src_mask": mask},
            {"log_probs": here, "new_state": here, "attention": here})
        return DeviceStep(self, log_probs, new_state, attention)

    def gather(self, which: str, value: ort.OrtValue, index: np.ndarray) -> ort.OrtValue:
        """Rows `index` of a device value; which: "GATHER_STATE", "GATHER_MEMORY" or "GATHER_MASK"."""
        (rows,) = self.run(self.helpers[which], {"data": value, "index": np.asarray(index, dtype=np.int64)}, {"rows": self.device})
        return rows

    def take_state(self, state: ort.OrtValue, index: np.ndarray) -> ort.OrtValue:
        return self.gather("GATHER_STATE", state, index)


class DeviceStep:
    """One step's outputs, still on the device; the search pulls out what it needs."""

    def __init__(self, runner: DeviceRunner, log_probs: ort.OrtValue, state: ort.OrtValue, attention: ort.OrtValue):
        self._runner, self._log_probs, self.state, self._attention = runner, log_probs, state, attention

    def top(self, k: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, bias.shape[0])
        values, ids = self._runner.run(self._runner.helpers["TOPK"],
                                       {"log_probs": self._log_probs, "bias": bias, "k": np.array([k], dtype=np.int64)},
                                       {"values": "cpu", "ids": "cpu"})
        return values.numpy(), ids.numpy()

    def log_probs(self, bias: np.ndarray) -> np.ndarray:
        (biased,) = self._runner.run(self._runner.helpers["BIAS"], {"log_probs": self._log_probs, "bias": bias}, {"biased": "cpu"})
        return biased.numpy()

    def attention(self) -> np.ndarray:
        (copy,) = self._runner.run(self._runner.helpers["COPY_ATTENTION"], {"data": self._attention}, {"copy": "cpu"})
        return copy.numpy()
