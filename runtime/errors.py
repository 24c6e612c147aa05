"""The one exception family of seq2edge.

The CLI catches `Seq2EdgeError` and prints its message on one line with the
exception's `exit_code`; anything else escaping is a bug.
"""

from __future__ import annotations


class Seq2EdgeError(Exception):
    """Base class: a problem the user can act on. Exit code 2 in the CLI."""

    exit_code = 2
    shown = True  # False: the CLI exits with exit_code but prints nothing (another process says it)


class BundleError(Seq2EdgeError):
    """A bundle (or checkpoint) is missing, unreadable, inconsistent or too new."""


class InputError(Seq2EdgeError):
    """One input text cannot be decoded (empty, unknown characters, too long...).

    `option` names a setting that would decode it anyway, as (keyword, values); how it is spelled
    in the message depends on who reads it (`option_hint`)."""

    exit_code = 1

    def __init__(self, message: str, option: tuple[str, tuple[str, ...]] | None = None, style: str = "python"):
        self.problem, self.option = message, option
        super().__init__(message + (f" (to decode it anyway: {option_hint(*option, style)})" if option else ""))

    def restyled(self, style: str) -> InputError:
        """The same error, its option spelled for `style` ("python" or "cli")."""
        return InputError(self.problem, self.option, style)


OPTION_STYLES = ("python", "cli")


def option_hint(keyword: str, values: tuple[str, ...], style: str) -> str:
    """unknown=('unk', 'skip') -> "unknown='unk' or 'skip'" (python) or "--unknown unk or --unknown skip" (cli)."""
    if style == "cli":
        flag = "--" + keyword.replace("_", "-")
        return " or ".join(f"{flag} {v}" for v in values)
    return f"{keyword}=" + " or ".join(repr(v) for v in values)


class ProviderError(Seq2EdgeError):
    """An execution provider was asked for but is not available or not active."""


class OptionError(Seq2EdgeError, TypeError):
    """An API setting of the wrong type or out of range (a TypeError too, as Python's own would be)."""
