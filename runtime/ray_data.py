"""Decoding a dataset with Ray Data, on one machine or a cluster (pip install 'seq2edge[ray]').

    python -m seq2edge.runtime.ray_data BUNDLE INPUT OUTPUT_DIR [--format json|parquet] [--concurrency N]

INPUT is a text file (or folder, or s3://... path Ray can read) of one input per line; OUTPUT_DIR
receives Ray's JSON-lines (or Parquet) files with `text`, `output`, `score` and `error` columns, in
input order. The bundle's files travel through Ray's object store, so workers on other machines need
no copy of it; each actor loads it once (checking every sha256) with one onnxruntime thread. With
RAY_ADDRESS set (or --address), the same command runs on that cluster; otherwise Ray starts locally.

From Python:

    import ray
    from seq2edge.runtime.ray_data import decode_dataset
    ds = ray.data.read_text("words.txt")
    decode_dataset(ds, "models/g2p-en", concurrency=2).write_json("out/")
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import load_bundle
from .interface import BUNDLE_FILE
from .model import Seq2Seq
from .options import SearchOptions


def pack_bundle(path: str | Path) -> dict[str, bytes]:
    """bundle.json and every file it lists (graphs of every precision and format, tokeniser models)."""
    bundle = load_bundle(path)
    names = {BUNDLE_FILE}
    for graphs in bundle.meta.graphs.values():
        for entry in graphs.values():
            names.add(entry.file)
            if entry.ort is not None:
                names.add(entry.ort.file)
    names.update(side.spm_model for side in (bundle.meta.source, bundle.meta.target) if side.spm_model)
    return {name: (bundle.path / name).read_bytes() for name in sorted(names) if (bundle.path / name).exists()}


class Decoder:
    """A Ray Data map_batches callable: unpacks the bundle once per actor and decodes a column."""

    def __init__(self, files, column: str = "text", options: dict[str, Any] | None = None,
                 load: dict[str, Any] | None = None, position_column: str | None = None):
        if not isinstance(files, dict):  # the object-store reference decode_dataset passes
            import ray

            files = ray.get(files)
        self.directory = Path(tempfile.mkdtemp(prefix="seq2edge-bundle."))
        for name, data in files.items():
            (self.directory / name).write_bytes(data)
        self.model = Seq2Seq.load(self.directory, **{"providers": "cpu", "threads": 1, **(load or {})})
        self.options = SearchOptions(**{**(options or {}), "errors": "return"})
        self.column = column
        self.position_column = position_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        positions = None if self.position_column is None else [int(p) for p in batch[self.position_column]]
        results = self.model.decode([str(text) for text in batch[self.column]], self.options, positions=positions)
        batch["output"] = np.array([r.text if r.ok else None for r in results], dtype=object)
        batch["score"] = np.array([round(r.score, 6) if r.ok else np.nan for r in results], dtype=np.float64)
        batch["error"] = np.array([r.error for r in results], dtype=object)
        return batch

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "directory", ""), ignore_errors=True)


def decode_dataset(dataset, bundle: str | Path, column: str = "text", concurrency: int = 2, batch_size: int = 4096,
                   options: dict[str, Any] | None = None, load: dict[str, Any] | None = None, num_cpus: float = 1.0,
                   position_column: str | None = None):
    """`dataset` with `output`, `score` and `error` columns added by `concurrency` decoding actors.

    batch_size is the rows per call (sorted by length inside, like `seq2edge decode`'s 4,096-line
    chunks); options are SearchOptions fields, load Seq2Seq.load keywords (precision, unknown, ...).
    Sampling draws follow a row's place in its batch, so they change where Ray cuts the batches
    otherwise; position_column names a column of non-negative integers (a row id, a line number)
    for them to follow instead.
    num_cpus is what each actor reserves: leave the reading tasks a CPU (on one 2-core machine, 2
    actors of 0.5), or Ray waits for a CPU that the actors hold."""
    import ray

    files = ray.put(pack_bundle(bundle))
    kwargs = {"column": column, "options": options, "load": load, "position_column": position_column}
    return dataset.map_batches(Decoder, fn_constructor_args=(files,), fn_constructor_kwargs=kwargs, batch_size=batch_size,
                               concurrency=concurrency, batch_format="numpy", num_cpus=num_cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Decode a text dataset with Ray Data.")
    parser.add_argument("bundle")
    parser.add_argument("input", help="text file(s) with one input per line, anything ray.data.read_text reads")
    parser.add_argument("output", help="folder for the results")
    parser.add_argument("--format", choices=("json", "parquet"), default="json")
    parser.add_argument("--concurrency", type=int, default=2, help="decoding actors")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves (below 1 on a small machine)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--unknown", default="error")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="a Ray cluster (default: $RAY_ADDRESS, else local)")
    args = parser.parse_args(argv)
    import ray

    ray.init(address=args.address, log_to_driver=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    dataset = decode_dataset(ray.data.read_text(args.input), args.bundle, concurrency=args.concurrency,
                             batch_size=args.batch_size, load={"precision": args.precision, "unknown": args.unknown},
                             num_cpus=args.cpus_per_actor)
    getattr(dataset, f"write_{args.format}")(args.output)


if __name__ == "__main__":
    main()
