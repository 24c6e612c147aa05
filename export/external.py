"""export_model: a bundle from any PyTorch module that follows the encode()/step() protocol.

The same pipeline and gates as `seq2edge export` (export.bundle.write_bundle): the model is
probed (export.protocol.check_protocol), wrapped so that it has seq2edge's interface
(ProtocolModule), traced, and verified against itself in PyTorch before a bundle is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from seq2edge.runtime.config import TOKENIZERS, ExternalModelConfig
from seq2edge.runtime.conventions import Conventions
from seq2edge.runtime.errors import BundleError
from seq2edge.runtime.tokenize import TextCodec, Vocabulary
from seq2edge.runtime.util import refuse_overlap

from .bundle import Side, refuse_existing, write_bundle
from .protocol import ProtocolError, ProtocolModule, VocabMap, check_protocol, map_vocab, origin_of
from .verify import ParityInput

# Length limits when none are given: far above what a recurrent model is trained on, and what the
# runtime refuses (or truncates, --too-long) beyond.
DEFAULT_MAX_LEN = 256


def export_model(model: nn.Module, out: str | Path, *, source_vocab: Sequence[str], target_vocab: Sequence[str],
                 pad: str = "<pad>", bos: str = "<s>", eos: str = "</s>", unk: str = "<unk>",
                 source_tokens: str = "char", target_tokens: str = "word", lowercase: bool = False,
                 parity_sources: Sequence[str], max_src_len: int | None = None, max_tgt_len: int | None = None,
                 int8: bool = False, fp16: bool = False, greedy_graph: bool = False, ort: bool = False,
                 force: bool = False, atol: float | None = None, origin: str | None = None,
                 conventions: Conventions | None = None, accept_int8: bool = False, option_style: str = "python",
                 log: Callable[[str], None] = print) -> Path:
    """Export `model` (encode() and step(), docs/own-model.md) to the bundle directory `out` and return its path.

    The vocabularies are lists whose index is the id, holding the pad, bos, eos and unk tokens.
    source_tokens/target_tokens: "char", "word", or the path of a SentencePiece model.
    parity_sources: texts the exported graphs must decode exactly as the model does in PyTorch
    (greedy tokens on every one, log-probabilities within float32 rounding) or nothing is written.
    origin: what made the model, for bundle.json (default "pytorch: module.Class").
    conventions: decoding rules the model was trained with where they differ from seq2edge's (an appended
    source </s>, a minimum output length, ...; runtime/conventions.py); both hosts follow them."""
    out = Path(out)
    sides = {name: _tokens(given, name) for name, given in (("source", source_tokens), ("target", target_tokens))}
    refuse_overlap(out, [(f"{name} SentencePiece model", spm) for name, (_, spm) in sides.items()])
    refuse_existing(out, force)
    if not isinstance(model, nn.Module):
        raise ProtocolError(f"model must be a torch.nn.Module with encode() and step(), not {type(model).__name__}")
    texts = _parity_sources(parity_sources)
    source = map_vocab(source_vocab, (pad, bos, eos, unk), "source")
    target = map_vocab(target_vocab, (pad, bos, eos, unk), "target")
    training = model.training
    model.eval()
    try:
        probe = check_protocol(model, source, target)
        codecs = {name: _codec(vocab, kind, spm, lowercase and name == "source", name)
                  for (name, (kind, spm)), vocab in zip(sides.items(), (source, target))}
        longest = max(len(codecs["source"].split(t)) for t in texts)
        config = ExternalModelConfig(
            origin=origin or origin_of(model), src_vocab_size=len(source.tokens), tgt_vocab_size=len(target.tokens),
            memory_size=probe.memory_size, state_size=probe.layout.size, attention_weights=probe.attention,
            src_tokens=sides["source"][0], tgt_tokens=sides["target"][0], lowercase_source=lowercase,
            max_src_len=max_src_len or max(DEFAULT_MAX_LEN, longest), max_tgt_len=max_tgt_len or DEFAULT_MAX_LEN)
        wrapped = ProtocolModule(model, config, probe.layout, source.model_ids, target.model_ids)
        provenance = {"origin": config.origin, "special_tokens": {"pad": pad, "bos": bos, "eos": eos, "unk": unk}}
        return write_bundle(wrapped, out, {name: Side(codecs[name], spm) for name, (_, spm) in sides.items()},
                            [ParityInput(t) for t in texts], provenance, int8=int8, fp16=fp16, atol=atol,
                            greedy_graph=greedy_graph, ort=ort, conventions=conventions or Conventions(), accept_int8=accept_int8,
                            chosen_limits=frozenset(name for name, value in (("max_src_len", max_src_len),
                                                                             ("max_tgt_len", max_tgt_len)) if value),
                            option_style=option_style, log=log)
    finally:
        model.train(training)


def _tokens(given: str | Path, side: str) -> tuple[str, Path | None]:
    """("char" | "word" | "spm", the SentencePiece model or None) of a source_tokens/target_tokens value."""
    if isinstance(given, str) and given in TOKENIZERS and given != "spm":
        return given, None
    path = Path(given)
    if not path.is_file():
        raise ProtocolError(f"{side}_tokens must be \"char\", \"word\" or the path of a SentencePiece model; {given!r} is none")
    return "spm", path


def _codec(vocab: VocabMap, kind: str, spm: Path | None, lowercase: bool, side: str) -> TextCodec:
    try:
        return TextCodec(kind, Vocabulary(vocab.tokens), lowercase, spm)
    except BundleError as exc:
        raise ProtocolError(f"{side}: {exc}") from None


def _parity_sources(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ProtocolError("parity_sources must be a list of texts")
    kept = [t for t in texts if t.strip()]
    if not kept:
        raise ProtocolError("parity_sources holds no text: the parity gate needs inputs to compare the graphs with the model on")
    return kept
