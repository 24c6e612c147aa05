"""`seq2edge train` and `seq2edge eval`."""

from __future__ import annotations

from pathlib import Path

import click

from seq2edge.runtime.config import ATTENTIONS, CELLS, TOKENIZERS, ModelConfig
from seq2edge.runtime.interface import PRECISIONS

from .distill import KD_MODES
from .evaluate import EVAL_SPLITS
from .recipe import config_option


@click.command()
@config_option("train")
@click.option("--corpus", default="cmudict", show_default=True, help="cmudict, or a UTF-8 TSV file of source<TAB>target lines.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint directory to write.")
@click.option("--cell", type=click.Choice(CELLS), default="lstm", show_default=True)
@click.option("--attention", type=click.Choice(ATTENTIONS), default="dot", show_default=True)
@click.option("--input-feed/--no-input-feed", default=False, show_default=True,
              help="Feed the attentional vector to the next step (Luong).")
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True, help="Encoder layers.")
@click.option("--decoder-layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--bidirectional/--unidirectional", default=False, show_default=True, help="Bidirectional encoder.")
@click.option("--embed", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--hidden", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--src-tokens", type=click.Choice(TOKENIZERS), default=None, help="Source tokeniser (default: char; CMUdict: char).")
@click.option("--tgt-tokens", type=click.Choice(TOKENIZERS), default=None, help="Target tokeniser (default: char; CMUdict: word).")
@click.option("--lowercase-source/--keep-case", default=None, help="Lowercase source text (default: on for CMUdict).")
@click.option("--src-vocab-size", type=click.IntRange(min=5), default=None,
              help="Source vocabulary cap (word) or size (spm, default 1000).")
