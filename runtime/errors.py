"""The one exception family of seq2edge.

The CLI catches `Seq2EdgeError` and prints its message on one line with the
exception's `exit_code`; anything else escaping is a bug.
"""


class Seq2EdgeError(Exception):
    """Base class: a problem the user can act on. Exit code 2 in the CLI."""

    exit_code = 2


class BundleError(Seq2EdgeError):
    """A bundle (or checkpoint) is missing, unreadable, inconsistent or too new."""


class InputError(Seq2EdgeError):
    """One input text cannot be decoded (empty, unknown characters, too long...)."""

    exit_code = 1


class ProviderError(Seq2EdgeError):
    """An execution provider was asked for but is not available or not active."""
