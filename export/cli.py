"""`seq2edge export`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--from", "toolkit", type=click.Choice(["joeynmt", "opennmt"]), default=None,
              help="CHECKPOINT is a model trained by this toolkit: a JoeyNMT model directory, or an OpenNMT-py .pt "
                   "checkpoint (docs/own-model.md, \"Importers\").")
@click.option("--parity-sources", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --from: a text file of inputs (one per line) for the parity gate (default: the dev set the "
                   "model's config names, when it is here).")
@click.option("--int8", is_flag=True, help="Also write dynamically quantised int8 graphs.")
@click.option("--accept-int8", is_flag=True, help="Write int8 graphs even where they fail the int8 gate (fewer than 90% of the "
              "parity inputs decoded as fp32 does, or a WER more than 1 point worse; docs/export.md, \"The int8 gate\").")
@click.option("--fp16", is_flag=True, help="Also write fp16 graphs (for GPUs).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter; the result is verified either way.")
@click.option("--decoder-step", type=click.Choice(["traced", "node"]), default="traced", show_default=True,
              help="How each decoder layer's cell is written: its matrix products and elementwise nodes as traced, or one "
                   "ONNX GRU/LSTM/RNN node (docs/export.md, \"The decoder step\"). Traced is the faster on CPUs here.")
@click.option("--corpus", default=None, help="Corpus for the parity words (default: the training corpus).")
@click.option("--parity-words", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest |log-prob difference| from PyTorch that parity accepts (default: 10 x PyTorch's own "
                   "float32-vs-float64 difference on the same steps, at least 1e-4).")
@click.option("--greedy-graph", is_flag=True, help="Also write greedy.onnx (greedy.int8.onnx with --int8): encoder and decoder "
              "loop in one graph, for hosts that want one call per batch.")
@click.option("--ort", "ort_format", is_flag=True, help="Also write ORT-format copies of every graph and "
              "required_operators.config, for reduced (mobile) onnxruntime builds.")
def export(checkpoint, out, toolkit, parity_sources, int8, accept_int8, fp16, force, exporter, decoder_step, corpus,
           parity_words, atol, greedy_graph, ort_format) -> None:
    """Export CHECKPOINT to the bundle directory OUT and verify it against PyTorch."""
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if toolkit is not None:
        from .importers import export_imported

        if corpus is not None:
            raise click.UsageError("--corpus goes with seq2edge's own checkpoints; with --from, give --parity-sources FILE")
        if decoder_step != "traced":
            raise click.UsageError("--decoder-step node goes with seq2edge's own checkpoints; an imported model's step is "
                                   "traced as written")
        if click.get_current_context().get_parameter_source("exporter") != click.core.ParameterSource.DEFAULT:
            raise click.UsageError("--exporter goes with seq2edge's own checkpoints; an imported model is traced with the "
                                   "torchscript exporter")
        export_imported(toolkit, checkpoint, out, parity_sources=parity_sources, parity_count=parity_words, int8=int8, fp16=fp16,
                        greedy_graph=greedy_graph, ort=ort_format, force=force, atol=atol, accept_int8=accept_int8,
                        option_style="cli", log=log)
        click.echo(f"bundle written: {out}")
        return
    if parity_sources is not None:
        raise click.UsageError("--parity-sources goes with --from; seq2edge's own checkpoints take --corpus")
    from .bundle import export_bundle

    export_bundle(checkpoint, out, force=force, int8=int8, fp16=fp16, exporter=exporter, decoder_step=decoder_step,
                  corpus=corpus, parity_words=parity_words, atol=atol, greedy_graph=greedy_graph,
                  ort=ort_format, accept_int8=accept_int8, option_style="cli", log=log)
    click.echo(f"bundle written: {out}")
