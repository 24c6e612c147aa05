"""Subnormal floats flushed to zero while onnxruntime computes on this thread, and the caller's floating-point
environment given back afterwards.

Subnormals (a barely trained or imported model's tiny weights) make x86 arithmetic several times slower, so
both hosts flush them (docs/performance.md, "Subnormal weights"). onnxruntime's own session option does it for
its pool threads and, once per process, on whichever thread creates the first session, and never undoes it
there: an app's own arithmetic on that thread (numpy included) would lose every subnormal after its first
decode. `flushing()` sets flush-to-zero for the duration of a block and restores the thread's environment at
its end; blocks nest at the cost of a thread-local lookup. The runtime enters one per decode() and per streamed
token (never around the steps of a decode), and one around each session's creation.

Where the layout of C's fenv_t is not known here (Windows, other CPUs), the environment is only saved and
restored, and computing on the calling thread keeps the caller's own setting.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading

from . import providers

# (byte offset, bytes) of the register inside fenv_t and the bits that flush: x86 MXCSR's FTZ and DAZ, ARM FPCR's FZ.
_LAYOUTS = {
    ("linux", "x86_64"): (28, 4, 0x8040),
    ("linux", "aarch64"): (0, 4, 1 << 24),
    ("darwin", "x86_64"): (4, 4, 0x8040),
    ("darwin", "arm64"): (8, 8, 1 << 24),
}
_FENV_BYTES = 64  # larger than any platform's fenv_t


def _libc():
    if sys.platform not in ("linux", "darwin"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "fegetenv") and hasattr(libc, "fesetenv") else None
    except OSError:
        return None


_LIBC = _libc()
_LAYOUT = _LAYOUTS.get((sys.platform, platform.machine().lower())) if _LIBC is not None else None
_depth = threading.local()


def _flushed(env: ctypes.Array) -> ctypes.Array:
    """A copy of a saved environment with the flush bits set."""
    offset, size, bits = _LAYOUT
    out = ctypes.create_string_buffer(env.raw, _FENV_BYTES)
    value = int.from_bytes(out.raw[offset:offset + size], sys.byteorder) | bits
    ctypes.memmove(ctypes.addressof(out) + offset, value.to_bytes(size, sys.byteorder), size)
    return out


def _layout_works() -> bool:
    """Whether setting the bits at the layout's place does flush (a wrong table entry must cost nothing)."""
    saved = ctypes.create_string_buffer(_FENV_BYTES)
    _LIBC.fegetenv(saved)
    try:
        _LIBC.fesetenv(_flushed(saved))
        return float.fromhex("0x1p-1074") * 1.0 == 0.0
    finally:
        _LIBC.fesetenv(saved)


if _LAYOUT is not None and not _layout_works():
    _LAYOUT = None


class flushing:
    """with flushing(): ... -- onnxruntime calls inside flush subnormals (as providers.FLUSH_SUBNORMALS says, which
    only the benchmark that measures subnormals turns off); the thread's environment is restored after."""

    __slots__ = ("saved",)

    def __init__(self):
        self.saved = None

    def __enter__(self) -> flushing:
        depth = getattr(_depth, "value", 0)
        _depth.value = depth + 1
        if depth or _LIBC is None:
            return self
        self.saved = ctypes.create_string_buffer(_FENV_BYTES)
        _LIBC.fegetenv(self.saved)
        if providers.FLUSH_SUBNORMALS and _LAYOUT is not None:
            _LIBC.fesetenv(_flushed(self.saved))
        return self

    def __exit__(self, *exc) -> None:
        _depth.value -= 1
        if self.saved is not None:
            _LIBC.fesetenv(self.saved)
            self.saved = None
