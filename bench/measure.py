"""Speed, accuracy, size and start-up of each variant, measured in one process on the same words."""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seq2edge.runtime.interface import GRAPHS, OPTIONAL_GRAPHS, graph_file

PEER = "peer"  # the model name of the rows of g2p-en


@dataclass
class Speed:
    model: str  # the bundle's name, or PEER
    variant: str  # pytorch, fp32, int8, fp32-graph, int8-graph, g2p-en
    batch_size: int
    words: int
    seconds: float  # median over repeats
    words_per_s: float
    ms_per_word: float
    run_share: float | None  # share of the decode spent inside session.run (runtime only)
    repeats: int


@dataclass
class Paired:
    """A bundle's speed against g2p-en's, the two timed in alternation on the same chunks of words,
    so that a change in the machine's speed during the run moves both sides of each ratio."""

    model: str
    variant: str
    rounds: int
    chunk: int  # words per chunk: g2p-en, then the model at batch 1, then at batch 64, chunk after chunk
    batch_1: list[float]  # per round: the model's words/s at batch 1 over g2p-en's
    batch_64: list[float]
    vs_g2p_en_batch_1: float  # medians over the rounds
    vs_g2p_en_batch_64: float
    # The native host (hosts/c, through its C API with ctypes) on the same chunks, in the same alternation, where built.
    native_batch_1: list[float] = field(default_factory=list)
    native_batch_64: list[float] = field(default_factory=list)
    native_vs_g2p_en_batch_1: float | None = None
    native_vs_g2p_en_batch_64: float | None = None


@dataclass
class PairedTorch:
    """The first bundle's speed against its own PyTorch checkpoint at batch 64, PyTorch and each
    precision timed in alternation on the same chunks of words, as Paired does with g2p-en:
    PyTorch's batch-64 speed nearly doubled from one run to another (796 and 1,511 words/s), far
    more than the targets' margins."""

    model: str
    rounds: int
    chunk: int
    batch: int
    fp32: list[float]  # per round: fp32 words/s over PyTorch's
    int8: list[float]  # empty when the bundle has no int8 graphs
    fp32_vs_pytorch: float  # medians over the rounds
    int8_vs_pytorch: float | None


@dataclass
class Accuracy:
    """CMUdict: WER and PER as given and without stress digits. Any other corpus: wer is the share of
    inputs matching no reference (100 - exact match) and per the token error rate; no stressless pair."""

    model: str
    variant: str
    words: int
    wer: float  # percent, stress digits as given
    per: float
    wer_stressless: float | None
    per_stressless: float | None


@dataclass
class Startup:
    model: str
    variant: str  # fp32, int8 (the runtime's decode command in that precision), pytorch, g2p-en
    seconds: float  # median: process start to first printed result
    peak_rss_mb: float  # median peak resident memory of the process
    runs: int


def settle_heap() -> None:
    """Collect the benchmark's garbage and freeze what is left (gc.freeze) before a timing.

    The benchmark's process holds torch, CMUdict and every result scored so far, and a full
    collection of that heap (0.1-0.2 s) landing inside one timing made one round in five of the
    paired batch-64 measurement 40% slower. Frozen objects are not scanned again; the young
    collections that the timed code's own allocations cause still count."""
    gc.collect()
    gc.freeze()


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn over `repeats` runs, after one warm-up run."""
    fn()
    settle_heap()
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


def model_names(bundles: Sequence[Path]) -> list[str]:
    """Each bundle's directory name; the whole path where two names would be the same."""
    names = [Path(b).name for b in bundles]
    return [n if names.count(n) == 1 and n != PEER else str(b) for n, b in zip(names, bundles)]


