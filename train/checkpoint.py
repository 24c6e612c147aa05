"""Checkpoints: safetensors weights plus JSON, never pickle.

CHECKPOINT_DIR/
  config.json         ModelConfig (copied verbatim into every bundle)
  vocab.json          both sides' tokeniser kind and vocabulary
  source.spm.model    SentencePiece models, when a side uses spm
  model.safetensors   the best-on-dev weights (what export and eval use)
  train.json          TrainConfig and per-epoch history
  last/               resume point: model, optimizer and RNG state after the last finished epoch
  curves.png          training and dev curves
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2edge.runtime.config import ModelConfig
from seq2edge.runtime.errors import BundleError
from seq2edge.runtime.tokenize import TextCodec, Vocabulary

from .model import Seq2Seq

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; nothing else is ever deserialised."""
    if not path.exists():
        pickles = sorted(p.name for p in path.parent.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickle checkpoints are refused, they can run code)" if pickles else ""
        raise BundleError(f"{path}: missing{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path}: not a readable safetensors file ({exc})") from None


def tensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def save_model_files(directory: Path, model: Seq2Seq, source: TextCodec, target: TextCodec) -> None:
    """config.json and vocab.json: what, together with weights, makes a model."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", model.config.to_dict())
    write_json(directory / "vocab.json", {
        "source": {"tokenizer": source.kind, "tokens": source.vocab.tokens},
        "target": {"tokenizer": target.kind, "tokens": target.vocab.tokens},
    })


def load_codecs(directory: Path, config: ModelConfig) -> tuple[TextCodec, TextCodec]:
    vocab = read_json(directory / "vocab.json")
    try:
        codecs = []
        for side, kind, lower in (("source", config.src_tokens, config.lowercase_source), ("target", config.tgt_tokens, False)):
            spm = directory / f"{side}.spm.model" if kind == "spm" else None
            codecs.append(TextCodec(kind, Vocabulary(vocab[side]["tokens"]), lower, spm))
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{directory / 'vocab.json'}: missing field {exc}") from None
    return codecs[0], codecs[1]


def load_checkpoint(directory: str | Path, weights: str = "model.safetensors") -> tuple[Seq2Seq, TextCodec, TextCodec]:
    """The model (in eval mode) and both codecs of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such checkpoint directory")
    config = ModelConfig.from_dict(read_json(directory / "config.json"), where=str(directory / "config.json"))
    source, target = load_codecs(directory, config)
    model = Seq2Seq(config)
    state = load_tensors(directory / weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{directory / weights}: weights do not fit config.json: {str(exc).splitlines()[0]}") from None
    return model.eval(), source, target
