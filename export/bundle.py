"""Checkpoint -> bundle: graphs, bundle.json, parity check, atomic placement.

The bundle is built in a temporary directory beside its destination and renamed
into place only after the parity check passed, so a bundle is complete or absent.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime
import torch

from seq2edge.runtime.errors import BundleError, Seq2EdgeError
from seq2edge.runtime.interface import BUNDLE_FILE, FORMAT_VERSION
from seq2edge.runtime.model import Seq2Seq as Runtime
from seq2edge.train import data as D
from seq2edge.train.checkpoint import load_checkpoint, read_json, write_json

from .onnx import export_graphs, graph_metadata
from .verify import LOG_PROB_TOLERANCE, check_parity


class ExportError(Seq2EdgeError):
    """Export produced graphs that do not match PyTorch; no bundle was written."""


def export_bundle(checkpoint: str | Path, out: str | Path, force: bool = False, int8: bool = False, fp16: bool = False,
                  exporter: str = "torchscript", corpus: str | None = None, parity_words: int = 500,
                  log: Callable[[str], None] = print) -> Path:
    """Export `checkpoint` to the bundle directory `out`, verify it, and return its path."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not force:
        raise Seq2EdgeError(f"{out}: already exists; pass --force to replace it")
    model, source, target = load_checkpoint(checkpoint)
    entries = parity_entries(checkpoint, corpus, parity_words)
    texts = [e.source for e in entries]
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        bundle_id = uuid.uuid4().hex
        paths = export_graphs(model, tmp, graph_metadata(bundle_id, model.config.to_dict(), "fp32"), exporter)
        meta = _bundle_meta(bundle_id, model, checkpoint, tmp, source, target, paths, exporter)
        write_json(tmp / BUNDLE_FILE, meta)
        runtime = _verify(tmp, exporter)
        meta["parity"]["fp32"] = check_parity_or_fail(model, runtime, texts, log)
        if int8 or fp16:
            from .quantize import add_precisions

            add_precisions(tmp, meta, runtime, entries, int8=int8, fp16=fp16, log=log)
        write_json(tmp / BUNDLE_FILE, meta)
        _place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _bundle_meta(bundle_id, model, checkpoint: Path, tmp: Path, source, target, paths: dict, exporter: str) -> dict:
    c = model.config
    return {
        "format_version": FORMAT_VERSION,
        "bundle_id": bundle_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": c.to_dict(),
        "source": _side(checkpoint, tmp, "source", source),
        "target": _side(checkpoint, tmp, "target", target),
        "special_ids": {"pad": c.pad_id, "bos": c.bos_id, "eos": c.eos_id, "unk": c.unk_id},
        "graphs": {"fp32": {kind: graph_entry(p) for kind, p in paths.items()}},
        "parity": {},
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                          "exporter": exporter},
        "checkpoint": {"path": str(checkpoint), "train": _train_summary(checkpoint)},
    }


def _verify(tmp: Path, exporter: str) -> Runtime:
    """Load the new bundle through the runtime's own checks (contract, metadata, sha256)."""
    try:
        return Runtime.load(tmp, providers="cpu", unknown="unk")
    except BundleError as exc:
        hint = (" The dynamo exporter is known to fix RNN sequence axes to the traced length; use --exporter torchscript."
                if exporter == "dynamo" else "")
        raise ExportError(f"the exported graphs break the bundle contract: {exc}.{hint} No bundle was written.") from None


def check_parity_or_fail(model, runtime: Runtime, texts: list[str], log) -> dict:
    """The parity figures, or ExportError when the graphs do not match PyTorch."""
    parity = check_parity(model, runtime, texts)
    log(f"parity fp32: {parity.words} words, {parity.steps} decoder steps, token agreement "
        f"{100 * parity.token_agreement:.2f}%, max |log-prob diff| {parity.max_abs_log_prob_diff:.2e}")
    if not parity.passed:
        detail = "; ".join(parity.disagreements[:3])
        raise ExportError(f"exported graphs do not match PyTorch: token agreement {100 * parity.token_agreement:.2f}% "
                          f"(need 100%), max |log-prob diff| {parity.max_abs_log_prob_diff:.2e} (need <= "
                          f"{LOG_PROB_TOLERANCE:.0e}){'; ' + detail if detail else ''}. No bundle was written.")
    return parity.to_dict()


def parity_entries(checkpoint: Path, corpus: str | None, count: int) -> list[D.Entry]:
    """`count` entries for the parity check: dev first, then test and train if the dev part is small."""
    name = corpus or read_json(checkpoint / "train.json")["train_config"]["corpus"]
    if name != "cmudict" and not Path(name).exists():
        raise Seq2EdgeError(f"the parity check needs the training corpus, {name}, which is not here; pass --corpus PATH")
    entries = D.load_corpus(name).entries
    chosen: list[D.Entry] = []
    for part in ("dev", "test", "train"):
        chosen += D.split(entries, part)[: count - len(chosen)]
        if len(chosen) >= count:
            break
    return chosen


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_entry(path: Path) -> dict:
    return {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}


def _side(checkpoint: Path, tmp: Path, side: str, codec) -> dict:
    info = {"tokenizer": codec.kind, "lowercase": codec.lowercase, "vocab": codec.vocab.tokens}
    if codec.kind == "spm":
        name = f"{side}.spm.model"
        shutil.copyfile(checkpoint / name, tmp / name)
        info.update(spm_model=name, spm_sha256=sha256_of(tmp / name))
    return info


def _train_summary(checkpoint: Path) -> dict:
    try:
        train = json.loads((checkpoint / "train.json").read_text())
    except (OSError, ValueError):
        return {}
    history = train.get("history") or []
    return {"corpus": train["train_config"].get("corpus"), "epochs": len(history),
            "best_dev_wer": train.get("best_dev_wer"), "minutes": history[-1]["minutes"] if history else None}


def _remove_stale_partials(out: Path) -> None:
    """Remove half-written bundles left by exports of `out` that were killed (their process is gone)."""
    for partial in out.parent.glob(f".{out.name}.*.partial"):
        try:
            pid = int(partial.name[len(out.name) + 2 :].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def _place(tmp: Path, out: Path) -> None:
    """Rename the finished bundle into place; an old bundle (with --force) is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out, old)
    os.replace(tmp, out)
    os.chmod(out, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
