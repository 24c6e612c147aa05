"""Shared fixtures: tiny models trained in seconds on real data, exported once per session."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Property tests draw the same examples on every run of `make test` (a CI run must not pass or fail by
# chance); SEQ2EDGE_HYPOTHESIS=explore draws new ones, ten times as many, to look for bugs.
settings.register_profile("repeatable", max_examples=300, derandomize=True, database=None)
settings.register_profile("explore", max_examples=3000, database=None)
settings.load_profile(os.environ.get("SEQ2EDGE_HYPOTHESIS", "repeatable"))
REPO = Path(__file__).resolve().parents[1]
SEQ2EDGE = [sys.executable, "-m", "seq2edge.runtime.cli"]

# What some tests need beyond .venv, and what to do when it is missing. `@pytest.mark.requires("node")`:
# skipped with a loud reason, or failed where SEQ2EDGE_REQUIRE names it (.ci/run: node,chromium,ray), so
# that CI cannot pass with a surface untested.
REQUIRED = {name.strip() for name in os.environ.get("SEQ2EDGE_REQUIRE", "").split(",") if name.strip()}
JS_MODULES = REPO / "hosts" / "js" / "node_modules"


def _missing(what: str) -> str | None:
    """Why `what` cannot be used here, or None when it can."""
    if what == "node":
        if shutil.which("node") is None or not (JS_MODULES / "onnxruntime-node").exists():
            return "Node.js or hosts/js/node_modules is missing; run `make js` (needs Node.js 18+ and npm)"
    elif what == "chromium":
        if (shutil.which("chromium") or shutil.which("chromium-browser")) is None or not (JS_MODULES / "playwright-core").exists():
            return "the browser test needs Debian's chromium (.ci/run installs it) and `make js`"
    elif what == "ray":
        if importlib.util.find_spec("ray") is None:
            return "Ray is not installed (pip install 'seq2edge[ray]'; make test installs it)"
    else:
        raise ValueError(f"unknown requirement {what!r}")
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(*what): needs node, chromium or ray (SEQ2EDGE_REQUIRE makes them mandatory)")
    unknown = REQUIRED - {"node", "chromium", "ray", "aarch64"}
    if unknown:
        raise pytest.UsageError(f"SEQ2EDGE_REQUIRE names {sorted(unknown)}; known: node, chromium, ray, aarch64")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("requires"):
        for what in mark.args:
            why = _missing(what)
            if why is not None and what in REQUIRED:
                pytest.fail(f"{what} is missing and SEQ2EDGE_REQUIRE requires it: {why}", pytrace=False)
            if why is not None:
                pytest.skip(f"LOUD SKIP: {why}")


def train_tiny(out: Path, corpus: str = "cmudict", epochs: int = 3, limit: int = 600, dev_limit: int = 100,
               batch_size: int = 32, **arch) -> Path:
    """A small model trained for a few hundred steps at most (embed 16, hidden 32 unless given)."""
    from seq2edge.train.config import TrainConfig
    from seq2edge.train.loop import Trainer

    arch = {"embed": 16, "hidden": 32, "max_src_len": 32, "max_tgt_len": 24, **arch}
    tc = TrainConfig(corpus=corpus, epochs=epochs, train_limit=limit, dev_limit=dev_limit, batch_size=batch_size,
                     save_every_minutes=60)
    Trainer(tc, arch, out, log=lambda m: None).run()
    return out


def export_tiny(checkpoint: Path, out: Path, **kwargs) -> Path:
    from seq2edge.export.bundle import export_bundle

    kwargs.setdefault("parity_words", 200)
    kwargs.setdefault("log", lambda m: None)
    return export_bundle(checkpoint, out, **kwargs)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """LSTM, bidirectional, dot attention: the backbone, trained on 600 CMUdict words."""
    return train_tiny(tmp_path_factory.mktemp("ckpt") / "tiny", bidirectional=True, epochs=4, limit=800)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny", int8=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle):
    from seq2edge.runtime import Seq2Seq

    return Seq2Seq.load(tiny_bundle, providers="cpu", threads=1)


@pytest.fixture(scope="session")
def dev_words() -> list[str]:
    from seq2edge.train import corpus as C

    return [e.source for e in C.split(C.load_cmudict().entries, "dev")[:300]]


@pytest.fixture(scope="session")
def transformer_bundle(tmp_path_factory):
    """examples/transformer_model.py trained for a step count (repeatable), exported with int8, the greedy graph and
    ORT copies: (model, source vocab, target vocab, held-out words, bundle)."""
    import torch

    sys.path.insert(0, str(REPO / "examples"))
    import transformer_model

    torch.manual_seed(0)
    model, source_vocab, target_vocab, held_out = transformer_model.train(steps=200, size=64, feedforward=128, max_len=64)
    out = tmp_path_factory.mktemp("transformer") / "bundle"
    transformer_model.export(model, out, source_vocab, target_vocab, held_out[:150], int8=True, accept_int8=True,
                             greedy_graph=True, ort=True, log=lambda m: None)
    return model, source_vocab, target_vocab, held_out, out
