"""Sequence-level distillation from the CLI: the teacher's beam outputs become the targets, cached."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import SEQ2EDGE

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C
from seq2edge.train import data as D
from seq2edge.train.config import TrainConfig

ARGS = ["--corpus", "cmudict", "--limit", "150", "--dev-limit", "20", "--embed", "8", "--hidden", "16", "--epochs", "1",
        "--batch-size", "32", "--max-src-len", "32", "--max-tgt-len", "24"]


@pytest.mark.slow  # several training runs (kept out of make test's 10 minutes; .ci/run runs it)
def test_a_student_learns_the_teachers_beam_outputs_and_a_resume_needs_no_teacher(tiny_bundle, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bundle, teacher)
    entries = C.load_cmudict().entries
    train_words = [e.source for e in C.split(entries, "train") if e.source.isalpha()][1000:1010]
    test_words = [e.source for e in C.split(entries, "test")][:5]
    # a dev word in capitals: the hash puts it in the training part, but a lowercasing model would see the dev word
    dev_word = next(e.source.upper() for e in C.split(entries, "dev") if C.split_of(e.source.upper()) == "train")
    extra = tmp_path / "extra.txt"
    extra.write_text("\ufeff" + "\n".join(train_words + test_words + [dev_word]) + "\n")
    out = tmp_path / "student"
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(out), "--teacher", str(teacher), "--kd", "seq", "--kd-beam", "3",
                           "--extra-inputs", str(extra), *ARGS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (cache,) = (out / "teacher").glob("seq-*-beam3.jsonl")
    labels = {r["source"]: r["output"] for r in map(json.loads, cache.read_text().splitlines())}
    assert set(train_words) <= set(labels) and not set(test_words + [dev_word]) & set(labels)  # dev and test inputs stay out
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


def test_references_can_be_kept_beside_the_teachers_outputs_on_a_tsv_corpus(tiny_bundle, tmp_path):
    corpus = tmp_path / "pairs.tsv"
    pairs = [e for e in C.load_cmudict().entries if e.source.isalpha()][:300]
    corpus.write_text("".join(f"{e.source}\t{e.references[0]}\n" for e in pairs))
    plain_tc = TrainConfig(corpus=str(corpus), train_limit=40, dev_limit=5)
    tc = TrainConfig(corpus=str(corpus), train_limit=40, dev_limit=5, teacher=str(tiny_bundle), kd="seq", kd_mix_references=True)
    _, plain, _ = D.split_corpus(plain_tc)
    _, mixed, _ = D.split_corpus(tc, tmp_path, log=lambda m: None)
    labels = dict(zip([e.source for e in plain], [r.text for r in Seq2Seq.load(tiny_bundle, providers="cpu", unknown="unk")
                                                  .decode([e.source for e in plain], beam_size=5)]))
    for before, after in zip(plain, mixed, strict=True):
        assert after.references[0] == labels[before.source] and set(before.references) <= set(after.references)


def test_a_checkpoint_as_teacher_says_to_export_it(tiny_checkpoint, tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tmp_path / "s"), "--teacher", str(tiny_checkpoint), "--kd", "seq",
                           *ARGS], capture_output=True, text=True)
    assert proc.returncode == 2 and "distillation needs a teacher bundle" in proc.stderr and "export it first" in proc.stderr


def test_token_level_distillation_matches_the_teachers_distributions_and_caches_them(tiny_bundle, tmp_path):
    import numpy as np

    from seq2edge.train.distill import token_targets
    from seq2edge.train.loop import Trainer

    tc = TrainConfig(corpus="cmudict", train_limit=60, dev_limit=10, epochs=1, batch_size=16, teacher=str(tiny_bundle),
                     kd="token", kd_alpha=0.7, kd_top_k=4, save_every_minutes=60)
    trainer = Trainer(tc, {"embed": 8, "hidden": 16, "max_src_len": 32, "max_tgt_len": 24}, tmp_path / "s", log=lambda m: None)
    data, targets = trainer.prepared, trainer.teacher
    assert targets.offsets[-1] == sum(len(t) + 1 for t in data.train.tgt) and targets.ids.shape[1] == 4
    # pair 0, step 0: the teacher's 4 best first tokens after <s>, as the runtime computes them
    teacher = Seq2Seq.load(tiny_bundle, providers="cpu", unknown="unk")
    tokens = [data.source.vocab.tokens[i] for i in data.train.src[0]]
    encoded = teacher.backend.encode(np.array([[teacher.bundle.source.vocab.index.get(t, 3) for t in tokens]]),
                                     np.array([len(tokens)]))
    step = teacher.backend.step(np.array([teacher.config.bos_id]), encoded.state, encoded.memory, encoded.mask)
    best = np.argsort(-step.raw_log_probs[0], kind="stable")[:4]
    expected = [data.target.vocab.index.get(teacher.bundle.target.vocab.tokens[i], -1) for i in best]
    assert targets.ids[0].tolist() == expected
    np.testing.assert_allclose(targets.probs[0], np.exp(step.raw_log_probs[0][best]), rtol=1e-5)
    (cache,) = (tmp_path / "s" / "teacher").glob("token-*-k4-*.safetensors")
    written = cache.stat().st_mtime_ns
    assert_teacher_shapes_the_loss(trainer, tc, tmp_path)
    said = []
    again = token_targets(tc, data.train.src, data.train.tgt, data.source, data.target, tmp_path / "s", log=said.append)
    assert np.array_equal(again.ids, targets.ids) and cache.stat().st_mtime_ns == written and not said  # from the cache


def test_token_kd_loss_is_cross_entropy_against_the_renormalised_teacher():
    import torch

    from seq2edge.train.loop import token_kd_loss

    log_probs = torch.log_softmax(torch.tensor([[[1.0, 2.0, 0.5, -1.0]]]), dim=-1)
    ids = torch.tensor([[[1, 2, -1]]])  # the teacher's third token is not in the student's vocabulary
    probs = torch.tensor([[[0.6, 0.2, 0.2]]])
    expected = -(0.75 * log_probs[0, 0, 1] + 0.25 * log_probs[0, 0, 2])
    assert token_kd_loss(log_probs, ids, probs, torch.tensor([[5]]), pad=0).item() == pytest.approx(expected.item())


def test_seq_and_token_distillation_together_match_the_teacher_on_its_own_outputs(tiny_bundle, tmp_path):
    """--kd seq+token: the targets are the teacher's beam outputs, and the per-step distributions
    are the teacher's along those outputs (not along the references)."""
    from seq2edge.train.loop import Trainer

    tc = TrainConfig(corpus="cmudict", train_limit=40, dev_limit=5, epochs=1, batch_size=16, teacher=str(tiny_bundle),
                     kd="seq+token", kd_beam=2, kd_top_k=3, save_every_minutes=60)
    trainer = Trainer(tc, {"embed": 8, "hidden": 16, "max_src_len": 32, "max_tgt_len": 24}, tmp_path / "s", log=lambda m: None)
    data, targets = trainer.prepared, trainer.teacher
    sources = ["".join(data.source.vocab.tokens[i] for i in s) for s in data.train.src]
    teacher = Seq2Seq.load(tiny_bundle, providers="cpu", unknown="unk")
    labels = [r.text for r in teacher.decode(sources, beam_size=2)]
    trained_on = [" ".join(data.target.vocab.tokens[i] for i in t) for t in data.train.tgt]
    references = {e.source: e.references for e in C.split(C.load_cmudict().entries, "train")}
    assert trained_on == labels and any(label not in references[s] for s, label in zip(sources, labels))
    assert targets.offsets.tolist() == [0, *np.cumsum([len(t) + 1 for t in data.train.tgt]).tolist()]
    assert_teacher_shapes_the_loss(trainer, tc, tmp_path)


