"""`seq2edge decode`: a thin layer over Seq2Seq.decode, reading arguments, a file or stdin.

Inputs are decoded in chunks of up to CHUNK lines, results written in input order. From a pipe or
a terminal, a chunk is cut as soon as input stalls for STALL_SECONDS, so the command works as a line
filter. SIGINT and SIGTERM keep every finished line (the output file holds them) and exit 130/143;
`--resume` continues after the last complete one.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import stat
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import click

from .bulk import INPUT_FORMATS, Job, decoded_chunks, worker_count
from .errors import Seq2EdgeError
from .interface import GRAPH_FORMATS, PRECISIONS
from .model import NO_ATTENTION, TOO_LONG_POLICIES, Result, Seq2Seq
from .options import SearchOptions
from .output import ResumeRefused, Sink, output_settings, unwritten
from .providers import OPTIMIZATION_LEVELS
from .tokenize import UNKNOWN_POLICIES

CHUNK = 4096  # most lines decoded per call: bounds memory on long inputs
STALL_SECONDS = 0.05  # a live stream that pauses this long gets what it sent so far decoded
BOM = "\ufeff"
FORMATS = ("text", "tsv", "jsonl")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; `code` is the exit status (128 + the signal number)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.Path(path_type=Path),
              help="Read inputs from FILE, one per line ('-': stdin; default: TEXT arguments, else stdin).")
@click.option("--output", "output_file", type=click.Path(path_type=Path),
              help="Write results to FILE (atomically; '-': stdout, the default).")
@click.option("--resume", is_flag=True, help="Continue an --output FILE left by an interrupted run after its last complete line.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text: 'input -> output'; tsv: input<TAB>output; jsonl: one JSON object per input.")
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True, help="Beam size; 1 is greedy search.")
@click.option("--nbest", type=click.IntRange(min=1), default=None, help="Return the N best hypotheses (N <= beam).")
@click.option("--length-penalty", type=float, default=0.0, show_default=True, help="Rank beam hypotheses by score / (len+1)^alpha.")
@click.option("--sample", is_flag=True, help="Sample tokens instead of searching.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Sample within the smallest set holding this probability.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--max-len", type=click.IntRange(min=0), default=None, help="Most output tokens (default: the model's max_tgt_len).")
@click.option("--min-len", type=click.IntRange(min=0), default=0, show_default=True, help="Fewest output tokens before </s>.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--provider", default="auto", show_default=True, help="auto, cpu, cuda, or another onnxruntime provider name.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads (default: onnxruntime's choice).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--graph-format", type=click.Choice(["auto", *GRAPH_FORMATS]), default="auto", show_default=True,
              help="The graphs to load: .onnx, the ORT-format copies (export --ort), or auto (.onnx when present, else .ort).")
@click.option("--optimization", type=click.Choice(list(OPTIMIZATION_LEVELS)), default="all", show_default=True,
              help="onnxruntime graph optimisation level.")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Keep decoding state on the device between steps (default: on for GPU providers, off on the CPU).")
@click.option("--unknown", type=click.Choice(UNKNOWN_POLICIES), default="error", show_default=True,
              help="Source tokens outside the vocabulary: fail that input, map to <unk>, or drop them.")
@click.option("--too-long", type=click.Choice(TOO_LONG_POLICIES), default="error", show_default=True,
              help="Inputs over the model's max_src_len: fail that input, or truncate it (said on stderr and in jsonl).")
@click.option("--plot-attention", type=click.Path(path_type=Path), default=None,
              help="Draw attention as a PNG heatmap: FILE for a single input, FILE-N.png for input line N otherwise.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: when stderr is a terminal); a count only when the input's length is unknown.")
@click.option("--workers", default="1", show_default=True,
              help="Worker processes, each with its own session and one onnxruntime thread; auto: one per core.")
@click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="lines", show_default=True,
              help="lines: each line is one input; tsv: tab-separated columns, --column says which is the input.")
@click.option("--column", type=click.IntRange(min=1), default=None,
              help="With --input-format tsv: decode column K (1-based, default 1); the line is written back with the "
                   "output as a new last column (jsonl: the columns as a field).")
@click.option("--greedy-graph/--no-greedy-graph", default=None,
              help="Decode plain greedy searches with the bundle's greedy.onnx (default: for single inputs, when it has one).")
@click.option("--ensemble", multiple=True, type=click.Path(path_type=Path), metavar="BUNDLE",
              help="Another bundle of the same task (the same vocabularies), decoding together with BUNDLE (repeatable): "
                   "every step searches the log of the members' mean probability.")
def decode(bundle, texts, input_file, output_file, resume, fmt, beam, nbest, length_penalty, sample, temperature, top_k, top_p,
           seed, max_len, min_len, batch_size, provider, threads, precision, graph_format, optimization, io_binding, unknown,
           too_long, plot_attention, progress, workers, input_format, column, greedy_graph, ensemble) -> int:
    """Decode TEXTS (or --input FILE, or stdin lines) with the bundle at BUNDLE."""
    input_file = None if input_file == Path("-") else input_file
    output_file = None if output_file == Path("-") else output_file
    if texts and input_file:
        raise click.UsageError("give TEXT arguments or --input, not both")
    if nbest is not None and nbest > beam:
        raise click.UsageError(f"--nbest {nbest} needs --beam of at least {nbest}")
    if max_len is not None and min_len > max_len:
        raise click.UsageError(f"--min-len {min_len} is greater than --max-len {max_len}")
    if resume and output_file is None:
        raise click.UsageError("--resume continues an --output FILE; give one")
    if resume and nbest is not None and fmt != "jsonl":
        raise click.UsageError("--resume with --nbest needs --format jsonl (one record per input)")
    workers = worker_count(workers)
    if workers > 1 and plot_attention is not None:
        raise click.UsageError("--plot-attention needs --workers 1 (the plots are drawn in this process)")
    if column is not None and input_format != "tsv":
        raise click.UsageError("--column goes with --input-format tsv")
    if input_format == "tsv" and column is None:
        column = 1
    if plot_attention is not None:
        _check_matplotlib()
    options = SearchOptions(beam_size=beam, nbest=nbest or 1, max_len=max_len, min_len=min_len, batch_size=batch_size,
                            length_penalty=length_penalty, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, return_attention=plot_attention is not None, errors="return")
    load = dict(providers=provider, precision=precision, graph_format=graph_format, threads=1 if workers > 1 else threads,
                optimization=optimization, unknown=unknown, too_long=too_long, io_binding=io_binding, option_style="cli",
                greedy_graph=greedy_graph, ensemble=[str(p) for p in ensemble])
    model = Seq2Seq.load(bundle, **load)  # here too with workers: a bad bundle is exit 2 before any decoding
    if plot_attention is not None and not model.config.gives_attention:
        raise click.UsageError(f"--plot-attention: {NO_ATTENTION}")
    job = Job(str(bundle), load, options, fmt, nbest is not None, column)
    show_progress = sys.stderr.isatty() if progress is None else progress
    plots = _Plots(plot_attention, single=len(texts) == 1) if plot_attention is not None else None
    failed = 0
    settings = output_settings(model, job, precision, unknown, too_long, greedy_graph, input_format)
    with Sink(output_file, resume, settings) as out, _Progress(show_progress, input_file) as bar, _signals_raise():
        # A resumed run skips what the output already holds, but decodes every chunk it touches whole,
        # so that batches (and so every digit of the scores) are those of an uninterrupted run.
        already: deque[int] = deque()
        chunks = unwritten(_chunks(_inputs(texts, input_file, input_format), CHUNK), out, job, already)
        try:
            for lines in decoded_chunks(job, chunks, workers, model, flush=lambda chunk: len(chunk) < CHUNK):
                for line in lines[already.popleft():]:
                    for note in line.notes:
                        click.echo(f"seq2edge: {note}", err=True)
                    failed += line.failed
                    out.write(line.out)
                    if plots is not None and line.result is not None and not line.failed:
                        plots.add(line.number, line.result)
                out.end_chunk()
                bar.update(len(lines))
        except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, like a killed pipeline writer
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except (Interrupted, KeyboardInterrupt) as exc:
            code = exc.code if isinstance(exc, Interrupted) else 130
            out.keep_partial()
            where = f"; {out.path} holds them, --resume continues" if out.path is not None else ""
            click.echo(f"seq2edge: interrupted after {out.done} input(s){where}", err=True)
            return code
        except ResumeRefused:
            raise  # the file --resume was given is left as it was
        except Seq2EdgeError as exc:  # mid-run (a worker died, a graph failed): keep every finished line
            out.keep_partial()
            where = f"; {out.path} holds the {out.done} finished input(s), --resume continues" if out.path is not None else ""
            click.echo(f"seq2edge: error: {exc}{where}", err=True)
            return exc.exit_code
    if plots is not None:
        plots.finish()
    if failed:
        click.echo(f"seq2edge: {failed} input(s) failed; the others were written", err=True)
        return 1
    return 0


def _inputs(texts: tuple[str, ...], input_file: Path | None, input_format: str = "lines") -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem or None) for every input; blank lines of a file or stdin are skipped
    (in a TSV, a line of tabs is a row of empty columns, not blank). From a live stream, _STALLED marks
    where input paused."""
    if texts:
        for number, text in enumerate(texts, start=1):
            yield number, text, None
        return
    if input_file is not None:
        try:
            stream = open(input_file, "rb")
        except OSError as exc:
            raise Seq2EdgeError(f"{input_file}: cannot read: {exc.strerror}") from None
    else:
        stream = sys.stdin.buffer
    with stream:
        number = 0
        for raw in _lines_as_they_come(stream):
            if raw is _STALLED:
                yield _STALLED
                continue
            number += 1
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, raw.decode("utf-8", errors="replace"), f"not valid UTF-8 (byte {exc.start})"
                continue
            if number == 1:
                text = text.removeprefix(BOM)
            if text.strip() or (input_format == "tsv" and "\t" in text):
                yield number, text, None