def load_variants(bundle: Path, precisions: Sequence[str], provider: str, threads: int, log) -> dict:
    """{precision: Seq2Seq} for each precision the bundle has (fp32 must load), plus
    {precision-graph: Seq2Seq} decoding every batch through the greedy graph where there is one.
    The plain precisions keep the runtime's default: the greedy graph for one-input calls."""
    from seq2edge.runtime.model import Seq2Seq

    def load(precision, **kw):
        return Seq2Seq.load(bundle, providers=provider, precision=precision, threads=threads, unknown="unk",
                            too_long="truncate", **kw)

    variants = {}
    for precision in precisions:
        try:
            variants[precision] = load(precision)
        except Exception as exc:
            if precision == "fp32":
                raise
            log(f"{bundle} {precision}: skipped ({exc})")
    for precision in list(variants):
        if variants[precision].bundle.has_graph("greedy", precision):
            variants[f"{precision}-graph"] = load(precision, greedy_graph=True)
    return variants


def accuracy_row(model: str, variant: str, hyps: Sequence[Sequence[str]], entries, split, cmudict: bool = True) -> Accuracy:
    from seq2edge.train.metrics import score, score_both

    refs = [[split(r) for r in e.references] for e in entries]
    if not cmudict:
        s = score(hyps, refs)
        return Accuracy(model, variant, len(hyps), round(s.wer, 3), round(s.per, 3), None, None)
    scores = score_both(hyps, refs)
    stress, stressless = scores["stress"], scores["stressless"]
    return Accuracy(model, variant, len(hyps), round(stress.wer, 3), round(stress.per, 3), round(stressless.wer, 3),
                    round(stressless.per, 3))


def runtime_accuracy(name: str, variant: str, model, entries, cmudict: bool = True) -> Accuracy:
    hyps = [r.tokens for r in model.decode([e.source for e in entries])]
    return accuracy_row(name, variant, hyps, entries, model.bundle.target.split, cmudict)


def torch_accuracy(name: str, model, source, target, entries, cmudict: bool = True) -> Accuracy:
    from seq2edge.train.infer import decode_entries

    return accuracy_row(name, "pytorch", decode_entries(model, [e.source for e in entries], source, target), entries,
                        target.split, cmudict)


def g2p_en_accuracy(g2p, entries) -> Accuracy:
    return accuracy_row(PEER, "g2p-en", [g2p.predict(e.source) for e in entries], entries, str.split)


def speed_row(model: str, variant: str, batch_size: int, words: int, seconds: float, repeats: int, run_share: float | None = None) -> Speed:
    return Speed(model, variant, batch_size, words, round(seconds, 5), round(words / seconds, 1), round(1000 * seconds / words, 4),
                 None if run_share is None else round(run_share, 4), repeats)


def time_runtime(name: str, variant: str, model, texts: Sequence[str], batch_size: int, repeats: int) -> Speed:
    """Decode time and the share of it spent inside onnxruntime's session.run."""
    shares = []

    def run():
        with SessionTimer(model) as timer:
            start = time.perf_counter()
            model.decode(list(texts), batch_size=batch_size)
            shares.append(timer.seconds / (time.perf_counter() - start))

    seconds = median_time(run, repeats)
    return speed_row(name, variant, batch_size, len(texts), seconds, repeats, statistics.median(shares[1:] or shares))


def time_native(name: str, variant: str, native, texts: Sequence[str], batch_size: int, repeats: int) -> Speed:
    """The native host's words/s (native_model(); one ctypes call per decode, as an app's one C call)."""
    seconds = median_time(lambda: native.decode(list(texts), batch_size=batch_size), repeats)
    return speed_row(name, variant, batch_size, len(texts), seconds, repeats)


def time_torch(name: str, model, source, target, texts: Sequence[str], batch_size: int, repeats: int) -> Speed:
    from seq2edge.train.infer import decode_entries

    seconds = median_time(lambda: decode_entries(model, list(texts), source, target, batch_size), repeats)
    return speed_row(name, "pytorch", batch_size, len(texts), seconds, repeats)


def time_g2p_en(g2p, texts: Sequence[str], repeats: int) -> Speed:
    seconds = median_time(lambda: [g2p.predict(w) for w in texts], repeats)
    return speed_row(PEER, "g2p-en", 1, len(texts), seconds, repeats)


