"""`seq2edge average`: one checkpoint whose weights are the mean of several of the same model.

Averaging the weights of the last epochs of a run (train --keep-epochs), or of a run continued at a
constant learning rate, is the cheapest ensemble there is: one model's size and speed, often a
better dev WER than any epoch alone. Every source must have the same config.json and vocabularies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seq2edge.runtime.errors import BundleError, Seq2EdgeError
from seq2edge.runtime.util import atomic_directory, refuse_overlap, write_json_atomic

from .checkpoint import load_tensors, read_json, save_tensors, tensors_metadata

MODEL_FILES = ("config.json", "vocab.json")  # what makes two checkpoints the same model (with *.spm.model)


def weights_and_checkpoint(source: Path) -> tuple[Path, Path]:
    """(weights file, checkpoint directory) of a source: a checkpoint directory (its best weights) or
    a .safetensors file in one or in its epochs/ folder."""
    if source.is_dir():
        return source / "model.safetensors", source
    if source.suffix != ".safetensors" or not source.exists():
        raise BundleError(f"{source}: neither a checkpoint directory nor a .safetensors weights file")
    for directory in (source.parent, source.parent.parent):
        if (directory / "config.json").exists():
            return source, directory
    raise BundleError(f"{source}: no config.json beside it or in its parent folder, so no model to read it as")


def average_checkpoints(sources: list[Path], out: Path, force: bool = False) -> dict:
    """Write checkpoint `out` holding the mean of the sources' weights (summed in float64), the first
    source's config, vocabularies and train.json (with `averaged_from` added), complete or not at all.
    Returns what was averaged."""
    if len(sources) < 2:
        raise Seq2EdgeError("average needs at least two checkpoints or weights files")
    refuse_overlap(out, [("source", source) for source in sources], option="--out")
    if out.exists() and not force:
        raise Seq2EdgeError(f"{out}: exists; use --force to replace it")
    pairs = [weights_and_checkpoint(Path(s)) for s in sources]
    first = pairs[0][1]
    model = {name: read_json(first / name) for name in MODEL_FILES}
    for weights, checkpoint in pairs[1:]:
        for name in MODEL_FILES:
            if read_json(checkpoint / name) != model[name]:
                raise Seq2EdgeError(f"{weights}: its {name} differs from {first / name}: only one model's weights average")
    reference = load_tensors(pairs[0][0])
    total = {name: value.double() for name, value in reference.items()}
    for weights, _ in pairs[1:]:
        tensors = load_tensors(weights)
        if set(tensors) != set(total):
            raise Seq2EdgeError(f"{weights}: holds other tensors than {pairs[0][0]}")
        for name, value in tensors.items():
            if value.shape != total[name].shape:
                raise Seq2EdgeError(f"{weights}: {name} is {tuple(value.shape)}, not {tuple(total[name].shape)}")
            total[name] += value.double()
    mean = {name: (value / len(pairs)).to(reference[name].dtype) for name, value in total.items()}
    averaged_from = [{"weights": str(w.resolve()), **{k: v for k, v in tensors_metadata(w).items() if k in ("epoch", "dev_wer")}}
                     for w, _ in pairs]
    with atomic_directory(out) as tmp:
        for name in MODEL_FILES:
            shutil.copyfile(first / name, tmp / name)
        for spm in first.glob("*.spm.model"):
            shutil.copyfile(spm, tmp / spm.name)
        save_tensors(tmp / "model.safetensors", mean, {"averaged_from": json.dumps(averaged_from)})
        train = read_json(first / "train.json") if (first / "train.json").exists() else {}
        train.update(averaged_from=averaged_from, best_dev_wer=None)  # not measured here: `seq2edge eval OUT --split dev`
        write_json_atomic(tmp / "train.json", train)
    return {"out": str(out), "averaged_from": averaged_from}
