import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import SEQ2EDGE
from safetensors.torch import load_file

from seq2edge.runtime import BundleError
from seq2edge.train.checkpoint import load_checkpoint, tensors_metadata
from seq2edge.train.config import TrainConfig
from seq2edge.train.loop import Trainer

ARGS = ["--limit", "400", "--dev-limit", "60", "--embed", "16", "--hidden", "32", "--batch-size", "16",
        "--max-src-len", "32", "--max-tgt-len", "24", "--seed", "3"]


def test_checkpoint_is_safetensors_and_json_with_the_best_dev_weights(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "vocab.json", "model.safetensors", "train.json", "curves.png", "last"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))]
    history = json.loads((tiny_checkpoint / "train.json").read_text())["history"]
    best = min(history, key=lambda h: h["dev_wer"])
    assert tensors_metadata(tiny_checkpoint / "model.safetensors")["epoch"] == str(best["epoch"])
    assert (tiny_checkpoint / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_pickle_checkpoints_are_refused(tmp_path, tiny_checkpoint):
    planted = tmp_path / "ckpt"
    planted.mkdir()
    for name in ("config.json", "vocab.json"):
        (planted / name).write_bytes((tiny_checkpoint / name).read_bytes())
    torch.save({"weights": torch.zeros(2)}, planted / "model.pt")  # a pickle, as torch.save writes it
    with pytest.raises(BundleError, match="pickle checkpoints are refused"):
        load_checkpoint(planted)
    (planted / "model.safetensors").write_bytes((planted / "model.pt").read_bytes())
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        load_checkpoint(planted)


def _final_state(out):
    history = json.loads((out / "train.json").read_text())["history"]
    return load_file(str(out / "last" / "model.safetensors")), [round(h["dev_wer"], 6) for h in history]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    straight = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run([*SEQ2EDGE, "train", "--out", str(straight), "--epochs", "3", *ARGS], check=True, capture_output=True)
    return straight


def _interrupt_after_the_first_epoch(out, sig):
    proc = subprocess.Popen([*SEQ2EDGE, "train", "--out", str(out), "--epochs", "3", *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / "last" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert json.loads(state.read_text())["epoch"] < 3, "the run finished before it could be interrupted"
    return proc.returncode, stderr


def test_killed_training_resumes_to_the_same_result_as_an_uninterrupted_run(tmp_path, straight_run):
    killed = tmp_path / "killed"
    _interrupt_after_the_first_epoch(killed, signal.SIGKILL)
    subprocess.run([*SEQ2EDGE, "train", "--out", str(killed), "--resume", "--epochs", "3", *ARGS], check=True, capture_output=True)
    (w1, h1), (w2, h2) = _final_state(straight_run), _final_state(killed)
    assert h1 == h2
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name


def test_sigterm_stops_training_between_batches_with_the_resume_point_saved_there(tmp_path, straight_run):
    """SIGTERM (Ctrl-C alike) is acted on at the next batch boundary: the resume point holds the last
    batch trained (not the last epoch's end), exit code 143, one line naming --resume, no temporary
    file; resumed, the run ends exactly as an uninterrupted one."""
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([*SEQ2EDGE, "train", "--out", str(stopped), "--epochs", "3", "--log-every", "1", *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # progress lines: "epoch 2: batch 3/28, ..."
        lines.append(line)
        if line.startswith("epoch 2: batch 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 143, "".join(lines)
    assert not any("Traceback" in line for line in lines)
    (message,) = [line for line in lines if "interrupted" in line]
    state = json.loads((stopped / "last" / "state.json").read_text())
    assert state["epoch"] == 1 and state["step_in_epoch"] >= 3, state
    assert f"epoch 2 after batch {state['step_in_epoch']}" in message and "--resume continues" in message
    assert not [p for p in stopped.rglob("*") if p.name.endswith(".tmp")]
    subprocess.run([*SEQ2EDGE, "train", "--out", str(stopped), "--resume", "--epochs", "3", *ARGS], check=True, capture_output=True)
    (w1, h1), (w2, h2) = _final_state(straight_run), _final_state(stopped)
    assert h1 == h2 and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_time_budget_stops_inside_an_epoch_and_resume_continues_there(tmp_path):
    config = dict(epochs=2, train_limit=300, dev_limit=40, batch_size=8, seed=5, save_every_minutes=60)
    arch = dict(embed=16, hidden=32, max_src_len=32, max_tgt_len=24)
    Trainer(TrainConfig(**config), arch, tmp_path / "a", log=lambda m: None).run()
    ticks = iter(range(10**6))  # a clock that moves one second each time it is read: the budget ends at a known batch
    stopped = Trainer(TrainConfig(**config, max_minutes=0.1), arch, tmp_path / "b", log=lambda m: None,
                      clock=lambda: float(next(ticks))).run()
    assert stopped["stopped"] == "time budget"
    position = json.loads((tmp_path / "b" / "last" / "state.json").read_text())
    assert position["epoch"] == 0 and 0 < position["step_in_epoch"] <= 6  # 6 seconds in and the epoch has 38 batches
    Trainer(TrainConfig(**config), arch, tmp_path / "b", resume=True, log=lambda m: None).run()
    (w1, h1), (w2, h2) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert h1 == h2 and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_train_refuses_to_overwrite_a_trained_checkpoint(tiny_checkpoint):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tiny_checkpoint), *ARGS], capture_output=True, text=True)
    assert proc.returncode == 2 and "already holds a trained model" in proc.stderr


def _train_two_processes(out, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "seq2edge.runtime.cli", "train", "--out", str(out), *ARGS, *args],
                          capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.slow  # a multi-process run (kept out of make test's 10 minutes; .ci/run runs it)
def test_two_process_gloo_distillation_stops_on_its_time_budget_together_and_resumes_through_an_odd_batch_count(
        tmp_path, tiny_bundle):
    """Each rank starts its clock separately; the ranks agree on the step to stop at, or one would
    wait in a gradient sum the other never joins. Rank 0 labels with the teacher first, the other
    rank then reads the caches. Batch size 18 cuts the 400 training pairs into 23 batches: a rank
    left with one batch more than its partner would wait forever in that batch's gradient sum."""
    args = ("--epochs", "2", "--batch-size", "18")
    proc = _train_two_processes(tmp_path / "ddp", *args, "--max-steps", "5", "--teacher", str(tiny_bundle),
                                "--kd", "seq+token", "--kd-beam", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped (step budget)" in proc.stderr and "400 training pairs" in proc.stderr
    assert len(list((tmp_path / "ddp" / "teacher").iterdir())) == 2  # the labels and the distributions, nothing half-written
    state = json.loads((tmp_path / "ddp" / "last" / "state.json").read_text())
    assert state["epoch"] < 2
    proc = _train_two_processes(tmp_path / "ddp", *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [h["epoch"] for h in json.loads((tmp_path / "ddp" / "train.json").read_text())["history"]] == [1, 2]
    model, _, _ = load_checkpoint(tmp_path / "ddp")
    assert model.config.hidden == 32


@pytest.mark.slow  # a multi-process run (kept out of make test's 10 minutes; .ci/run runs it)
def test_sigterm_under_torchrun_stops_every_rank_with_one_message_and_the_run_resumes(tmp_path):
    """torchrun passes SIGTERM to both ranks; both stop at the same batch and save, and the line that
    names --resume is printed once (rank 0's), not once per rank; torchrun --resume then finishes the
    run. torchrun itself exits 1, not 143: its agent turns the signal into its own SignalException
    (torch's code); the ranks' own exit, 143, is what the single-process test checks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "seq2edge.runtime.cli", "train", "--out", str(tmp_path / "ddp"), *ARGS, "--epochs", "3",
                             "--log-every", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("epoch 1: batch 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 1, "".join(lines[-30:])
    assert any("SignalException: Process" in line and "got signal: 15" in line for line in lines), "".join(lines[-30:])
    assert sum("Traceback" in line for line in lines) == 1  # the agent's; no rank crashed
    said = [line for line in lines if "--resume continues" in line]
    assert len(said) == 1, "".join(lines[-30:])
    state = json.loads((tmp_path / "ddp" / "last" / "state.json").read_text())
    assert state["epoch"] == 0 and state["step_in_epoch"] >= 3
    resumed = _train_two_processes(tmp_path / "ddp", "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [h["epoch"] for h in json.loads((tmp_path / "ddp" / "train.json").read_text())["history"]] == [1, 2, 3]


def test_label_smoothing_mixes_in_the_mean_negative_log_prob_over_the_vocabulary():
    from seq2edge.train.loop import loss_fn

    log_probs = torch.log_softmax(torch.tensor([[[2.0, 0.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4]]]), dim=-1)
    gold = torch.tensor([[2, 0]])  # the second position is padding (pad id 0)
    nll = -log_probs[0, 0, 2]
    uniform = -log_probs[0, 0].mean()
    assert loss_fn(log_probs, gold, pad=0, smoothing=0.0).item() == pytest.approx(nll.item())
    assert loss_fn(log_probs, gold, pad=0, smoothing=0.1).item() == pytest.approx((0.9 * nll + 0.1 * uniform).item())


def test_learning_rate_halves_after_an_epoch_without_a_better_dev_wer(tmp_path):
    """With a learning rate too small to change any output, dev WER never improves after epoch 1,
    so the end of each later epoch halves the rate (lr_patience 1); history records the rate each
    epoch trained with. Label smoothing is recorded as configured."""
    tc = TrainConfig(corpus="cmudict", epochs=3, train_limit=100, dev_limit=20, batch_size=32, lr=1e-9, min_lr=0.0,
                     label_smoothing=0.1, patience=10, save_every_minutes=60)
    Trainer(tc, {"embed": 8, "hidden": 16, "max_src_len": 32, "max_tgt_len": 24}, tmp_path / "lr", log=lambda m: None).run()
    train = json.loads((tmp_path / "lr" / "train.json").read_text())
    history = train["history"]
    assert len({h["dev_wer"] for h in history}) == 1
    assert [h["lr"] for h in history] == pytest.approx([1e-9, 1e-9, 5e-10], rel=1e-6)
    assert train["train_config"]["label_smoothing"] == 0.1


@pytest.mark.slow  # several training runs (kept out of make test's 10 minutes; .ci/run runs it)
def test_resume_takes_a_new_epoch_count_and_keeps_the_loss_and_minutes_of_the_interrupted_epoch(tmp_path, straight_run):
    """A run stopped by its time budget inside epoch 1, resumed with --epochs 3: it ends as an
    uninterrupted 3-epoch run (history, loss included, and weights), and the resumed epoch's minutes
    count the first run's time."""
    stopped = tmp_path / "stopped"
    subprocess.run([*SEQ2EDGE, "train", "--out", str(stopped), *ARGS, "--epochs", "1", "--max-steps", "3"], check=True,
                   capture_output=True)
    state = json.loads((stopped / "last" / "state.json").read_text())
    assert state["epoch"] == 0 and state["step_in_epoch"] == 3 and state["minutes"] > 0
    subprocess.run([*SEQ2EDGE, "train", "--out", str(stopped), *ARGS, "--resume", "--epochs", "3"], check=True, capture_output=True)
    one = json.loads((straight_run / "train.json").read_text())["history"]
    two = json.loads((stopped / "train.json").read_text())["history"]
    assert [h["epoch"] for h in two] == [1, 2, 3]
    assert [round(h["loss"], 6) for h in two] == [round(h["loss"], 6) for h in one]
    assert two[0]["minutes"] > state["minutes"] and two[1]["minutes"] > two[0]["minutes"]
    (w1, _), (w2, _) = _final_state(straight_run), _final_state(stopped)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_resume_refuses_settings_that_differ_from_the_saved_run(tiny_checkpoint):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tiny_checkpoint), "--resume", "--hidden", "64", "--lr", "0.01"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--hidden 64 (saved: 32)" in proc.stderr and "--lr 0.01 (saved: 0.002)" in proc.stderr


def test_progress_lines_every_n_batches_when_stderr_is_not_a_terminal(tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(tmp_path / "log"), *ARGS, "--limit", "200", "--epochs", "1",
                           "--log-every", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch 1: batch ")]
    assert [line.split()[3].split("/")[0] for line in lines][:3] == ["4", "8", "12"]
    assert all("loss " in line and "batches/s, ETA " in line for line in lines)


def test_every_file_of_a_checkpoint_and_bundle_is_world_readable(tiny_checkpoint, tiny_bundle):
    import stat

    umask = os.umask(0)
    os.umask(umask)
    files = [p for root in (tiny_checkpoint, tiny_bundle) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files) and any(p.parent.name == "last" for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_bom_at_the_start_of_a_tsv_corpus_is_not_a_token(tmp_path):
    from seq2edge.train import corpus as C

    path = tmp_path / "bom.tsv"
    path.write_bytes("\ufeffabc\tx y\nbca\ty x\n".encode())
    corpus = C.load_tsv(path)
    assert sorted(e.source for e in corpus.entries) == ["abc", "bca"] and corpus.skipped == 0


def test_lr_patience_halves_the_rate_only_after_that_many_epochs_without_a_better_dev_wer(tmp_path):
    tc = TrainConfig(corpus="cmudict", epochs=5, train_limit=100, dev_limit=20, batch_size=32, lr=1e-9, min_lr=0.0,
                     patience=10, lr_patience=2, save_every_minutes=60)
    Trainer(tc, {"embed": 8, "hidden": 16, "max_src_len": 32, "max_tgt_len": 24}, tmp_path / "lr", log=lambda m: None).run()
    history = json.loads((tmp_path / "lr" / "train.json").read_text())["history"]
    assert [h["lr"] for h in history] == pytest.approx([1e-9, 1e-9, 1e-9, 5e-10, 5e-10], rel=1e-6)


def test_init_from_starts_a_second_cycle_from_a_trained_checkpoints_weights_and_vocabularies(tiny_checkpoint, tmp_path):
    """Epoch 1 of the new run trains from the old weights: with a learning rate too small to move them,
    its weights and dev WER are the old ones. Model options may not be given beside it."""
    out = tmp_path / "cycle2"
    proc = subprocess.run([*SEQ2EDGE, "train", "--init-from", str(tiny_checkpoint), "--out", str(out), "--epochs", "1",
                           "--limit", "200", "--dev-limit", "100", "--lr", "1e-12"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text()) == json.loads((tiny_checkpoint / "config.json").read_text())
    assert json.loads((out / "vocab.json").read_text()) == json.loads((tiny_checkpoint / "vocab.json").read_text())
    old, new = load_file(tiny_checkpoint / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(old[k], new[k], atol=1e-6) for k in old)
    before = json.loads((tiny_checkpoint / "train.json").read_text())["history"]
    assert json.loads((out / "train.json").read_text())["history"][0]["dev_wer"] == min(h["dev_wer"] for h in before)
    refused = subprocess.run([*SEQ2EDGE, "train", "--init-from", str(tiny_checkpoint), "--out", str(tmp_path / "x"),
                              "--cell", "gru"], capture_output=True, text=True)
    assert refused.returncode == 2 and "leave out --cell" in refused.stderr


@pytest.mark.slow  # several training runs (kept out of make test's 10 minutes; .ci/run runs it)
def test_keep_epochs_and_average_give_one_checkpoint_whose_weights_are_the_epochs_mean(tiny_checkpoint, tmp_path):
    """train --keep-epochs keeps each epoch's weights; `average` writes their mean as a checkpoint that
    eval and export take, and refuses weights of another model or an existing --out."""
    run = tmp_path / "run"
    proc = subprocess.run([*SEQ2EDGE, "train", "--out", str(run), "--epochs", "2", "--keep-epochs", *ARGS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    epochs = sorted((run / "epochs").glob("*.safetensors"))
    assert [p.name for p in epochs] == ["epoch-001.safetensors", "epoch-002.safetensors"]
    history = json.loads((run / "train.json").read_text())["history"]
    assert [float(tensors_metadata(p)["dev_wer"]) for p in epochs] == [h["dev_wer"] for h in history]
    first, second = load_file(epochs[0]), load_file(epochs[1])
    assert any(not torch.equal(first[k], second[k]) for k in first)

    out = tmp_path / "averaged"
    proc = subprocess.run([*SEQ2EDGE, "average", *map(str, epochs), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    mean = load_file(out / "model.safetensors")
    assert set(mean) == set(first) and all(torch.allclose(mean[k], (first[k] + second[k]) / 2, atol=1e-7) for k in first)
    assert json.loads((out / "config.json").read_text()) == json.loads((run / "config.json").read_text())
    sources = json.loads((out / "train.json").read_text())["averaged_from"]
    assert [s["epoch"] for s in sources] == ["1", "2"]
    model, _, _ = load_checkpoint(out)  # a checkpoint like any other
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing temporary left

    again = subprocess.run([*SEQ2EDGE, "average", *map(str, epochs), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr
    other = subprocess.run([*SEQ2EDGE, "average", str(run), str(tiny_checkpoint), "--out", str(tmp_path / "x")],
                           capture_output=True, text=True)
    assert other.returncode == 2 and "config.json differs" in other.stderr and "Traceback" not in other.stderr
    assert not (tmp_path / "x").exists()
