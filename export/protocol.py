"""The bring-your-own-model protocol: any torch.nn.Module with encode() and step() (docs/own-model.md).

    model.encode(src_ids [B,S] int64, src_lengths [B] int64) -> (memory [B,S,M] float, state)
    model.step(prev_ids [B] int64, state, memory, src_mask [B,S] bool)
        -> (scores [B,V] float, new_state, attention [B,S] float | None)

`state` is a tensor or a (nested) tuple/list of tensors, batch first. `ProtocolModule` wraps such
a model so that it has the interface of seq2edge's own (train.model.Seq2SeqModule): one packed
state tensor, log-probabilities, and seq2edge's special ids (0-3) mapped to the model's own ids
inside the graphs, so the runtime and the hosts need nothing new. `check_protocol` probes the
model before anything is traced and names what breaks the protocol, one problem per error.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from seq2edge.runtime.config import ExternalModelConfig
from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.interface import StateTensor
from seq2edge.runtime.tokenize import SPECIALS

# Scores of a padded batch and of the same inputs alone differ by float32 summation order only
# (~1e-6 here); a step that reads padded positions differs by far more than this.
PADDING_TOLERANCE = 1e-3


class ProtocolError(Seq2EdgeError):
    """The model does not follow the encode()/step() protocol; nothing was exported."""


# ---- the state: any nesting of tuples and lists of batch-first tensors, packed into one [B, N] tensor


@dataclass(frozen=True)
class StateLayout:
    """The model's state as the graphs carry it: packed into one [B, state_size] float tensor when every tensor of it
    has a fixed size and is floating point (bundle formats 1 and 2), else each tensor as its own port, listed in
    bundle.json (`tensors`; format 3): int64 tensors, and tensors with one step axis that grows by one per step."""

    structure: object  # the nesting, with leaf indices in place of tensors
    shapes: tuple[tuple[int | None, ...], ...]  # each leaf's shape after the batch axis, None on a step axis
    dtypes: tuple[str, ...] = ()  # each leaf's type as the ports name it ("float", "int64")

    @property
    def listed(self) -> bool:
        return any(d != "float" for d in self.dtypes) or any(None in shape for shape in self.shapes)

    @property
    def tensors(self) -> tuple[StateTensor, ...] | None:
        """bundle.json's "state" for a listed layout, None for a packed one."""
        return tuple(StateTensor(d, s) for d, s in zip(self.dtypes, self.shapes)) if self.listed else None

    @property
    def size(self) -> int:
        """The packed tensor's width (0 for a listed layout: bundle.json's model.state_size)."""
        return 0 if self.listed else sum(_numel(s) for s in self.shapes)

    def pack(self, state):
        leaves = _leaves(state)
        if self.listed:
            return tuple(leaves)
        return torch.cat([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], dim=1)

    def unpack(self, packed):
        if self.listed:
            return _rebuild(self.structure, list(packed))
        leaves, start = [], 0
        for shape in self.shapes:
            end = start + _numel(shape)
            leaves.append(packed[:, start:end].reshape(-1, *shape))
            start = end
        return _rebuild(self.structure, leaves)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _leaves(state) -> list[Tensor]:
    if isinstance(state, Tensor):
        return [state]
    return [leaf for part in state for leaf in _leaves(part)]


def _structure(state, counter: list[int], where: str):
    """The nesting of `state` with leaf numbers in place of its tensors; ProtocolError for anything else."""
    if isinstance(state, Tensor):
        counter[0] += 1
        return counter[0] - 1
    if isinstance(state, (tuple, list)) and state:
        parts = [_structure(part, counter, where) for part in state]
        return tuple(parts) if isinstance(state, tuple) else parts
    raise ProtocolError(f"{where}: the state must be a tensor or a (nested) tuple/list of tensors, found {type(state).__name__}")


