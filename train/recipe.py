"""Training recipes as files: `seq2edge train --config recipes/g2p-en.yaml`.

A recipe is a YAML mapping whose keys are `seq2edge train`'s long option names without the dashes
(`hidden: 384`, `input-feed: true`, `teacher: [a, b]` for a repeatable option). Its values become the
command's defaults (click's `default_map`), so a flag given on the command line overrides the file,
and the resolved settings are saved in the checkpoint as for any run. Paths in a recipe are read from
the working directory, as on the command line.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click

from seq2edge.runtime.errors import Seq2EdgeError

MAX_RECIPE_BYTES = 1 << 20


def option_names(command: click.Command) -> dict[str, str]:
    """Recipe key (a long option name without dashes) -> the command's parameter name. An on/off flag
    is named by its first form (`input-feed: false`, not `no-input-feed: true`)."""
    names = {}
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "config":
            for opt in param.opts:
                if opt.startswith("--"):
                    names[opt[2:]] = param.name
    return names


def read_recipe(path: Path, command: click.Command) -> dict:
    """The recipe at `path` as a default_map for `command`; a bad file or key is one line naming it."""
    import yaml

    if not path.is_file():
        raise Seq2EdgeError(f"{path}: no such recipe file")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise Seq2EdgeError(f"{path}: a recipe is at most {MAX_RECIPE_BYTES} bytes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Seq2EdgeError(f"{path}: not a valid YAML recipe ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Seq2EdgeError(f"{path}: a recipe is a mapping of option names to values, not a {type(data).__name__}")
    names = option_names(command)
    default_map = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key).replace("_", "-"), list(names), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; see `seq2edge {command.name} --help`"
            raise Seq2EdgeError(f"{path}: unknown option {key!r}{hint}")
        param = names[key]
        if param in default_map:
            raise Seq2EdgeError(f"{path}: option {key!r} sets {param!r} a second time")
        default_map[param] = value
    return default_map


def config_option(command_name: str):
    """The `--config FILE.yaml` option: eager, so the recipe becomes the defaults before other options are read."""

    def load(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
        if value is not None:
            ctx.default_map = {**(ctx.default_map or {}), **read_recipe(value, ctx.command)}
        return value

    return click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None, is_eager=True,
                        expose_value=False, callback=load,
                        help=f"A YAML recipe of {command_name} options (long names, e.g. `hidden: 384`); flags given here override it.")
