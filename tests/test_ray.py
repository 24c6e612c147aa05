"""The Ray Data recipe decodes a dataset on a local Ray exactly as `seq2edge decode` does."""

import json
import subprocess

import pytest
from conftest import SEQ2EDGE

from seq2edge.train import corpus as C

pytestmark = pytest.mark.requires("ray")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def ray_and_cli(ray, bundle, words: list[str], tmp_path, batch_size: int) -> tuple[list[dict], list[dict]]:
    """The rows Ray Data's recipe writes for `words` (two actors) and the CLI's jsonl records of the same file."""
    from seq2edge.runtime.ray_data import decode_dataset

    path = tmp_path / "words.txt"
    path.write_text("\n".join(words) + "\n")
    ds = decode_dataset(ray.data.read_text(str(path)), bundle, concurrency=2, batch_size=batch_size, num_cpus=0.5)
    ds.write_json(str(tmp_path / "out"))
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.json")) for line in f.read_text().splitlines()]
    cli = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--input", str(path), "--format", "jsonl"],
                         capture_output=True, text=True, check=True)
    return rows, [json.loads(line) for line in cli.stdout.splitlines()]


def test_ray_data_output_equals_seq2edge_decode_on_10000_lines(local_ray, tiny_bundle, tmp_path):
    words = [e.source for e in C.load_cmudict().entries if e.source.isalpha()][:10_000]
    rows, expected = ray_and_cli(local_ray, tiny_bundle, words, tmp_path, 4096)
    assert len(rows) == len(expected) == 10_000
    assert [(r["text"], r["output"]) for r in rows] == [(e["input"], e["output"]) for e in expected]
    # Ray cuts its own batches: a score may differ in the last float32 digit, never a token
    assert max(abs(r["score"] - e["score"]) for r, e in zip(rows, expected)) < 1e-4


def test_sampling_follows_a_position_column_whatever_the_batches(tiny_bundle):
    """The actor class on batches cut two ways: with a position column, each row samples what one
    decode() call over all rows samples; without one, draws follow the place in the batch."""
    import numpy as np

    from seq2edge.runtime import Seq2Seq
    from seq2edge.runtime.ray_data import Decoder, pack_bundle

    words = [e.source for e in C.load_cmudict().entries if e.source.isalpha()][:24]
    whole = [r.text for r in Seq2Seq.load(tiny_bundle, providers="cpu").decode(words, sample=True, seed=9, temperature=2)]
    options = {"sample": True, "seed": 9, "temperature": 2.0}
    with_ids = Decoder(pack_bundle(tiny_bundle), options=options, position_column="id")
    without = Decoder(pack_bundle(tiny_bundle), options=options)

    def batched(decoder, size):
        return [out for start in range(0, len(words), size) for out in decoder(
            {"text": np.array(words[start:start + size], dtype=object), "id": np.arange(start, min(start + size, 24))})["output"]]

    assert batched(with_ids, 5) == batched(with_ids, 24) == whole
    assert batched(without, 5) != whole


def test_ray_data_decodes_a_transformer_bundle_as_seq2edge_decode_does(local_ray, transformer_bundle, tmp_path):
    """A decoder state that grows (bundle format 3) through Ray's actors as through the CLI."""
    *_, words, bundle = transformer_bundle
    rows, expected = ray_and_cli(local_ray, bundle, words, tmp_path, 64)
    assert [(r["text"], r["output"]) for r in rows] == [(e["input"], e["output"]) for e in expected]
