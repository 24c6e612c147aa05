"""Sequence-level distillation from the CLI: the teacher's beam outputs become the targets, cached."""

import json
import shutil
import subprocess

from conftest import SEQ2EDGE

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C
from seq2edge.train import data as D
from seq2edge.train.config import TrainConfig

ARGS = ["--corpus", "cmudict", "--limit", "150", "--dev-limit", "20", "--embed", "8", "--hidden", "16", "--epochs", "1",
        "--batch-size", "32", "--max-src-len", "32", "--max-tgt-len", "24"]


def test_a_student_learns_the_teachers_beam_outputs_and_a_resume_needs_no_teacher(tiny_bundle, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bundle, teacher)
    entries = C.load_cmudict().entries
    train_words = [e.source for e in C.split(entries, "train") if e.source.isalpha()][1000:1010]
    test_words = [e.source for e in C.split(entries, "test")][:5]
    extra = tmp_path / "extra.txt"
    extra.write_text("\ufeff" + "\n".join(train_words + test_words) + "\n")
    out = tmp_path / "student"
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(out), "--teacher", str(teacher), "--kd", "seq", "--kd-beam", "3",
                           "--extra-inputs", str(extra), *ARGS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (cache,) = (out / "teacher").glob("seq-*-beam3.jsonl")
    labels = {r["source"]: r["output"] for r in map(json.loads, cache.read_text().splitlines())}
    assert set(train_words) <= set(labels) and not set(test_words) & set(labels)  # extra inputs of the test part stay out
    model = Seq2Seq.load(teacher, providers="cpu", unknown="unk", too_long="truncate")
    assert [labels[w] for w in train_words] == [r.text for r in model.decode(train_words, beam_size=3)]
    tc = TrainConfig(**json.loads((out / "train.json").read_text())["train_config"])
    _, distilled, _ = D.split_corpus(tc, out, log=lambda m: None)
    assert all(e.references == (labels[e.source],) for e in distilled)
    assert {e.source for e in distilled} >= set(train_words)
    shutil.rmtree(teacher)  # a resumed run reads its labels from the cache
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(out), "--resume", "--epochs", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads((out / "train.json").read_text())["history"]) == 2


def test_references_can_be_kept_beside_the_teachers_outputs(tiny_bundle, tmp_path):
    tc = TrainConfig(corpus="cmudict", train_limit=40, dev_limit=5, teacher=str(tiny_bundle), kd="seq",
                     kd_mix_references=True)
    corpus, plain, _ = D.split_corpus(TrainConfig(corpus="cmudict", train_limit=40, dev_limit=5))
    _, mixed, _ = D.split_corpus(tc, tmp_path, log=lambda m: None)
    for before, after in zip(plain, mixed):
        assert set(before.references) <= set(after.references) and len(after.references) >= 1


def test_a_checkpoint_as_teacher_says_to_export_it(tiny_checkpoint, tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tmp_path / "s"), "--teacher", str(tiny_checkpoint), "--kd", "seq",
                           *ARGS], capture_output=True, text=True)
    assert proc.returncode == 2 and "needs a teacher bundle" in proc.stderr and "export it first" in proc.stderr