_STALLED = object()  # yielded by _lines_as_they_come when a live stream pauses


def _lines_as_they_come(stream) -> Iterator:
    """The stream's lines; from a pipe or terminal, also _STALLED whenever no line came for STALL_SECONDS."""
    try:
        live = not stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test runner's stdin)
        live = False
    if not live:
        yield from stream
        return
    lines: queue.Queue = queue.Queue(maxsize=2 * CHUNK)  # bounded: the reader waits when decoding falls behind
    end = object()

    def read() -> None:
        try:
            for line in stream:
                lines.put(line)
        finally:
            lines.put(end)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=STALL_SECONDS)
        except queue.Empty:
            yield _STALLED
            line = lines.get()
        if line is end:
            return
        yield line


def _chunks(inputs: Iterator, size: int) -> Iterator[list]:
    """Lists of up to `size` inputs; a list is cut early where a live stream stalled."""
    chunk: list = []
    for item in inputs:
        if item is _STALLED:
            if chunk:
                yield chunk
                chunk = []
            continue
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _Plots:
    """Attention plots: FILE when there is exactly one input, FILE-N.png for input line N otherwise.
    The first plot waits until a second input shows which case this is."""

    def __init__(self, base: Path, single: bool):
        self.base, self.single = base, single
        self.first: tuple[int, Result] | None = None
        self.count = 0

    def add(self, number: int, result: Result) -> None:
        self.count += 1
        if self.count == 1 and not self.single:
            self.first = (number, result)
            return
        if self.first is not None:
            self._draw(*self.first, numbered=True)
            self.first = None
        self._draw(number, result, numbered=not self.single)

    def finish(self) -> None:
        if self.first is not None:  # it stayed the only input
            self._draw(*self.first, numbered=False)

    def _draw(self, number: int, result: Result, numbered: bool) -> None:
        from .plot import plot_attention

        base = self.base
        plot_attention(result, base.with_name(f"{base.stem}-{number}{base.suffix or '.png'}") if numbered else base)


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Seq2EdgeError("--plot-attention needs matplotlib: pip install 'seq2edge[plot]'") from None


class _signals_raise:
    """SIGTERM (and SIGHUP) raise Interrupted in the main thread for the duration of the block,
    so the same code path as Ctrl-C (KeyboardInterrupt) keeps the finished output."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.saved[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted(128 + signum)

    def __exit__(self, *exc):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


class _Progress:
    """A bar when the input is a file of known length, else a running count."""

    def __init__(self, show: bool, input_file: Path | None):
        self.show, self.total, self.count, self.bar = show, None, 0, None
        if show and input_file is not None:
            try:
                with open(input_file, "rb") as f:
                    self.total = sum(1 for _ in f)
            except OSError:
                self.total = None
        if show and self.total:
            self.bar = click.progressbar(length=self.total, label="decoding", file=sys.stderr)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def update(self, n: int) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.show:
            width = shutil.get_terminal_size((80, 20)).columns
            click.echo(f"\rdecoding: {self.count} inputs (length unknown)".ljust(width - 1), err=True, nl=False)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        elif self.show and self.count:
            click.echo("", err=True)
        return False