def assert_teacher_shapes_the_loss(trainer, tc: TrainConfig, tmp_path) -> None:
    """The epoch trains on the teacher's distributions: the same run (training is deterministic) with kd_alpha 0,
    the hard targets alone, ends it with other weights."""
    import dataclasses

    from seq2edge.train.loop import Trainer

    assert trainer.run() == {"best_dev_wer": trainer.saved, "epochs": 1, "stopped": "epochs"}
    hard = Trainer(dataclasses.replace(tc, kd_alpha=0.0), {"embed": 8, "hidden": 16, "max_src_len": 32, "max_tgt_len": 24},
                   tmp_path / "hard", log=lambda m: None)
    hard.run()
    import torch

    ours, theirs = trainer.model.state_dict(), hard.model.state_dict()
    assert not all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_students_given_one_kd_cache_share_the_teachers_labels(tiny_bundle, tmp_path):
    cache = tmp_path / "cache"
    said = {}
    for student in ("first", "second"):
        tc = TrainConfig(corpus="cmudict", train_limit=30, dev_limit=5, teacher=str(tiny_bundle), kd="seq", kd_cache=str(cache))
        said[student] = []
        _, distilled, _ = D.split_corpus(tc, tmp_path / student, log=said[student].append)
        assert not (tmp_path / student / "teacher").exists()
    assert any("the teacher labels 30 sources" in m for m in said["first"])
    assert not any("the teacher labels" in m for m in said["second"])  # read from the shared cache
    (labels,) = cache.glob("seq-*-beam5.jsonl")
    assert len(labels.read_text().splitlines()) == 30


def test_kd_cache_without_a_teacher_is_a_usage_error(tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tmp_path / "s"), "--kd-cache", str(tmp_path / "c"), *ARGS],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--kd-cache needs a teacher" in proc.stderr


def test_the_teacher_runs_on_the_training_runs_threads(tiny_bundle):
    """--threads bounds the teacher's onnxruntime sessions too, every ensemble member's included:
    left at onnxruntime's default they would take every core beside torch's threads."""
    from seq2edge.train.distill import _load_teacher

    teacher = _load_teacher(TrainConfig(teacher=str(tiny_bundle), teacher_ensemble=[str(tiny_bundle)], threads=1))
    assert [m.engine.options.intra_op_num_threads for m in [teacher, *teacher.members]] == [1, 1]