@click.option("--tgt-vocab-size", type=click.IntRange(min=5), default=None)
@click.option("--min-freq", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rarer tokens become <unk> (char and word sides; an spm side keeps all its pieces).")
@click.option("--max-src-len", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--max-tgt-len", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--clip", type=float, default=1.0, show_default=True, help="Gradient norm clipping.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=6, show_default=True,
              help="Early stopping: epochs without a better dev WER.")
@click.option("--lr-patience", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs without a better dev WER before the learning rate halves.")
@click.option("--init-from", type=click.Path(path_type=Path), default=None,
              help="Start from this trained checkpoint's weights, model options and vocabularies (a second training "
                   "cycle, e.g. on a teacher's outputs). With a larger --hidden or --embed: a wider model that starts "
                   "computing what the checkpoint computes.")
@click.option("--keep-epochs", is_flag=True,
              help="Also keep every epoch's weights in OUT/epochs/epoch-N.safetensors (for `seq2edge average`).")
@click.option("--max-minutes", type=float, default=None, help="Time budget; stops inside an epoch if needed (resumable).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Batch budget of this run; stops inside an epoch if needed (resumable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last resume point.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N training entries.")
@click.option("--dev-limit", type=click.IntRange(min=1), default=None, help="Per-epoch dev WER on the first N dev entries only.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads, and the teacher's onnxruntime threads when distilling.")
@click.option("--log-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Batches between progress lines (loss, batches/s, ETA) when stderr is not a terminal; 0: none.")
@click.option("--teacher", type=click.Path(path_type=Path), multiple=True,
              help="Knowledge distillation: a bundle whose outputs the student learns (with --kd). Given more than "
                   "once: the teacher is those bundles' ensemble (the log of their mean probability at every step).")
@click.option("--kd", type=click.Choice(KD_MODES), default=None,
              help="seq: train on the teacher's beam-search outputs; token: on the references, also matching the "
                   "teacher's next-token distributions; seq+token: both (teacher outputs cached in OUT/teacher/).")
@click.option("--kd-alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="--kd token, seq+token: weight of the teacher's distributions (1 - alpha on the targets).")
@click.option("--kd-top-k", type=click.IntRange(min=1), default=8, show_default=True,
              help="--kd token, seq+token: the teacher's most likely tokens kept per step.")
@click.option("--kd-beam", type=click.IntRange(min=1), default=5, show_default=True, help="The teacher's beam size.")
@click.option("--kd-mix-references/--kd-teacher-only", default=False, show_default=True,
              help="Keep the corpus references beside the teacher's outputs.")
@click.option("--kd-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the teacher's cached outputs (default: OUT/teacher/); students of one teacher may share it.")
@click.option("--extra-inputs", type=click.Path(path_type=Path), default=None,
              help="Unlabelled sources (one per line) for the teacher to label; those of the dev/test split are left out.")
def train(corpus, out, cell, attention, input_feed, layers, decoder_layers, bidirectional, embed, hidden, dropout, src_tokens,
          tgt_tokens, lowercase_source, src_vocab_size, tgt_vocab_size, min_freq, max_src_len, max_tgt_len, epochs, batch_size,
          lr, clip, label_smoothing, patience, lr_patience, init_from, keep_epochs, max_minutes, max_steps, seed, resume, limit,
          dev_limit, threads, log_every, teacher, kd,
          kd_alpha, kd_top_k, kd_beam, kd_mix_references, kd_cache, extra_inputs) -> None:
    """Train a seq2seq model with attention into the checkpoint directory --out.

    With --resume, the run continues with its saved settings; --epochs, --patience, --threads,
    --log-every, --max-minutes and --max-steps may be given anew, any other option must match the saved run."""
    from seq2edge.runtime.errors import Seq2EdgeError

    from .config import WIDENED, TrainConfig

    if corpus != "cmudict":  # recorded absolute, so eval and export find it from any directory
        corpus = str(Path(corpus).resolve())
    given = _given()
    if (not teacher) != (kd is None):
        raise click.UsageError("--teacher and --kd go together")
    if kd_cache is not None and kd is None:
        raise click.UsageError("--kd-cache needs a teacher (--teacher BUNDLE --kd MODE)")
    if extra_inputs is not None and kd is None:
        raise click.UsageError("--extra-inputs needs a teacher (--teacher BUNDLE --kd seq) to label them")
    if resume and not (out / "last" / "state.json").exists():
        raise Seq2EdgeError(f"{out}: no resume point (last/state.json); start without --resume")
    if not resume and (out / "model.safetensors").exists():
        raise Seq2EdgeError(f"{out}: already holds a trained model; use --resume to continue it or choose another --out")
    arch = dict(cell=cell, attention=attention, input_feed=input_feed, layers=layers, decoder_layers=decoder_layers,
                bidirectional=bidirectional, embed=embed, hidden=hidden, dropout=dropout, src_tokens=src_tokens,
                tgt_tokens=tgt_tokens, lowercase_source=lowercase_source, max_src_len=max_src_len, max_tgt_len=max_tgt_len)
    if init_from is not None and not resume:
        arch = {name: arch[name] for name in WIDENED if name in given}  # the sizes that widen it; the rest is the checkpoint's
        _check_init_from(init_from, given, arch)
    if not resume and init_from is None:  # an impossible model is refused before the corpus is read and tokenisers trained
        try:
            ModelConfig.placeholder(**{k: v for k, v in arch.items() if v is not None})
        except ValueError as exc:
            raise Seq2EdgeError(str(exc)) from None
    tc = TrainConfig(corpus=corpus, epochs=epochs, batch_size=batch_size, lr=lr, clip=clip, label_smoothing=label_smoothing,
                     patience=patience, lr_patience=lr_patience,
                     init_from=str(init_from.resolve()) if init_from else None, keep_epochs=keep_epochs, seed=seed,
                     max_minutes=max_minutes, max_steps=max_steps,
                     min_freq=min_freq, src_vocab_size=src_vocab_size,
                     tgt_vocab_size=tgt_vocab_size, train_limit=limit, dev_limit=dev_limit, threads=threads, log_every=log_every,
                     teacher=str(teacher[0].resolve()) if teacher else None,
                     teacher_ensemble=[str(t.resolve()) for t in teacher[1:]], kd=kd, kd_beam=kd_beam, kd_alpha=kd_alpha,
                     kd_top_k=kd_top_k,
                     kd_mix_references=kd_mix_references, kd_cache=str(kd_cache.resolve()) if kd_cache else None,
                     extra_inputs=str(extra_inputs.resolve()) if extra_inputs else None)
    from .loop import Trainer  # imports torch

    overrides = {}
    if resume:
        overrides = {name: getattr(tc, name) for name in Trainer.RESUME_OVERRIDES if name in given}
        _check_unchanged(out, given - set(Trainer.RESUME_OVERRIDES) - {"out", "resume", "max_minutes", "max_steps"},
                         {**tc.__dict__, **arch})
    try:
        Trainer(tc, arch, out, resume=resume, overrides=overrides).run()
    except ValueError as exc:  # an impossible combination of options (ModelConfig says which)
        raise Seq2EdgeError(str(exc)) from None


# CLI option name -> the saved setting it sets, where the names differ
_SAVED_NAME = {"limit": "train_limit"}


def _given() -> set[str]:
    """Options set on the command line or by a --config recipe (not click's defaults)."""
    ctx = click.get_current_context()
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.DEFAULT_MAP)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in given}


# Options that the --init-from checkpoint fixes (its config.json and vocabularies).
_MODEL_OPTIONS = ("cell", "attention", "input_feed", "layers", "decoder_layers", "bidirectional", "embed", "hidden", "dropout",
                  "src_tokens", "tgt_tokens", "lowercase_source", "src_vocab_size", "tgt_vocab_size", "min_freq",
                  "max_src_len", "max_tgt_len")


def _check_init_from(checkpoint: Path, given: set[str], wider: dict[str, int]) -> None:
    """--init-from keeps the checkpoint's model and vocabularies: model options may not be given, but for
    --hidden and --embed, which widen it to the sizes in `wider` (train/widen.py)."""
    from seq2edge.runtime.errors import Seq2EdgeError

    from .config import WIDENED

    if not (checkpoint / "config.json").exists() or not (checkpoint / "model.safetensors").exists():
        raise Seq2EdgeError(f"--init-from {checkpoint}: not a trained checkpoint (config.json and model.safetensors)")
    fixed = sorted(f"--{name.replace('_', '-')}" for name in given & set(_MODEL_OPTIONS) - set(WIDENED))
    if fixed:
        raise click.UsageError(f"--init-from takes the model options and vocabularies of {checkpoint} (--hidden "
                               f"and --embed may widen it); leave out {', '.join(fixed)}")
    if wider:  # a narrower size is refused before the corpus is read
        from .checkpoint import read_json
        from .widen import widened_config

        try:
            widened_config(ModelConfig.from_dict(read_json(checkpoint / "config.json"), where=str(checkpoint)), wider)
        except ValueError as exc:
            raise Seq2EdgeError(str(exc)) from None


def _check_unchanged(out: Path, names: set[str], values: dict) -> None:
    """A resumed run keeps its saved settings: an option given with another value is a usage error."""
    from .checkpoint import read_json

    saved = {**read_json(out / "config.json"), **read_json(out / "train.json")["train_config"]}
    changed = []
    for name in sorted(names):
        key = _SAVED_NAME.get(name, name)
        if key in saved and values.get(key) is not None and values[key] != saved[key]:
            changed.append(f"--{name.replace('_', '-')} {values[key]} (saved: {saved[key]})")
    if changed:
        raise click.UsageError(f"--resume continues the run saved in {out} with its own settings; these differ: "
                               f"{', '.join(changed)}. Drop them, or train into a new --out")


@click.command("eval")
@click.argument("path", metavar="BUNDLE_OR_CHECKPOINT", type=click.Path(path_type=Path))
@click.option("--corpus", default=None, help="cmudict or a TSV file (default: the corpus the model was trained on).")
@click.option("--split", type=click.Choice(EVAL_SPLITS), default="test", show_default=True, help="all: every line of the corpus.")
@click.option("--beam", type=click.IntRange(min=1), default=1, show_default=True, help="Beam size (bundles only).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N inputs of the split.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="Write per-input results as TSV.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the figures as JSON.")
@click.option("--ensemble", "ensemble", multiple=True, type=click.Path(path_type=Path), metavar="BUNDLE",
              help="Another bundle of the same task, decoding together with BUNDLE (repeatable): every step "
                   "searches the log of the members' mean probability.")
def evaluate(path, corpus, split, beam, precision, batch_size, limit, threads, output, json_out, ensemble) -> None:
    """Score BUNDLE_OR_CHECKPOINT on a corpus: exact-match rate and token error rate (CER for character
    targets); for CMUdict WER and PER with and without stress digits."""
    from seq2edge.runtime.util import check_writable

    from .evaluate import evaluate as run
    from .evaluate import write_metrics, write_rows

    for option, target in (("--output", output), ("--json", json_out)):  # before scoring, not after it
        if target is not None:
            check_writable(target, option)
    result = run(path, corpus, split, beam, batch_size, limit, precision, threads, ensemble)
    for problem in result.problems:
        click.echo(f"seq2edge: {problem}", err=True)
    if result.unusable:
        click.echo(f"seq2edge: {result.unusable} corpus line(s) could not be used and are not scored", err=True)
    first = next(iter(result.scores.values()))
    click.echo(f"{result.corpus} {split}: {first.words} inputs, {result.seconds:.1f} s")
    for name, s in result.scores.items():
        if name == "as_given":
            click.echo(f"  exact match {100 - s.wer:6.2f}%   {result.error_rate_name} {s.per:5.2f}%")
        else:
            click.echo(f"  {'with stress' if name == 'stress' else 'stressless':12s} WER {s.wer:6.2f}%   PER {s.per:5.2f}%")
    if output:
        write_rows(result, output)
        click.echo(f"per-input results: {output}")
    if json_out:
        write_metrics(result, json_out)


@click.command("average")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def average(sources, out, force) -> None:
    """Average the weights of SOURCES (checkpoint directories, or weights files such as a run's
    epochs/epoch-N.safetensors from train --keep-epochs) of one model into the checkpoint --out."""
    from .average import average_checkpoints

    result = average_checkpoints(list(sources), out, force)
    click.echo(f"{out}: the mean of {len(result['averaged_from'])} weights files; score it with "
               f"`seq2edge eval {out} --split dev`")
