"""Speed, accuracy, size and start-up of each variant, measured in one process on the same words."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from seq2edge.runtime.interface import GRAPHS, graph_file


@dataclass
class Speed:
    variant: str  # pytorch, fp32, int8, g2p-en
    batch_size: int
    words: int
    seconds: float  # median over repeats
    words_per_s: float
    ms_per_word: float
    run_share: float | None  # share of the decode spent inside session.run (runtime only)
    repeats: int


@dataclass
class Startup:
    variant: str
    seconds: float  # median: process start to first printed result
    peak_rss_mb: float  # median peak resident memory of the process
    runs: int


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _TimedSession:
    """An onnxruntime session whose run calls add their wall time to a SessionTimer."""

    def __init__(self, session, timer: SessionTimer):
        self._session, self._timer = session, timer

    def _timed(self, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self._timer.seconds += time.perf_counter() - start

    def run(self, *args, **kwargs):
        return self._timed(self._session.run, *args, **kwargs)

    def run_with_iobinding(self, *args, **kwargs):
        return self._timed(self._session.run_with_iobinding, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


class SessionTimer:
    """Adds up the time a model's backend spends inside onnxruntime (every session it runs),
    while the `with` block lasts; the backend's sessions are restored afterwards."""

    def __init__(self, model):
        self.sessions = model.backend.sessions
        self.seconds = 0.0

    def __enter__(self) -> SessionTimer:
        self._saved = dict(self.sessions)
        self.sessions.update({name: _TimedSession(s, self) for name, s in self._saved.items()})
        return self

    def __exit__(self, *exc) -> None:
        self.sessions.update(self._saved)


def speed_row(variant: str, batch_size: int, words: int, seconds: float, repeats: int, run_share: float | None = None) -> Speed:
    return Speed(variant, batch_size, words, round(seconds, 5), round(words / seconds, 1), round(1000 * seconds / words, 4),
                 None if run_share is None else round(run_share, 4), repeats)


def time_runtime(model, texts: Sequence[str], batch_size: int, repeats: int, variant: str) -> Speed:
    """Decode time and the share of it spent inside onnxruntime's session.run."""
    shares = []

    def run():
        with SessionTimer(model) as timer:
            start = time.perf_counter()
            model.decode(list(texts), batch_size=batch_size)
            shares.append(timer.seconds / (time.perf_counter() - start))

    seconds = median_time(run, repeats)
    return speed_row(variant, batch_size, len(texts), seconds, repeats, statistics.median(shares[1:] or shares))


def time_torch(model, source, target, texts: Sequence[str], batch_size: int, repeats: int) -> Speed:
    from seq2edge.train.infer import decode_entries

    seconds = median_time(lambda: decode_entries(model, list(texts), source, target, batch_size), repeats)
    return speed_row("pytorch", batch_size, len(texts), seconds, repeats)


def time_g2p_en(g2p, texts: Sequence[str], repeats: int) -> Speed:
    seconds = median_time(lambda: [g2p.predict(w) for w in texts], repeats)
    return speed_row("g2p-en", 1, len(texts), seconds, repeats)


def startup(variant: str, command: list[str], runs: int) -> Startup:
    """Median time from process start to its first line on stdout, and its peak RSS, measured by
    bench/launch.py in a small process of its own (see there why)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    launcher = [sys.executable, "-S", str(Path(__file__).with_name("launch.py"))]
    times, peaks = [], []
    for _ in range(runs):
        out = subprocess.run([*launcher, *command], capture_output=True, text=True, env=env, check=True)
        report = json.loads(out.stdout)
        if report["exit"] != 0 or not report["printed"]:
            raise RuntimeError(f"{' '.join(command)} failed (exit {report['exit']})")
        times.append(report["seconds"])
        peaks.append(report["peak_rss_kib"] / 1024)
    return Startup(variant, round(statistics.median(times), 4), round(statistics.median(peaks), 1), runs)


def startup_commands(bundle: Path, checkpoint: Path | None, have_g2p_en: bool, word: str = "attention") -> dict[str, list[str]]:
    python = sys.executable
    commands = {"runtime": [python, "-m", "seq2edge.runtime.cli", "decode", str(bundle), word, "--threads", "1", "--provider", "cpu"]}
    if checkpoint is not None:
        commands["pytorch"] = [python, "-m", "seq2edge.bench.peers", "torch", str(checkpoint), word]
    if have_g2p_en:
        commands["g2p-en"] = [python, "-m", "seq2edge.bench.peers", "g2p-en", word]
    return commands


def bundle_sizes(bundle) -> dict[str, int]:
    """Bytes of the encoder plus decoder graphs, per precision."""
    return {p: sum((bundle.path / graph_file(k, p)).stat().st_size for k in GRAPHS) for p in bundle.precisions}


def as_dicts(rows) -> list[dict]:
    return [asdict(r) for r in rows]
