"""Checkpoints: safetensors weights plus JSON, never pickle.

CHECKPOINT_DIR/
  config.json         ModelConfig (copied verbatim into every bundle)
  vocab.json          both sides' tokeniser kind and vocabulary
  source.spm.model    SentencePiece models, when a side uses spm
  model.safetensors   the best-on-dev weights (what export and eval use)
  train.json          TrainConfig and per-epoch history
  last/               resume point: model, optimizer and RNG state after the last finished epoch
  epochs/             every epoch's weights, epoch-N.safetensors (train --keep-epochs; for `seq2edge average`)
  curves.png          training and dev curves
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2edge.runtime.config import ModelConfig
from seq2edge.runtime.errors import BundleError
from seq2edge.runtime.tokenize import TextCodec, codec_pair
from seq2edge.runtime.util import atomic_path, write_json_atomic

from .model import Seq2SeqModule

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")


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
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def epoch_weights(directory: Path, epoch: int) -> Path:
    """Where train --keep-epochs keeps the weights at the end of `epoch` (1-based)."""
    return directory / "epochs" / f"epoch-{epoch:03d}.safetensors"


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


def save_model_files(directory: Path, model: Seq2SeqModule, source: TextCodec, target: TextCodec) -> None:
    """config.json and vocab.json: what, together with weights, makes a model."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", model.config.to_dict())
    write_json_atomic(directory / "vocab.json", {
        "source": {"tokenizer": source.kind, "tokens": source.vocab.tokens},
        "target": {"tokenizer": target.kind, "tokens": target.vocab.tokens},
    })


def load_codecs(directory: Path, config: ModelConfig) -> tuple[TextCodec, TextCodec]:
    vocab = read_json(directory / "vocab.json")
    try:
        tokens = [vocab[side]["tokens"] for side in ("source", "target")]
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{directory / 'vocab.json'}: missing field {exc}") from None
    try:
        return codec_pair(config, *tokens, spm_paths=[directory / f"{side}.spm.model" for side in ("source", "target")])
    except BundleError as exc:
        raise BundleError(f"{directory / 'vocab.json'}: {exc}") from None


def load_checkpoint(directory: str | Path, weights: str = "model.safetensors") -> tuple[Seq2SeqModule, TextCodec, TextCodec]:
    """The model (in eval mode) and both codecs of a checkpoint directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such checkpoint directory")
    if not (directory / "config.json").exists() and (directory / "bundle.json").exists():
        raise BundleError(f"{directory}: is already an exported bundle, not a checkpoint; export takes the checkpoint "
                          "directory that `seq2edge train --out` wrote")
    config = ModelConfig.from_dict(read_json(directory / "config.json"), where=str(directory / "config.json"))
    source, target = load_codecs(directory, config)
    model = Seq2SeqModule(config)
    state = load_tensors(directory / weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{directory / weights}: weights do not fit config.json: {str(exc).splitlines()[0]}") from None
    return model.eval(), source, target


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        entry = {}
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value
            else:
                entry[key] = value
        scalars["state"][str(pid)] = entry
    return tensors, scalars


def optimizer_from_tensors(optimizer, tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state = {}
    for pid, entry in scalars["state"].items():
        st = dict(entry)
        for name, value in tensors.items():
            owner, _, key = name.partition(".")
            if owner == pid:
                st[key] = value
        state[int(pid)] = st
    return {"state": state, "param_groups": scalars["param_groups"]}