def _rebuild(structure, leaves: list[Tensor]):
    if isinstance(structure, int):
        return leaves[structure]
    parts = [_rebuild(part, leaves) for part in structure]
    return tuple(parts) if isinstance(structure, tuple) else parts


# ---- the wrapper traced into encoder.onnx and decoder.onnx


class ProtocolModule(nn.Module):
    """A protocol model with seq2edge's interface: encode -> (memory, packed state), step -> log-probs.

    Ids: the bundle's vocabularies put <pad>, <s>, </s>, <unk> at 0-3 and the model's other tokens after
    them in the model's order; `source_ids`/`target_ids` give the model's id of each bundle id (a Gather
    in the graphs, left out where the orders agree), and the scores are reordered the same way."""

    def __init__(self, model: nn.Module, config: ExternalModelConfig, layout: StateLayout,
                 source_ids: list[int], target_ids: list[int]):
        super().__init__()
        self.model, self.config, self.layout = model, config, layout
        self.register_buffer("source_ids", torch.tensor(source_ids, dtype=torch.long), persistent=False)
        self.register_buffer("target_ids", torch.tensor(target_ids, dtype=torch.long), persistent=False)
        self._remap_source = source_ids != list(range(len(source_ids)))
        self._remap_target = target_ids != list(range(len(target_ids)))

    @property
    def state_tensors(self) -> tuple[StateTensor, ...] | None:
        """bundle.json's "state" when the state is more than one packed float tensor (export.protocol.StateLayout)."""
        return self.layout.tensors

    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        ids = self.source_ids[src_ids] if self._remap_source else src_ids
        memory, state = self.model.encode(ids, src_lengths)
        return memory, self.layout.pack(state)

    def step(self, prev_ids: Tensor, state, memory: Tensor, src_mask: Tensor) -> tuple[Tensor, object, Tensor]:
        ids = self.target_ids[prev_ids] if self._remap_target else prev_ids
        scores, new_state, attention = self.model.step(ids, self.layout.unpack(state), memory, src_mask)
        if self._remap_target:
            scores = scores[:, self.target_ids]
        if attention is None:
            attention = torch.zeros(src_mask.shape, dtype=memory.dtype, device=memory.device)
        return torch.log_softmax(scores, dim=-1), self.layout.pack(new_state), attention


# ---- vocabularies


@dataclass(frozen=True)
class VocabMap:
    """One side's vocabulary in the bundle's order, and the model's id of each bundle id."""

    tokens: list[str]
    model_ids: list[int]


def map_vocab(vocab: Sequence[str], specials: Sequence[str], side: str) -> VocabMap:
    """The bundle's vocabulary: SPECIALS first (named as seq2edge names them), then the model's other
    tokens in its own order. `specials` are the model's pad, bos, eos and unk tokens."""
    vocab = list(vocab)
    if not all(isinstance(t, str) and t for t in vocab):
        raise ProtocolError(f"{side}_vocab must be a list of non-empty strings (index = id)")
    seen: set[str] = set()
    twice = next((t for t in vocab if t in seen or seen.add(t)), None)
    if twice is not None:
        raise ProtocolError(f"{side}_vocab holds {twice!r} twice; each token must have one id")
    index = {t: i for i, t in enumerate(vocab)}
    for name, token in zip(("pad", "bos", "eos", "unk"), specials):
        if token not in index:
            raise ProtocolError(f"{side}_vocab has no {name} token {token!r}: pass {name}= with the token the model uses")
    special_ids = [index[t] for t in specials]
    others = [i for i in range(len(vocab)) if i not in special_ids]
    clash = [vocab[i] for i in others if vocab[i] in SPECIALS]
    if clash:
        raise ProtocolError(f"{side}_vocab has {clash[0]!r} as an ordinary token, but seq2edge names a special token so; "
                            "rename it in the vocabulary")
    return VocabMap([*SPECIALS, *(vocab[i] for i in others)], special_ids + others)


# ---- probing the model before tracing


@dataclass(frozen=True)
class Probe:
    layout: StateLayout
    memory_size: int
    attention: bool


