"""Quieter third-party loggers for the length of one call, restored afterwards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def logger_level(name: str | None, level: int) -> Iterator[None]:
    """Set the logger `name` (None: the root logger) to `level` inside the block, as it was after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
