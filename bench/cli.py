"""`seq2edge bench`: the runtime against PyTorch eager and g2p-en, in one run, as ratios."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import click

from seq2edge.runtime.util import write_json_atomic

from . import measure as M
from .report import plot, table, targets


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="The bundle's checkpoint, to time PyTorch eager.")
@click.option("--quick", is_flag=True, help="Few words, one repetition: a smoke run in well under a minute.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write every figure as JSON.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Draw words/s against batch size (PNG).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Threads for onnxruntime and torch.")
@click.option("--words", type=click.IntRange(min=1), default=None, help="How many test words (default 2048, quick 96).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per figure (default 3, quick 1).")
@click.option("--batch-sizes", default="1,64,512", show_default=True)
@click.option("--provider", default="cpu", show_default=True, help="Execution provider for the runtime variants (cuda on a GPU).")
@click.option("--precisions", default="fp32,int8", show_default=True, help="Which of the bundle's graphs to time.")
def bench(bundle, checkpoint, quick, json_out, plot_out, threads, words, repeats, batch_sizes, provider, precisions) -> None:
    """Measure BUNDLE's runtime (fp32, int8) against PyTorch and g2p-en on CMUdict test words."""
    from seq2edge.runtime.backend import DeviceBackend
    from seq2edge.runtime.model import Seq2Seq
    from seq2edge.train import corpus as C
    from seq2edge.train.metrics import score

    words = words or (96 if quick else 2048)
    repeats = repeats or (1 if quick else 3)
    sizes = [int(b) for b in batch_sizes.split(",")]
    entries = C.split(C.load_cmudict().entries, "test")[:words]
    texts = [e.source for e in entries]
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731

    variants = {}
    for precision in ["fp32"] + [p for p in precisions.split(",") if p != "fp32"]:
        try:
            variants[precision] = Seq2Seq.load(bundle, providers=provider, precision=precision, threads=threads,
                                               unknown="unk", too_long="truncate")
        except Exception as exc:
            if precision == "fp32":
                raise
            log(f"{precision}: skipped ({exc})")
    for precision in list(variants):  # the one-call greedy graph, where the bundle has one, is a variant of its own
        if variants[precision].bundle.has_graph("greedy", precision):
            variants[f"{precision}-graph"] = Seq2Seq.load(bundle, providers=provider, precision=precision, threads=threads,
                                                          unknown="unk", too_long="truncate", greedy_graph=True)
    target = variants["fp32"].bundle.target
    refs = [[target.split(r) for r in e.references] for e in entries]
    speed, wer = [], {}
    torch_model = _load_torch(checkpoint, threads, log)
    if torch_model is not None:
        model, source, tgt = torch_model
        from seq2edge.train.infer import decode_entries

        wer["pytorch"] = score(decode_entries(model, texts, source, tgt), refs).wer
        for batch in sizes:
            log(f"pytorch batch {batch}")
            speed.append(M.time_torch(model, source, tgt, texts, batch, repeats))
    for precision, model in variants.items():
        wer[precision] = score([r.tokens for r in model.decode(texts)], refs).wer
        for batch in sizes:
            log(f"{precision} batch {batch}")
            speed.append(M.time_runtime(model, texts, batch, repeats, precision))
    from .peers import load_g2p_en

    g2p = load_g2p_en()
    if g2p is not None:
        log("g2p-en batch 1")
        wer["g2p-en"] = score([g2p.predict(w) for w in texts], refs).wer
        speed.append(M.time_g2p_en(g2p, texts, repeats))
    else:
        log("g2p-en: not installed, skipped (pip install 'seq2edge[bench]')")
    startup = []
    for variant, command in M.startup_commands(bundle, checkpoint if torch_model else None, g2p is not None).items():
        log(f"cold start {variant}")
        startup.append(M.startup(variant, command, 1 if quick else 5))
    result = {
        "bundle": str(bundle), "checkpoint": str(checkpoint) if checkpoint else None, "words": len(texts), "threads": threads,
        "provider": variants["fp32"].providers[0], "io_binding": isinstance(variants["fp32"].backend, DeviceBackend),
        "repeats": repeats, "quick": quick, "machine": {"python": platform.python_version(), "processor": platform.processor(),
                                                        "machine": platform.machine(), "cpus": _cpus()},
        "speed": M.as_dicts(speed), "wer": {k: round(v, 3) for k, v in wer.items()},
        "sizes": M.bundle_sizes(variants["fp32"].bundle), "startup": M.as_dicts(startup),
    }
    result["targets"] = [{"name": t.name, "value": t.value, "goal": t.goal, "at_least": t.at_least, "met": t.met}
                         for t in targets(result)]
    click.echo(table(result))
    if json_out:
        write_json_atomic(json_out, result)
    if plot_out:
        plot(result, plot_out)


def _load_torch(checkpoint: Path | None, threads: int, log):
    if checkpoint is None:
        log("pytorch: no --checkpoint given, skipped")
        return None
    try:
        import torch
    except ImportError:
        log("pytorch: torch is not installed, skipped (pip install 'seq2edge[train]')")
        return None
    torch.set_num_threads(threads)
    from seq2edge.train.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":  # pragma: no cover
    bench(sys.argv[1:])
