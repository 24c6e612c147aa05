"""`seq2edge bench`: one or more bundles against PyTorch eager and g2p-en, in one run, as ratios.

On CMUdict the peer is g2p-en and accuracy is WER and PER with and without stress; on any other
corpus (a TSV file) the bundles are timed against PyTorch alone and scored by exact match and
token error rate, as `seq2edge eval` scores them."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import click

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.info import onnxruntime_versions
from seq2edge.runtime.util import write_json_atomic

from . import measure as M
from .report import plot, table, targets


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--corpus", default=None,
              help="cmudict or a TSV file: its test split is timed and scored (default: the corpus the first bundle was trained on).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="A bundle's checkpoint, to time PyTorch eager on it; repeat it to pair checkpoints with the bundles in order.")
@click.option("--quick", is_flag=True, help="Few words, one repetition: a smoke run in about a minute.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write every figure as JSON.")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None,
              help="Draw test WER against batch-1 words/s (the Pareto picture) and words/s against batch size (PNG).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Threads for onnxruntime and torch.")
@click.option("--words", type=click.IntRange(min=1), default=None, help="How many test words are timed (default 2048, quick 96).")
@click.option("--accuracy-words", type=click.IntRange(min=1), default=None,
              help="How many test words are scored (default: the whole test split; quick: the timed words).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per figure (default 3, quick 1).")
@click.option("--batch-sizes", default="1,64,512", show_default=True)
@click.option("--provider", default="cpu", show_default=True, help="Execution provider for the runtime variants (cuda on a GPU).")
@click.option("--precisions", default="fp32,int8", show_default=True, help="Which of each bundle's graphs to time.")
@click.option("--edge-precision", default="int8", show_default=True,
              help="The precision the small-model targets (every bundle after the first) are checked in.")
@click.option("--ctranslate2", "ctranslate2_checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The OpenNMT-py checkpoint BUNDLE was imported from: time BUNDLE against CTranslate2 (its own converter on the "
                   "checkpoint, float32 and int8) and PyTorch eager instead, at batch 1 and 64, one thread, on --inputs.")
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="With --ctranslate2: the inputs to decode, one per line, as the model reads them.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="With --ctranslate2: rounds of the alternation (the median is reported).")
def bench(bundles, corpus, checkpoints, quick, json_out, plot_out, threads, words, accuracy_words, repeats, batch_sizes, provider,
          precisions, edge_precision, ctranslate2_checkpoint, inputs_file, rounds) -> None:
    """Measure each of BUNDLES (fp32, int8, greedy graph) against PyTorch (and, on CMUdict, g2p-en) on test words.

    Speed is timed on the first --words inputs of the corpus's test split; accuracy is scored on the
    whole split (CMUdict: WER and PER, with and without stress; other corpora: exact match and token
    error rate). The first bundle is checked against the runtime's targets; on CMUdict every further
    one against the small-model targets (in --edge-precision)."""
    from seq2edge.train import corpus as C
    from seq2edge.train.evaluate import corpus_of

    if ctranslate2_checkpoint is not None:
        _against_ctranslate2(bundles, ctranslate2_checkpoint, inputs_file, 1 if quick else rounds, json_out)
        return
    if len(checkpoints) > len(bundles):
        raise click.UsageError(f"{len(checkpoints)} --checkpoint for {len(bundles)} bundle(s): they pair with the bundles in order")
    sizes = [int(b) for b in batch_sizes.split(",")]
    words = words or (96 if quick else 2048)
    repeats = repeats or (1 if quick else 3)
    corpus = corpus or corpus_of(Path(bundles[0]))
    cmudict = corpus == "cmudict"
    test = C.split(C.load_corpus(corpus).entries, "test")
    if not test:
        raise Seq2EdgeError(f"{corpus}: the test split is empty; bench times and scores test inputs")
    timed = [e.source for e in test[:words]]
    scored = test[:accuracy_words or (words if quick else len(test))]
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    names = M.model_names(bundles)
    wanted = ["fp32"] + [p for p in precisions.split(",") if p != "fp32"]
    probe = "attention" if cmudict else M.startup_input(timed)  # what each cold start decodes

    from .peers import load_g2p_en

    g2p = load_g2p_en() if cmudict else None
    speed, accuracy, startup, models, paired, paired_torch = [], [], [], [], [], []
    for i, (name, bundle) in enumerate(zip(names, bundles)):
        checkpoint = checkpoints[i] if i < len(checkpoints) else None
        variants = M.load_variants(bundle, wanted, provider, threads, log)
        torch_model = _load_torch(checkpoint, threads, log, name)
        if torch_model is not None:
            model, source, target = torch_model
            log(f"{name} pytorch: accuracy on {len(scored)} words")
            accuracy.append(M.torch_accuracy(name, model, source, target, scored, cmudict))
            for batch in sizes:
                log(f"{name} pytorch batch {batch}")
                speed.append(M.time_torch(name, model, source, target, timed, batch, repeats))
        precisions_loaded = [v for v in variants if not v.endswith("-graph")]
        for variant, model in variants.items():
            if variant in precisions_loaded:  # a greedy graph decodes what its precision decodes (export checks it)
                log(f"{name} {variant}: accuracy on {len(scored)} words")
                accuracy.append(M.runtime_accuracy(name, variant, model, scored, cmudict))
            for batch in sizes:
                log(f"{name} {variant} batch {batch}")
                speed.append(M.time_runtime(name, variant, model, timed, batch, repeats))
        for precision in precisions_loaded:  # the native host (hosts/c), where `make c` built it
            native = M.native_model(bundle, precision)
            for batch in sizes if native is not None else ():
                log(f"{name} {precision} native host batch {batch}")
                speed.append(M.time_native(name, f"{precision}-c", native, timed, batch, repeats))
            del native
        if not i and torch_model is not None:  # the runtime's batch-64 targets against PyTorch
            log(f"{name} fp32, int8 and pytorch in alternation, batch 64")
            paired_torch.append(M.time_paired_torch(name, variants, torch_model, timed, 1 if quick else 5))
        if i and g2p is not None and edge_precision in variants:  # the small-model speed targets' ratios
            log(f"{name} {edge_precision} and g2p-en in alternation")
            native = M.native_model(bundle, edge_precision)
            paired.append(M.time_paired(name, edge_precision, variants[edge_precision], g2p, timed, 1 if quick else 5, native=native))
            del native
        fp32 = variants["fp32"]
        models.append({"name": name, "bundle": str(bundle), "checkpoint": str(checkpoint) if torch_model else None,
                       "provider": fp32.providers[0], "sizes": M.bundle_sizes(fp32.bundle)})
        for variant, command in M.startup_commands(bundle, precisions_loaded, checkpoint if torch_model else None,
                                                   probe).items():
            log(f"{name} cold start {variant}")
            startup.append(M.startup(name, variant, command, 1 if quick else 5))
        del variants, torch_model
    if g2p is not None:
        log(f"g2p-en: accuracy on {len(scored)} words, batch 1")
        accuracy.append(M.g2p_en_accuracy(g2p, scored))
        speed.append(M.time_g2p_en(g2p, timed, repeats))
        startup.append(M.startup(M.PEER, "g2p-en", M.g2p_en_command(), 1 if quick else 5))
    elif cmudict:
        log("g2p-en: not installed, skipped (pip install 'seq2edge[bench]')")
    result = {
        "corpus": corpus, "models": models, "words": len(timed), "accuracy_words": len(scored), "threads": threads, "repeats": repeats,
        "quick": quick, "edge_precision": edge_precision,
        "machine": {"python": platform.python_version(), "processor": platform.processor(), "machine": platform.machine(),
                    "cpus": _cpus(), "onnxruntime": onnxruntime_versions()},
        "speed": M.as_dicts(speed), "accuracy": M.as_dicts(accuracy), "startup": M.as_dicts(startup),
        "paired": M.as_dicts(paired), "paired_torch": M.as_dicts(paired_torch),
    }
    result["targets"] = [{"model": t.model, "name": t.name, "value": t.value, "goal": t.goal, "at_least": t.at_least,
                          "met": t.met} for t in targets(result)]
    click.echo(table(result))
    if json_out:
        write_json_atomic(json_out, result)
    if plot_out:
        plot(result, plot_out)


def _against_ctranslate2(bundles, checkpoint: Path, inputs_file: Path | None, rounds: int, json_out: Path | None) -> None:
    from . import ctranslate2

    if len(bundles) != 1 or inputs_file is None:
        raise click.UsageError("--ctranslate2 takes one BUNDLE (imported from that checkpoint) and --inputs FILE")
    try:
        texts = inputs_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise Seq2EdgeError(f"--inputs {inputs_file}: cannot read it as UTF-8 text ({exc})") from None
    result = ctranslate2.compare(Path(bundles[0]), checkpoint, texts, rounds, log=lambda msg: click.echo(msg, err=True))
    result["machine"] = {"python": platform.python_version(), "processor": platform.processor(), "machine": platform.machine(),
                         "cpus": _cpus(), "onnxruntime": onnxruntime_versions()}
    click.echo(ctranslate2.table(result))
    if json_out:
        write_json_atomic(json_out, result)


def _load_torch(checkpoint: Path | None, threads: int, log, name: str):
    if checkpoint is None:
        log(f"{name} pytorch: no --checkpoint given, skipped")
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
