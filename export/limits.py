"""The length limits a model can take, probed before its bundle is written.

A bundle promises that every source of up to max_src_len tokens encodes and that max_tgt_len tokens (and
the </s> after them) can be decoded. A model with a table of positions (a Transformer's embeddings, a
fixed attention window) cannot keep that promise past its table, and would fail on a device with a
traceback for one long input. Export runs encode() at max_src_len and step() max_tgt_len + 1 times, in
PyTorch before the graphs are traced and in onnxruntime after; a limit the user set and the model cannot
take is refused, a default one is lowered to the longest that runs, saying so.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np
import torch

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.model import Seq2Seq


class LimitError(Seq2EdgeError):
    """The model cannot take a length limit that was asked for, or its graphs fail where PyTorch does not."""


def fit_limits(model, explicit: set[str], log: Callable[[str], None]) -> None:
    """Lower model.config's max_src_len and max_tgt_len to what `model` takes (refuse where `explicit` names them)."""
    source = _longest(lambda n: _encode_fails(model, n), model.config.max_src_len)
    if source is not None:
        _lower(model, "max_src_len", *source, explicit, log)
    steps = _steps_failing(model, model.config.max_tgt_len + 1)
    if steps is not None:  # step k failing: k - 1 tokens and their </s> fit
        _lower(model, "max_tgt_len", steps[0] - 2, steps[1], explicit, log)


def check_graph_limits(runtime: Seq2Seq) -> None:
    """The exported graphs take the limits PyTorch took: a source of max_src_len and max_tgt_len + 1 steps."""
    c = runtime.config
    backend = runtime.backend
    src = np.full((1, c.max_src_len), _filler(c, c.src_vocab_size), dtype=np.int64)
    try:
        encoded = backend.encode(src, np.array([c.max_src_len], dtype=np.int64))
    except Exception as exc:  # onnxruntime's own exception classes
        raise LimitError(f"encoder.onnx fails on a source of max_src_len ({c.max_src_len}) tokens, which the PyTorch model "
                         f"encodes ({onnxruntime_problem(exc)}); no bundle was written. {FROZEN_SIZE_HINT}") from None
    state, prev = encoded.state, np.full((1,), c.bos_id, dtype=np.int64)
    for step in range(c.max_tgt_len + 1):
        try:
            out = backend.step(prev, state, encoded.memory, encoded.mask)
        except Exception as exc:
            raise LimitError(f"decoder.onnx fails at step {step + 1} of max_tgt_len + 1 ({c.max_tgt_len + 1}) on a source of "
                             f"{c.max_src_len} tokens, which the PyTorch model takes ({onnxruntime_problem(exc)}); no bundle "
                             f"was written. {FROZEN_SIZE_HINT}") from None
        state, prev = out.state, np.full((1,), _filler(c, c.tgt_vocab_size), dtype=np.int64)


def _lower(model, name: str, longest: int, why: str, explicit: set[str], log: Callable[[str], None]) -> None:
    asked = getattr(model.config, name)
    what = "source tokens" if name == "max_src_len" else "output tokens"
    if longest < 1:
        raise LimitError(f"the model fails on even one of its {what}: {why}")
    if name in explicit:
        raise LimitError(f"{name} {asked}: the model cannot take more than {longest} {what} ({why}); pass {name}={longest} "
                         "or less")
    log(f"{name} lowered from {asked} to {longest}: the model cannot take more {what} ({why})")
    model.config = dataclasses.replace(model.config, **{name: longest})


def _longest(fails: Callable[[int], str | None], most: int) -> tuple[int, str] | None:
    """None when `fails(most)` is None; else (the largest n < most with `fails(n)` None, 0 when even 1 fails; why
    `most` failed), found by halving (a model that takes n positions takes fewer)."""
    why = fails(most)
    if why is None:
        return None
    low, high = 0, most  # fails(low) is None (or low is 0), fails(high) is not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fails(middle) is None else (low, middle)
    return low, why


@torch.no_grad()
def _encode_fails(model, n: int) -> str | None:
    """Why encode() and a first step() fail on a source of `n` tokens, or None."""
    c = model.config
    src = torch.full((1, n), _filler(c, c.src_vocab_size), dtype=torch.long)
    try:
        memory, state = model.encode(src, torch.tensor([n]))
        model.step(torch.tensor([c.bos_id]), state, memory, torch.ones(1, n, dtype=torch.bool))
    except Exception as exc:  # whatever the user's model raises: IndexError, RuntimeError, ...
        return _first_line(exc)
    return None


@torch.no_grad()
def _steps_failing(model, steps: int) -> tuple[int, str] | None:
    """(the 1-based step that failed, why) when step() cannot run `steps` times on a short source, else None."""
    c = model.config
    n = min(4, c.max_src_len)
    src = torch.full((1, n), _filler(c, c.src_vocab_size), dtype=torch.long)
    memory, state = model.encode(src, torch.tensor([n]))
    mask, prev = torch.ones(1, n, dtype=torch.bool), torch.tensor([c.bos_id])
    for step in range(steps):
        try:
            _, state, _ = model.step(prev, state, memory, mask)
        except Exception as exc:
            return step + 1, _first_line(exc)
        prev = torch.full((1,), _filler(c, c.tgt_vocab_size), dtype=torch.long)
    return None


def _filler(c, size: int) -> int:
    """A token id below `size` that is none of the specials (<unk> in a vocabulary of the specials alone)."""
    return next((i for i in range(size) if i not in (c.pad_id, c.bos_id, c.eos_id, c.unk_id)), c.unk_id)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


# What a graph that runs in PyTorch but fails in onnxruntime on another length or batch size most likely holds.
FROZEN_SIZE_HINT = ("The likely cause: a size the trace fixed as a constant, such as a Python number taken from a shape "
                    "(int(x.shape[1]), or arithmetic on sizes) in a reshape or view; compute sizes from the tensors "
                    "(x.shape[1] as is, -1 in a reshape). nn.MultiheadAttention's own such reshapes (pytorch#135691) are "
                    "worked around by export")


def onnxruntime_problem(exc: BaseException) -> str:
    """onnxruntime's failure in one line: the node and what went wrong, without its source paths and C++ signatures."""
    text = " ".join(str(exc).split())
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    detail = re.search(r"was false\. (.*)", text) or re.search(r"Status Message: .*?\) (.*)", text)
    problem = detail[1] if detail else re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return (f"{node[1]} node {node[2]!r}: " if node else "") + problem[:300]