def alternate(calls: dict[str, Callable[[list[str]], object]], texts: Sequence[str], rounds: int,
              chunk: int) -> dict[str, list[float]]:
    """Seconds per round of each call, the calls timed in turn on every chunk of `texts` (after a
    warm-up on the first chunk), so that none of them gets a faster stretch of the run."""
    texts = list(texts)
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    for call in calls.values():
        call(chunks[0][:64])
    settle_heap()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        spent = dict.fromkeys(calls, 0.0)
        for part in chunks:
            for name, call in calls.items():
                start = time.perf_counter()
                call(part)
                spent[name] += time.perf_counter() - start
        for name in calls:
            seconds[name].append(spent[name])
    return seconds


def _speedups(seconds: dict[str, list[float]], fast: str, slow: str) -> list[float]:
    """Per round: the words/s of `fast` over those of `slow` (the same words)."""
    return [round(s / f, 3) for f, s in zip(seconds[fast], seconds[slow])]


def time_paired(name: str, variant: str, model, g2p, texts: Sequence[str], rounds: int, chunk: int = 512,
                native=None) -> Paired:
    """The model's words/s at batch 1 and 64 over g2p-en's, g2p-en and the model at both batch sizes
    timed in alternation on each chunk of `texts` (`alternate`); with `native` (native_model()), the native
    host at both batch sizes in the same alternation."""
    calls = {"g2p-en": lambda part: [g2p.predict(w) for w in part],
             "batch 1": lambda part: model.decode(part, batch_size=1),
             "batch 64": lambda part: model.decode(part, batch_size=64)}
    if native is not None:
        calls |= {"native 1": lambda part: native.decode(part, batch_size=1),
                  "native 64": lambda part: native.decode(part, batch_size=64)}
    seconds = alternate(calls, texts, rounds, chunk)
    batch_1, batch_64 = _speedups(seconds, "batch 1", "g2p-en"), _speedups(seconds, "batch 64", "g2p-en")
    paired = Paired(name, variant, rounds, chunk, batch_1, batch_64, statistics.median(batch_1), statistics.median(batch_64))
    if native is not None:
        paired.native_batch_1, paired.native_batch_64 = _speedups(seconds, "native 1", "g2p-en"), _speedups(seconds, "native 64", "g2p-en")
        paired.native_vs_g2p_en_batch_1 = statistics.median(paired.native_batch_1)
        paired.native_vs_g2p_en_batch_64 = statistics.median(paired.native_batch_64)
    return paired


def time_paired_torch(name: str, variants: dict, torch_model, texts: Sequence[str], rounds: int, chunk: int = 512,
                      batch: int = 64) -> PairedTorch:
    """fp32 and int8 (where loaded) words/s over PyTorch's at `batch`, the three timed in alternation."""
    from seq2edge.train.infer import decode_entries

    model, source, target = torch_model
    calls = {"pytorch": lambda part: decode_entries(model, part, source, target, batch)}
    for precision in ("fp32", "int8"):
        if precision in variants:
            calls[precision] = lambda part, m=variants[precision]: m.decode(part, batch_size=batch)
    seconds = alternate(calls, texts, rounds, chunk)
    fp32 = _speedups(seconds, "fp32", "pytorch")
    int8 = _speedups(seconds, "int8", "pytorch") if "int8" in seconds else []
    return PairedTorch(name, rounds, chunk, batch, fp32, int8, statistics.median(fp32),
                       statistics.median(int8) if int8 else None)


