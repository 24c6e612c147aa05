"""Importers: a trained model of another toolkit -> a protocol module and what export_model needs.

Each reads the toolkit's own files (checkpoints as data: their pickle is interpreted, never run;
torch_zip.py), rebuilds the model's equations in a module with encode() and step() (export/protocol.py), and
says which decoding conventions the toolkit follows. `seq2edge export --from TOOLKIT SOURCE OUT`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from seq2edge.runtime.conventions import Conventions
from seq2edge.runtime.errors import Seq2EdgeError


class ImportRefused(Seq2EdgeError):
    """The toolkit's model uses something the importer does not rebuild (named in the message)."""


@dataclass(kw_only=True)
class Imported:
    """A toolkit's model, ready for export_model."""

    model: nn.Module
    source_vocab: list[str]
    target_vocab: list[str]
    specials: dict[str, str]  # pad, bos, eos, unk -> the toolkit's token
    source_tokens: str | Path  # "char", "word" or a SentencePiece model
    target_tokens: str | Path
    lowercase: bool
    conventions: Conventions
    origin: str
    max_tgt_len: int | None = None
    parity_sources: list[str] = field(default_factory=list)  # found beside the model (its dev set), if any


def import_model(toolkit: str, source: str | Path) -> Imported:
    if toolkit == "joeynmt":
        from .joeynmt import load
    elif toolkit == "opennmt":
        from .opennmt import load
    else:
        raise Seq2EdgeError(f"--from {toolkit}: importers exist for joeynmt and opennmt")
    return load(Path(source))


def export_imported(toolkit: str, source: str | Path, out: str | Path, *, parity_sources: Path | None = None,
                    parity_count: int = 500, log=print, **options) -> Path:
    """Import `source` and export it with export_model; parity inputs from `parity_sources` (one per line),
    else the dev set the model's config names. options: export_model's (int8, greedy_graph, ort, force, atol)."""
    from ..external import export_model

    imported = import_model(toolkit, source)
    if parity_sources is not None:
        try:
            lines = parity_sources.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise Seq2EdgeError(f"--parity-sources {parity_sources}: cannot read it as UTF-8 text ({exc})") from None
        texts = [line.strip() for line in lines if line.strip()]
    else:
        texts = imported.parity_sources
        if not texts:
            raise Seq2EdgeError(f"{source}: the dev set its config names is not here; pass --parity-sources FILE "
                                "(inputs like those the model will see, one per line)")
    s = imported.specials
    return export_model(imported.model, out, source_vocab=imported.source_vocab, target_vocab=imported.target_vocab,
                        pad=s["pad"], bos=s["bos"], eos=s["eos"], unk=s["unk"], source_tokens=imported.source_tokens,
                        target_tokens=imported.target_tokens, lowercase=imported.lowercase, parity_sources=texts[:parity_count],
                        max_tgt_len=imported.max_tgt_len, origin=imported.origin, conventions=imported.conventions, log=log,
                        **options)
