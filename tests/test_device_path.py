"""The device-resident loop (IOBinding, helper graphs) gives exactly the numpy loop's results.

On a GPU it keeps state on the device; here it runs on the CPU provider through
the very same code, which is what `make test` can check without a GPU.
"""

import numpy as np
import pytest

from seq2edge.export import helper_graphs
from seq2edge.runtime import Seq2Seq, helpers
from seq2edge.runtime.backend import DeviceBackend, HostBackend, Stepper
from seq2edge.runtime.options import SearchOptions
from seq2edge.runtime.util import pad_batch


@pytest.fixture(scope="module")
def bound(tiny_bundle):
    return Seq2Seq.load(tiny_bundle, providers="cpu", threads=1, io_binding=True)


def test_the_embedded_helper_graphs_are_what_onnx_builds():
    for name, data in helper_graphs.build().items():
        assert getattr(helpers, name) == data, f"runtime/helpers.py {name} is stale: run python -m seq2edge.export.helper_graphs"


def test_io_binding_is_off_on_the_cpu_by_default(tiny_model, bound):
    assert isinstance(tiny_model.backend, HostBackend)
    assert isinstance(bound.backend, DeviceBackend) and bound.backend.device == "cpu"


def test_device_loop_keeps_state_as_ortvalues(bound):
    import onnxruntime as ort

    src, lengths = pad_batch([bound.bundle.source.encode(w) for w in ("edge", "attention")], bound.config.pad_id)
    encoded = bound.backend.encode(src, lengths)
    assert all(isinstance(v, ort.OrtValue) for v in (encoded.memory, encoded.state, encoded.mask))
    out = Stepper(bound.backend, encoded)(np.array([1, 1]), encoded.state, np.arange(2))
    assert isinstance(out.state, ort.OrtValue) and out.state.device_name().lower() == "cpu"
    values, ids = out.top(3, bound._limits(SearchOptions(), 2).bias(0))
    assert values.shape == ids.shape == (2, 3) and (np.diff(values, axis=1) <= 0).all()


def test_greedy_through_io_binding_equals_the_numpy_loop(tiny_model, bound, dev_words):
    a = tiny_model.decode(dev_words[:120], batch_size=16, return_attention=True)
    b = bound.decode(dev_words[:120], batch_size=16, return_attention=True)
    for x, y in zip(a, b):
        assert x.tokens == y.tokens and x.score == y.score
        np.testing.assert_array_equal(x.attention, y.attention)


def test_beam_and_sampling_through_io_binding_equal_the_numpy_loop(tiny_model, bound, dev_words):
    words = dev_words[:40]
    a = tiny_model.decode(words, beam_size=4, nbest=3, batch_size=8)
    b = bound.decode(words, beam_size=4, nbest=3, batch_size=8)
    assert [[(h.tokens, h.score) for h in r.nbest] for r in a] == [[(h.tokens, h.score) for h in r.nbest] for r in b]
    a = tiny_model.decode(words, sample=True, seed=9, top_k=10, top_p=0.9)
    b = bound.decode(words, sample=True, seed=9, top_k=10, top_p=0.9)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert list(bound.stream("attention")) == tiny_model.decode(["attention"])[0].tokens