def startup(model: str, variant: str, command: list[str], runs: int) -> Startup:
    """Median time from process start to its first line on stdout, and its peak RSS, measured by
    bench/launch.py in a small process of its own (see there why).

    One untimed start comes first, with bytecode writing allowed (PYTHONDONTWRITEBYTECODE removed
    from the environment): it compiles the package's modules, as `pip install` does, so that the
    timed starts measure starting the program rather than compiling its source (about 25 ms of
    the runtime's start on a machine that sets PYTHONDONTWRITEBYTECODE)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable, "-S", str(Path(__file__).with_name("launch.py"))]
    subprocess.run([*launcher, *command], capture_output=True, text=True, env=env, check=True)
    times, peaks = [], []
    for _ in range(runs):
        out = subprocess.run([*launcher, *command], capture_output=True, text=True, env=env, check=True)
        report = json.loads(out.stdout)
        if report["exit"] != 0 or not report["printed"]:
            raise RuntimeError(f"{' '.join(command)} failed (exit {report['exit']})")
        times.append(report["seconds"])
        peaks.append(report["peak_rss_kib"] / 1024)
    return Startup(model, variant, round(statistics.median(times), 4), round(statistics.median(peaks), 1), runs)


# The JavaScript host's command line (hosts/js), where this is a checkout with `make js` done.
JS_CLI = Path(__file__).resolve().parents[1] / "hosts" / "js" / "cli.mjs"


def node_host() -> list[str] | None:
    """`node hosts/js/cli.mjs`, or None where Node or the host's onnxruntime-node is not installed."""
    node = shutil.which("node")
    if node is None or not (JS_CLI.parent / "node_modules" / "onnxruntime-node").is_dir():
        return None
    return [node, str(JS_CLI)]


# The native host (hosts/c), where this is a checkout with `make c` done.
NATIVE = Path(__file__).resolve().parents[1] / "hosts" / "c"


def native_model(bundle: Path, precision: str = "fp32", **options):
    """The bundle loaded by the native host's library through its C API (ctypes, one thread), or None where it is not
    built. The ctypes calls cost a few microseconds a word; C programs do not pay them. options: NativeModel's."""
    library = NATIVE / "build" / "libseq2edge.so"
    if not library.exists():
        return None
    if str(NATIVE / "examples") not in sys.path:
        sys.path.insert(0, str(NATIVE / "examples"))
    from seq2edge_ctypes import NativeModel

    return NativeModel(str(bundle), str(library), precision=precision, threads=1, unknown="unk", too_long="truncate", **options)


def startup_input(texts: Sequence[str]) -> str:
    """The input a cold start decodes: the first timed input that no command line takes for an option."""
    return next((t for t in texts if not t.startswith("-")), texts[0])


def startup_commands(bundle: Path, precisions: Sequence[str], checkpoint: Path | None,
                     word: str = "attention") -> dict[str, list[str]]:
    """The command lines whose cold start is timed: the runtime's decode in each precision, the
    JavaScript host's in each (`P-node`, where it is installed), and the torch-based equivalent on
    the checkpoint."""
    python = sys.executable
    commands = {p: [python, "-m", "seq2edge.runtime.cli", "decode", str(bundle), word, "--threads", "1", "--provider", "cpu",
                    "--precision", p] for p in precisions}
    node = node_host()
    if node is not None:
        commands |= {f"{p}-node": [*node, str(bundle), word, "--threads", "1", "--precision", p] for p in precisions}
    native = NATIVE / "build" / "seq2edge-c"
    if native.exists():
        commands |= {f"{p}-c": [str(native), "decode", str(bundle), word, "--threads", "1", "--precision", p] for p in precisions}
    if checkpoint is not None:
        commands["pytorch"] = [python, "-m", "seq2edge.bench.peers", "torch", str(checkpoint), word]
    return commands


def g2p_en_command(word: str = "attention") -> list[str]:
    return [sys.executable, "-m", "seq2edge.bench.peers", "g2p-en", word]


def bundle_sizes(bundle) -> dict[str, dict[str, int]]:
    """Bytes per precision: "steps", the encoder plus decoder graphs (every search needs them), and
    "all", with the greedy graph where the bundle has one (everything of that precision it ships)."""
    sizes = {}
    for p in bundle.precisions:
        steps = sum((bundle.path / graph_file(k, p)).stat().st_size for k in GRAPHS)
        extra = sum((bundle.path / graph_file(k, p)).stat().st_size for k in OPTIONAL_GRAPHS if bundle.has_graph(k, p))
        sizes[p] = {"steps": steps, "all": steps + extra}
    return sizes


def as_dicts(rows) -> list[dict]:
    return [asdict(r) for r in rows]