def check_protocol(model: nn.Module, source: VocabMap, target: VocabMap) -> Probe:
    """Run encode() and step() on small batches and check every rule of the protocol; returns what
    the config needs. The model must be in eval mode."""
    for method in ("encode", "step"):
        if not callable(getattr(model, method, None)):
            raise ProtocolError(f"{type(model).__name__} has no {method}() method: the protocol needs encode() and step()")
    first = _probe(model, source, target, [5, 3, 4])
    second = _probe(model, source, target, [7, 2])
    if first.layout.shapes != second.layout.shapes:
        raise ProtocolError(f"state shapes after the batch axis change with the input ({list(first.layout.shapes)} for sources "
                            f"of 5 tokens, {list(second.layout.shapes)} for 7): the state must have a fixed size per input")
    if first.memory_size != second.memory_size:
        raise ProtocolError("encode()'s memory changes its last axis with the input: it must be [batch, src_len, M] with a fixed M")
    _check_deterministic(model, source, target)
    _check_padding(model, source, target, first.layout)
    return first


def sample_batch(source: VocabMap, lengths: list[int], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Source ids in the model's numbering: ordinary tokens, padded with the model's pad id."""
    generator = torch.Generator().manual_seed(seed)
    ordinary = torch.tensor(source.model_ids[len(SPECIALS):] or [source.model_ids[3]])
    picks = ordinary[torch.randint(len(ordinary), (len(lengths), max(lengths)), generator=generator)]
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(max(lengths))[None, :] < lengths_t[:, None]
    return picks.masked_fill(~mask, source.model_ids[0]), lengths_t


@torch.no_grad()
def _probe(model: nn.Module, source: VocabMap, target: VocabMap, lengths: list[int]) -> Probe:
    """encode() and two steps: the state's structure, dtypes and shapes after each, and what they say of its layout."""
    batch = len(lengths)
    src, lengths_t = sample_batch(source, lengths)
    mask = torch.arange(src.shape[1])[None, :] < lengths_t[:, None]
    out = _call(model.encode, "encode", src, lengths_t)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ProtocolError(f"encode() must return (memory, state), found {_describe(out)}")
    memory, state = out
    _expect(memory, "encode()'s memory", (batch, src.shape[1], None), float_only=True)
    seen = [(state, _leaf_types(state, batch, "encode()'s state"))]
    prev = torch.full((batch,), target.model_ids[1], dtype=torch.long)
    attention = None
    for _ in range(2):
        out = _call(model.step, "step", prev, state, memory, mask)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ProtocolError(f"step() must return (scores, new_state, attention), found {_describe(out)}")
        scores, new_state, attention = out
        _expect(scores, "step()'s scores", (batch, len(target.tokens)), float_only=True)
        if attention is not None:
            _expect(attention, "step()'s attention", (batch, src.shape[1]), float_only=True)
        seen.append((new_state, _leaf_types(new_state, batch, "step()'s new_state")))
        if seen[-1][1] != seen[0][1]:  # before the next step, which would fail on it
            raise ProtocolError(f"step()'s new_state has another structure or type than the state it was given "
                                f"({_shapes(new_state)} after {_shapes(state)}): it must return the state as it takes it")
        state, prev = new_state, scores.argmax(dim=-1)
    return Probe(_layout(seen), int(memory.shape[2]), attention is not None)


# The element types a state tensor may have, as bundle.json and the ports name them.
_STATE_TYPES = {torch.float32: "float", torch.int64: "int64"}


def _leaf_types(state, batch: int, where: str) -> tuple[object, tuple[str, ...]]:
    """(the nesting, each leaf's type); ProtocolError for a leaf that is neither floating point nor int64 or not batch first."""
    structure = _structure(state, [0], where)
    leaves = _leaves(state)
    for i, leaf in enumerate(leaves):
        name = where if len(leaves) == 1 else f"{where} (tensor {i} of {len(leaves)})"
        if not leaf.is_floating_point() and leaf.dtype != torch.int64:
            raise ProtocolError(f"{name} is {leaf.dtype}: state tensors must be floating point or int64")
        if leaf.dim() < 1 or leaf.shape[0] != batch:
            raise ProtocolError(f"{name} has shape {tuple(leaf.shape)} for a batch of {batch}: the batch must be the first "
                                "axis (torch.nn.GRU/LSTM states are [layers, batch, hidden]: transpose them, e.g. "
                                "h.transpose(0, 1), and back inside step())")
    return structure, tuple(_STATE_TYPES.get(leaf.dtype, "float") for leaf in leaves)


def _layout(seen: list[tuple[object, tuple[object, tuple[str, ...]]]]) -> StateLayout:
    """The layout of states seen after encode() and after one and two steps (of one structure and type, _probe checked):
    each tensor keeps its shape, or grows by one along one axis per step from length 0."""
    (first, (structure, dtypes)), shapes = seen[0], [[tuple(leaf.shape[1:]) for leaf in _leaves(s)] for s, _ in seen]
    layout = []
    for i, (at_0, at_1, at_2) in enumerate(zip(*shapes)):
        if at_0 == at_1 == at_2:
            layout.append(tuple(int(d) for d in at_0))
            continue
        same_rank = len({len(at_0), len(at_1), len(at_2)}) == 1
        grows = [k for k, dims in enumerate(zip(at_0, at_1, at_2)) if dims != (dims[0],) * 3] if same_rank else []
        if len(grows) != 1 or (at_0[grows[0]], at_1[grows[0]], at_2[grows[0]]) != (0, 1, 2):
            raise ProtocolError(f"state tensor {i} has shape {tuple(at_0)} after encode() and {tuple(at_1)}, {tuple(at_2)} after "
                                "one and two steps (after the batch axis): a state tensor must keep its size, or grow along "
                                "one axis by one per step from length 0 in encode()")
        layout.append(tuple(None if k == grows[0] else int(d) for k, d in enumerate(at_0)))
    result = StateLayout(structure, tuple(layout), dtypes)
    if result.listed:
        odd = [i for i, leaf in enumerate(_leaves(first)) if leaf.dtype not in _STATE_TYPES]
        if odd:
            raise ProtocolError(f"state tensor {odd[0]} is {_leaves(first)[odd[0]].dtype}: a state with int64 or growing tensors "
                                "holds float32 and int64 tensors only")
    return result


def _expect(value, what: str, shape: tuple, float_only: bool) -> None:
    if not isinstance(value, Tensor):
        raise ProtocolError(f"{what} must be a tensor, found {_describe(value)}")
    if float_only and not value.is_floating_point():
        raise ProtocolError(f"{what} is {value.dtype}, it must be floating point")
    if value.dim() != len(shape) or any(want is not None and got != want for got, want in zip(value.shape, shape)):
        wanted = ", ".join("*" if d is None else str(d) for d in shape)
        raise ProtocolError(f"{what} has shape {tuple(value.shape)}, expected ({wanted}) here")


@torch.no_grad()
def _check_deterministic(model: nn.Module, source: VocabMap, target: VocabMap) -> None:
    runs = [_two_steps(model, source, target, [5, 3, 4]) for _ in range(2)]
    if not all(torch.equal(a, b) for a, b in zip(*runs)):
        raise ProtocolError("encode()/step() give different scores on the same input twice in eval mode: something random "
                            "is left on (F.dropout(training=True), a dropout that ignores self.training, or sampling)")


@torch.no_grad()
def _check_padding(model: nn.Module, source: VocabMap, target: VocabMap, layout: StateLayout) -> None:
    """Scores of a padded batch against each input alone: the runtime batches inputs of unequal lengths."""
    lengths = [5, 3, 4]
    batched = _two_steps(model, source, target, lengths)
    src, _ = sample_batch(source, lengths)
    for row, length in enumerate(lengths):
        alone = _two_steps(model, source, target, [length], src[row : row + 1, :length])
        for step, (a, b) in enumerate(zip(batched, alone)):
            diff = float((a[row] - b[0]).abs().max())
            if diff > PADDING_TOLERANCE:
                raise ProtocolError(
                    f"scores depend on padded positions or on the other inputs of the batch: an input of {length} tokens in a "
                    f"batch padded to {max(lengths)} scores up to {diff:.3g} away from the same input alone (step {step + 1}); "
                    "step() must ignore positions where src_mask is False and treat each row on its own, and encode() "
                    "must keep padding out of real positions (pack_padded_sequence)")


def _two_steps(model: nn.Module, source: VocabMap, target: VocabMap, lengths: list[int],
               src: Tensor | None = None) -> list[Tensor]:
    """Log-probs of the first two decoder steps (<s>, then the first step's best token)."""
    if src is None:
        src, _ = sample_batch(source, lengths)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(src.shape[1])[None, :] < lengths_t[:, None]
    memory, state = model.encode(src, lengths_t)
    prev = torch.full((len(lengths),), target.model_ids[1], dtype=torch.long)
    out = []
    for _ in range(2):
        scores, state, _ = model.step(prev, state, memory, mask)
        log_probs = torch.log_softmax(scores.double(), dim=-1)
        out.append(log_probs)
        prev = log_probs.argmax(dim=-1)
    return out


def _call(method, name: str, *args):
    try:
        return method(*args)
    except Exception as exc:
        raise ProtocolError(f"{name}() failed on a batch of {args[0].shape[0]} ({type(exc).__name__}: {_first_line(exc)})"
                            f"{user_line(exc)}") from None


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


def _shapes(state) -> str:
    if not isinstance(state, (Tensor, tuple, list)):
        return _describe(state)
    return "[" + ", ".join(f"{str(leaf.dtype).removeprefix('torch.')} {tuple(leaf.shape)}" for leaf in _leaves(state)) + "]"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


# ---- where in the user's code an error comes from


_TORCH = str(Path(torch.__file__).parent)
_OURS = tuple(str(Path(__file__).resolve().parents[1] / part) for part in ("export", "runtime", "train"))


def user_line(exc: BaseException) -> str:
    """", at FILE:LINE: CODE" for the innermost frame of `exc` outside torch and seq2edge, or ""."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith((_TORCH, *_OURS))
              and not f.filename.startswith("<")]
    if not frames:
        return ""
    f = frames[-1]
    return f", at {f.filename}:{f.lineno}: {(f.line or linecache.getline(f.filename, f.lineno)).strip()}"


_UNSUPPORTED = re.compile(r"operator '([\w:.]+)'")


def failing_line(exporter_text: str, exc: BaseException) -> str:
    """Where the operator an export error names comes from in the user's code: the exporter's dump of
    the traced graph ends each node with "# FILE:LINE:COLUMN"; else the innermost user frame."""
    found = _UNSUPPORTED.search(str(exc))
    if found:
        for line in exporter_text.splitlines():
            place = re.search(r"# (\S+\.py):(\d+):\d+", line)
            if f"{found.group(1)}(" in line and place and not place.group(1).startswith((_TORCH, *_OURS)):
                code = linecache.getline(place.group(1), int(place.group(2))).strip()
                return f", at {place.group(1)}:{place.group(2)}: {code}"
    return user_line(exc)


@dataclass
class _Captured:
    text: str = ""


@contextlib.contextmanager
def exporter_output():
    """Everything written to the process's stdout and stderr (file descriptors 1 and 2, where torch's C++
    code writes) inside the block, kept from the terminal and handed back as `.text`."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


def origin_of(model: nn.Module) -> str:
    """What made the model, for bundle.json: "pytorch: module.Class"."""
    cls = type(model)
    return f"pytorch: {cls.__module__}.{cls.__qualname__}"
