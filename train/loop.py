"""The training loop: teacher forcing, masked cross-entropy, clipping, dev WER each epoch.

Data preparation is in data.py, PyTorch decoding in infer.py, checkpoint and
optimizer-state files in checkpoint.py, the curves in curves.py.

Keeps the best-on-dev weights, a resume point after every epoch (and every
few minutes inside one), a time budget, early stopping, a learning-rate
schedule on dev WER, and runs under torchrun with DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from seq2edge.runtime.errors import Seq2EdgeError
from seq2edge.runtime.util import write_json_atomic

from . import data as D
from .checkpoint import (
    epoch_weights,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_json,
    save_model_files,
    save_tensors,
    tensors_metadata,
)
from .config import WIDENED, TrainConfig
from .curves import plot_curves
from .distill import matches_distributions, token_targets
from .infer import dev_wer
from .model import Seq2SeqModule
from .widen import initial_weights


def token_kd_loss(log_probs: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor, gold: torch.Tensor, pad: int) -> torch.Tensor:
    """Cross-entropy against the teacher's next-token distribution (its top-k ids, renormalised over
    those the student's vocabulary has; -1 marks the others) at every non-pad step."""
    kept = probs * (ids >= 0)
    kept = kept / kept.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    per_step = -(kept * log_probs.gather(-1, ids.clamp(min=0))).sum(dim=-1)
    mask = gold != pad
    return per_step[mask].sum() / mask.sum().clamp(min=1)


def loss_fn(log_probs: torch.Tensor, gold: torch.Tensor, pad: int, smoothing: float) -> torch.Tensor:
    """Cross-entropy over non-pad positions, with optional label smoothing."""
    log_probs = log_probs.reshape(-1, log_probs.size(-1))
    gold = gold.reshape(-1)
    keep = gold != pad
    nll = F.nll_loss(log_probs, gold, ignore_index=pad, reduction="sum")
    if smoothing:
        uniform = -log_probs.mean(dim=1)[keep].sum()
        nll = (1 - smoothing) * nll + smoothing * uniform
    return nll / keep.sum().clamp(min=1)


