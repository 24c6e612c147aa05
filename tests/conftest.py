"""Shared fixtures: tiny models trained in seconds on real data, exported once per session."""

from __future__ import annotations

import os
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
    return export_bundle(checkpoint, out, log=lambda m: None, **kwargs)


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
