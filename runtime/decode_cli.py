"""`seq2edge decode`: a thin layer over Seq2Seq.decode, reading arguments, a file or stdin."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .errors import Seq2EdgeError
from .interface import PRECISIONS
from .model import TOO_LONG_POLICIES, Seq2Seq
from .options import SearchOptions
from .providers import OPTIMIZATION_LEVELS
from .tokenize import UNKNOWN_POLICIES
from .util import atomic_path

CHUNK = 4096  # lines decoded per call: bounds memory on long inputs, keeps output in input order


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.Path(path_type=Path),
              help="Read inputs from FILE, one per line (else TEXT arguments, else stdin).")
@click.option("--output", "output_file", type=click.Path(path_type=Path), help="Write results to FILE (atomically) instead of stdout.")
@click.option("--format", "fmt", type=click.Choice(["text", "tsv", "jsonl"]), default="text", show_default=True,
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
@click.option("--optimization", type=click.Choice(list(OPTIMIZATION_LEVELS)), default="all", show_default=True,
              help="onnxruntime graph optimisation level.")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Keep decoding state on the device between steps (default: on for GPU providers, off on the CPU).")
@click.option("--unknown", type=click.Choice(UNKNOWN_POLICIES), default="error", show_default=True,
              help="Source tokens outside the vocabulary: fail that input, map to <unk>, or drop them.")
@click.option("--too-long", type=click.Choice(TOO_LONG_POLICIES), default="error", show_default=True,
              help="Inputs over the model's max_src_len: fail that input, or truncate with a warning.")
@click.option("--plot-attention", type=click.Path(path_type=Path), default=None,
              help="Draw each input's attention as a PNG heatmap (FILE, or FILE-N.png per input line N).")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal).")
def decode(bundle, texts, input_file, output_file, fmt, beam, nbest, length_penalty, sample, temperature, top_k, top_p, seed,
           max_len, min_len, batch_size, provider, threads, precision, optimization, io_binding, unknown, too_long, plot_attention,
           progress) -> int:
    """Decode TEXTS (or --input FILE, or stdin lines) with the bundle at BUNDLE."""
    if texts and input_file:
        raise click.UsageError("give TEXT arguments or --input, not both")
    if nbest is not None and nbest > beam:
        raise click.UsageError(f"--nbest {nbest} needs --beam of at least {nbest}")
    if plot_attention is not None:
        _check_matplotlib()
    options = SearchOptions(beam_size=beam, nbest=nbest or 1, max_len=max_len, min_len=min_len, batch_size=batch_size,
                            length_penalty=length_penalty, sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, return_attention=plot_attention is not None, errors="return")
    model = Seq2Seq.load(bundle, providers=provider, precision=precision, threads=threads, optimization=optimization,
                         unknown=unknown, too_long=too_long, io_binding=io_binding)
    lines = _lines(texts, input_file)
    show_progress = sys.stderr.isatty() if progress is None else progress
    failed = 0
    with _Sink(output_file) as out, _Progress(show_progress, input_file) as bar:
        for chunk in _chunks(lines, CHUNK):
            good = [(n, text) for n, text, problem in chunk if problem is None]
            results = iter(model.decode([text for _, text in good], options)) if good else iter(())
            for number, text, problem in chunk:
                if problem is None:
                    result = next(results)
                    problem = result.error
                else:
                    result = None
                if problem is not None:
                    failed += 1
                    click.echo(f"seq2edge: line {number}: {problem}", err=True)
                out.write(_format(fmt, number, text, result, problem, nbest is not None))
                if result is not None and problem is None and plot_attention is not None:
                    from .plot import plot_attention as draw

                    draw(result, _plot_path(plot_attention, number, len(texts) == 1))
            bar.update(len(chunk))
    if failed:
        click.echo(f"seq2edge: {failed} input(s) failed; the others were written", err=True)
        return 1
    return 0


def _lines(texts: tuple[str, ...], input_file: Path | None) -> Iterator[tuple[int, str, str | None]]:
    """(line number, text, problem or None) for every input."""
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
        for number, raw in enumerate(stream, start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            try:
                yield number, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield number, raw.decode("utf-8", errors="replace"), f"not valid UTF-8 (byte {exc.start})"


def _chunks(lines, size: int):
    chunk = []
    for item in lines:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _format(fmt: str, number: int, text: str, result, problem: str | None, with_nbest: bool) -> str:
    if fmt == "jsonl":
        record: dict = {"line": number, "input": text}
        if problem is not None:
            record["error"] = problem
        else:
            record.update(output=result.text, tokens=result.tokens, score=round(result.score, 6))
            if result.truncated:
                record["truncated"] = True
            if with_nbest:
                record["nbest"] = [{"output": r.text, "tokens": r.tokens, "score": round(r.score, 6)} for r in (result.nbest or [result])]
        return json.dumps(record, ensure_ascii=False) + "\n"
    if problem is not None:
        return f"{text}\t\n" if fmt == "tsv" else f"{text} -> (error: {problem})\n"
    hyps = (result.nbest or [result]) if with_nbest else [result]
    if fmt == "tsv":
        return "".join(f"{text}\t{r.text}" + (f"\t{r.score:.4f}" if with_nbest else "") + "\n" for r in hyps)
    return "".join(f"{text} -> {r.text}" + (f"  ({r.score:.3f})" if with_nbest else "") + "\n" for r in hyps)


def _plot_path(base: Path, number: int, single: bool) -> Path:
    return base if single else base.with_name(f"{base.stem}-{number}{base.suffix or '.png'}")


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise Seq2EdgeError("--plot-attention needs matplotlib: pip install 'seq2edge[plot]'") from None


class _Sink:
    """stdout, or a file written to a temporary path and renamed into place at the end."""

    def __init__(self, path: Path | None):
        self.path = path
        self._atomic = atomic_path(path) if path is not None else None

    def __enter__(self):
        if self._atomic is None:
            self.stream = sys.stdout
            return self
        tmp = self._atomic.__enter__()
        try:
            self.stream = open(tmp, "w", encoding="utf-8")
        except OSError as exc:
            self._atomic.__exit__(*sys.exc_info())
            raise Seq2EdgeError(f"{self.path}: cannot write: {exc.strerror}") from None
        return self

    def write(self, text: str) -> None:
        self.stream.write(text)
        if self._atomic is None:
            self.stream.flush()

    def __exit__(self, kind, value, tb):
        if self._atomic is None:
            return False
        self.stream.close()
        self._atomic.__exit__(kind, value, tb)
        return False


class _Progress:
    def __init__(self, show: bool, input_file: Path | None):
        self.bar = None
        if show:
            total = None
            if input_file is not None:
                try:
                    with open(input_file, "rb") as f:
                        total = sum(1 for _ in f)
                except OSError:
                    total = None
            self.bar = click.progressbar(length=total, label="decoding", file=sys.stderr) if total else None

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