class Trainer:
    """One training run into `out`; call run()."""

    # Settings a resumed run may change (the rest is the saved run's, in train.json and config.json).
    RESUME_OVERRIDES = ("epochs", "threads", "patience", "log_every")

    def __init__(self, tc: TrainConfig, arch: dict, out: str | Path, resume: bool = False, log=None,
                 overrides: dict | None = None, clock: Callable[[], float] = time.monotonic):
        """overrides: with resume, RESUME_OVERRIDES values that replace the saved ones; max_minutes and max_steps
        are always this run's own (a budget belongs to one invocation). clock: seconds, for the time budget."""
        self.out = Path(out)
        self.rank, self.world = _distributed_setup()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if self.rank:
            self.log = lambda msg: None
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.tc = tc
        self.clock = clock
        self.run_steps = 0  # batches trained by this invocation (the step budget)
        if resume:
            self._load_resume_config(overrides or {})
        with self._rank_0_first():  # a teacher labels once; the other ranks read its caches
            if resume:
                self.prepared = D.prepare_from(self.tc, self.out, self.out, self.log)
            elif self.tc.init_from:  # --hidden/--embed given with it widen the checkpoint's model
                wider = {name: arch[name] for name in WIDENED if arch.get(name) is not None}
                self.prepared = D.prepare_from(self.tc, Path(self.tc.init_from), self.out, self.log, wider)
            else:
                self.prepared = D.prepare(self.tc, dict(arch), self.out, self.log)
            self.teacher = None  # --kd token, seq+token: the teacher's per-step distributions, aligned with the training pairs
            if matches_distributions(self.tc.kd):
                data = self.prepared
                self.teacher = token_targets(self.tc, data.train.src, data.train.tgt, data.source, data.target, self.out,
                                             self.log)
        torch.manual_seed(self.tc.seed)
        self.model = Seq2SeqModule(self.prepared.model_config)
        if self.tc.init_from and not resume:  # a second training cycle: the weights of a trained checkpoint
            self.model.load_state_dict(initial_weights(Path(self.tc.init_from), self.model, self.log))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tc.lr)
        self.history: list[dict] = []
        self.best = math.inf  # best dev WER at an epoch's end: what the schedule and early stopping see
        self.saved = math.inf  # dev WER of the weights in model.safetensors (may come from a partial epoch)
        self.bad_epochs = 0
        self.epoch, self.step_in_epoch = 0, 0
        self.loss_total, self.loss_batches = 0.0, 0  # the current epoch's running loss, kept across a resume
        self.minutes_before = 0.0  # training minutes spent by earlier runs of this checkpoint
        self.run_start = self.clock()
        self._signalled: list[int] = []  # SIGINT/SIGTERM received while run() trains
        if resume:
            self._restore()
        elif self.rank == 0:
            save_model_files(self.out, self.model, self.prepared.source, self.prepared.target)
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)

    @contextmanager
    def _rank_0_first(self) -> Iterator[None]:
        """With several processes, rank 0 runs the block before the others do (they wait at a barrier):
        what it computes and caches (a teacher's labels and distributions) the others then read."""
        if self.world > 1 and self.rank:
            dist.barrier()
        yield
        if self.world > 1 and not self.rank:
            dist.barrier()

    # -- resume -----------------------------------------------------------------
    def _load_resume_config(self, overrides: dict) -> None:
        saved = read_json(self.out / "train.json")
        budget, steps, threads = self.tc.max_minutes, self.tc.max_steps, self.tc.threads
        self.tc = TrainConfig(**saved["train_config"])
        self.tc.max_minutes, self.tc.max_steps = budget, steps  # a resumed run gets its own budgets
        if threads:  # and may use another number of threads (float sums may then differ in the last bits)
            self.tc.threads = threads
        for name, value in overrides.items():
            if name not in self.RESUME_OVERRIDES:
                raise ValueError(f"a resumed run cannot change {name}")
            setattr(self.tc, name, value)

    def _restore(self) -> None:
        last = self.out / "last"
        state = read_json(last / "state.json")
        for name in ("model", "optimizer"):
            meta = tensors_metadata(last / f"{name}.safetensors")
            if meta.get("position") != state["position"]:
                raise Seq2EdgeError(f"{last}: {name}.safetensors is from another point of training than state.json; "
                                    "the resume point is incomplete, start again without --resume")
        self.model.load_state_dict(load_tensors(last / "model.safetensors"))
        tensors = load_tensors(last / "optimizer.safetensors")
        self.optimizer.load_state_dict(optimizer_from_tensors(self.optimizer, tensors, state["optimizer"]))
        torch.set_rng_state(tensors["__rng_state"])
        self.history, self.best, self.bad_epochs = state["history"], state["best"], state["bad_epochs"]
        self.saved = state["saved"]
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.loss_total, self.loss_batches = state.get("epoch_loss", (0.0, 0))
        self.minutes_before = state.get("minutes", 0.0)
        self.log(f"resuming at epoch {self.epoch + 1}, batch {self.step_in_epoch}")

    def _save_resume_point(self) -> None:
        if self.rank:
            return
        last = self.out / "last"
        last.mkdir(exist_ok=True)
        position = f"{self.epoch}:{self.step_in_epoch}"
        save_tensors(last / "model.safetensors", self.model.state_dict(), {"position": position})
        tensors, scalars = optimizer_to_tensors(self.optimizer)
        tensors["__rng_state"] = torch.get_rng_state()
        save_tensors(last / "optimizer.safetensors", tensors, {"position": position})
        write_json_atomic(last / "state.json", {
            "position": position, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "history": self.history, "best": self.best, "saved": self.saved, "bad_epochs": self.bad_epochs,
            "optimizer": scalars, "epoch_loss": [self.loss_total, self.loss_batches], "minutes": self.minutes(),
        })

    def minutes(self) -> float:
        """Training minutes of this checkpoint so far, earlier (resumed) runs included."""
        return self.minutes_before + (self.clock() - self.run_start) / 60

    # -- training -----------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end (epochs, early stopping or time budget). SIGINT or SIGTERM stop it at the
        next batch boundary with the resume point saved there, raising TrainingInterrupted."""
        with _signals_noted() as signalled:
            self._signalled = signalled
            return self._run()

    def _run(self) -> dict:
        tc = self.tc
        self._write_train_json()
        self.run_start = self.clock()
        deadline = self.run_start + tc.max_minutes * 60 if tc.max_minutes else math.inf
        lengths = [len(s) + len(t) for s, t in zip(self.prepared.train.src, self.prepared.train.tgt)]
        stopped = "epochs"
        while self.epoch < tc.epochs:
            order = D.rank_share(D.batch_order(lengths, tc.batch_size, tc.seed, self.epoch), self.rank, self.world)
            stop_reason, loss = self._train_epoch(order, deadline)
            if stop_reason == _SIGNALLED:
                self._save_resume_point()
                self._write_train_json()
                if self.world > 1:
                    self._leave_process_group()
                signum = self._signalled[0] if self._signalled else signal.SIGTERM  # another rank's signal
                raise TrainingInterrupted(signum, self.out, self.epoch, self.step_in_epoch, shown=self.rank == 0)
            if stop_reason == _LATE:
                stopped = "step budget" if tc.max_steps and self.run_steps >= tc.max_steps else "time budget"
                self._end_partial_epoch(stopped)
                break
            if self._end_epoch(loss):
                stopped = "early stopping"
                break
        if self.rank == 0:
            self.log(f"stopped ({stopped}); best dev WER {self.saved:.2f}% -> {self.out / 'model.safetensors'}")
        if self.world > 1:
            self._leave_process_group()
        return {"best_dev_wer": self.saved, "epochs": len(self.history), "stopped": stopped}

    def _train_epoch(self, order: list[list[int]], deadline: float) -> tuple[int, float]:
        """(0 when the epoch is done, else why it stopped: _LATE or _SIGNALLED; the running loss)."""
        from tqdm import tqdm

        tc, c, data = self.tc, self.prepared.model_config, self.prepared.train
        self.net.train()
        bar = tqdm(total=len(order), initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}",
                   disable=None if self.rank == 0 else True, leave=False, file=sys.stderr)
        last_save = started = time.monotonic()
        first = self.step_in_epoch
        progress_lines = self.rank == 0 and tc.log_every > 0 and not sys.stderr.isatty()
        for idx in order[self.step_in_epoch :]:
            stop_reason = self._stop_reason(deadline)
            if stop_reason:
                bar.close()
                return stop_reason, self.loss_total / max(self.loss_batches, 1)
            batch = D.make_batch([data.src[i] for i in idx], [data.tgt[i] for i in idx], c.pad_id, c.bos_id, c.eos_id)
            log_probs = self.net(batch.src_ids, batch.src_lengths, batch.tgt_in)
            loss = loss_fn(log_probs, batch.tgt_out, c.pad_id, tc.label_smoothing)
            if self.teacher is not None:
                ids, probs = self.teacher.batch(idx, batch.tgt_out.size(1))
                kd = token_kd_loss(log_probs, torch.from_numpy(ids), torch.from_numpy(probs), batch.tgt_out, c.pad_id)
                loss = (1 - tc.kd_alpha) * loss + tc.kd_alpha * kd
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip)
            self.optimizer.step()
            self.loss_total, self.loss_batches = self.loss_total + loss.item(), self.loss_batches + 1
            self.step_in_epoch += 1
            self.run_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{self.loss_total / self.loss_batches:.3f}", refresh=False)
            if progress_lines and self.step_in_epoch % tc.log_every == 0:
                rate = (self.step_in_epoch - first) / max(time.monotonic() - started, 1e-9)
                eta = (len(order) - self.step_in_epoch) / max(rate, 1e-9)
                self.log(f"epoch {self.epoch + 1}: batch {self.step_in_epoch}/{len(order)}, loss "
                         f"{self.loss_total / self.loss_batches:.4f}, {rate:.1f} batches/s, ETA {int(eta // 60)}:{int(eta % 60):02d}")
            if time.monotonic() - last_save > tc.save_every_minutes * 60:
                self._save_resume_point()
                last_save = time.monotonic()
        bar.close()
        return 0, self.loss_total / max(self.loss_batches, 1)

    def _stop_reason(self, deadline: float) -> int:
        """Signalled or past a budget, on any rank: all ranks stop at the same step (one that stopped
        alone would leave the others waiting in the next gradient sum), for the same reason."""
        over = self.clock() > deadline or (self.tc.max_steps is not None and self.run_steps >= self.tc.max_steps)
        reason = _SIGNALLED if self._signalled else _LATE if over else 0
        if self.world > 1:
            agreed = torch.tensor([float(reason)])
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            reason = int(agreed[0])
        return reason

    def _end_epoch(self, loss: float) -> bool:
        """Dev WER, schedule, best and resume files; True when training should stop early."""
        tc = self.tc
        stop = torch.zeros(1)
        if self.rank == 0:
            wer = dev_wer(self.model, self.prepared.dev, self.prepared.source, self.prepared.target)
            lr = self.optimizer.param_groups[0]["lr"]
            elapsed = self.minutes() * 60
            self.history.append({"epoch": self.epoch + 1, "loss": loss, "dev_wer": wer, "lr": lr, "minutes": elapsed / 60})
            improved = wer < self.best
            if wer < self.saved:
                self.saved = wer
                save_tensors(self.out / "model.safetensors", self.model.state_dict(), {"epoch": str(self.epoch + 1)})
            if tc.keep_epochs:
                path = epoch_weights(self.out, self.epoch + 1)
                path.parent.mkdir(exist_ok=True)
                save_tensors(path, self.model.state_dict(), {"epoch": str(self.epoch + 1), "dev_wer": str(wer)})
            if improved:
                self.best, self.bad_epochs = wer, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs % tc.lr_patience == 0:
                    for group in self.optimizer.param_groups:
                        group["lr"] = max(group["lr"] * tc.lr_factor, tc.min_lr)
            self.log(f"epoch {self.epoch + 1}: loss {loss:.4f}  dev WER {wer:.2f}%  lr {lr:.2e}  "
                     f"{elapsed / 60:.1f} min{'  (best)' if improved else ''}")
            stop[0] = float(self.bad_epochs >= tc.patience)
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_total, self.loss_batches = 0.0, 0
        self._save_resume_point()
        self._write_train_json()
        if self.rank == 0:
            plot_curves(self.history, self.out / "curves.png")
        if self.world > 1:
            dist.broadcast(stop, 0)
            for group in self.optimizer.param_groups:  # keep every rank's schedule in step
                lr = torch.tensor([group["lr"]])
                dist.broadcast(lr, 0)
                group["lr"] = float(lr)
        return bool(stop[0])

    def _leave_process_group(self) -> None:
        """Every rank waits for the others, then drops the DDP wrapper (its reducer holds the process
        group) before the group is destroyed: a group torn down while a peer is still finishing, or
        left to the interpreter's exit through the wrapper, can abort the process (std::terminate)."""
        dist.barrier()
        self.net = self.model
        gc.collect()
        dist.destroy_process_group()

    def _end_partial_epoch(self, budget: str) -> None:
        """A budget is spent inside an epoch: keep the resume point there, and the weights if they are the best yet."""
        if self.rank == 0:
            wer = dev_wer(self.model, self.prepared.dev, self.prepared.source, self.prepared.target)
            self.log(f"{budget} reached in epoch {self.epoch + 1} at batch {self.step_in_epoch}: dev WER {wer:.2f}%")
            if wer < self.saved:  # kept as the best weights; the schedule sees whole epochs only
                save_tensors(self.out / "model.safetensors", self.model.state_dict(), {"epoch": f"{self.epoch + 1} (partial)"})
                self.saved = wer
        self._save_resume_point()
        self._write_train_json()

    def _write_train_json(self) -> None:
        if self.rank == 0:
            write_json_atomic(self.out / "train.json", {"train_config": dataclasses.asdict(self.tc), "history": self.history,
                                                 "best_dev_wer": self.saved if math.isfinite(self.saved) else None})


_LATE, _SIGNALLED = 1, 2  # why training stops inside an epoch (the larger wins across ranks)


class TrainingInterrupted(Seq2EdgeError):
    """SIGINT or SIGTERM stopped training at a batch boundary; the resume point is saved there.
    Under torchrun every rank stops with it; only rank 0's says so (`shown`)."""

    def __init__(self, signum: int, out: Path, epoch: int, step: int, shown: bool = True):
        super().__init__(f"interrupted in epoch {epoch + 1} after batch {step}; the resume point is saved in {out}, "
                         f"--resume continues from there")
        self.exit_code = 128 + signum
        self.shown = shown


@contextmanager
def _signals_noted() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are noted (in the list yielded), not raised, for the duration of the block,
    so that training stops between batches: weights, optimizer and position then agree."""
    noted: list[int] = []

    def note(signum, frame):
        if noted:  # a second Ctrl-C does not wait for the batch to end
            raise KeyboardInterrupt
        noted.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    saved = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield noted
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _distributed_setup() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world
