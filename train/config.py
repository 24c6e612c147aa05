"""TrainConfig: how to train, saved in train.json so that a resumed run continues the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

WIDENED = ("hidden", "embed")  # the model sizes --init-from may grow (train/widen.py); the rest stays the checkpoint's


@dataclass
class TrainConfig:
    """How to train; saved in train.json so a resumed run continues the same way."""

    corpus: str = "cmudict"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    clip: float = 1.0
    label_smoothing: float = 0.0
    patience: int = 6  # epochs without a better dev WER before stopping
    lr_patience: int = 1  # epochs without a better dev WER before the learning rate halves
    lr_factor: float = 0.5
    min_lr: float = 1e-5
    seed: int = 0
    max_minutes: float | None = None
    max_steps: int | None = None  # a budget of batches for this invocation, as max_minutes is of time
    save_every_minutes: float = 10.0
    min_freq: int = 1
    src_vocab_size: int | None = None  # cap (word) or target size (spm)
    tgt_vocab_size: int | None = None
    train_limit: int | None = None  # first N training entries only (quick runs, tests)
    dev_limit: int | None = None  # first N dev entries for the per-epoch WER
    threads: int | None = None
    log_every: int = 100  # batches between progress lines on stderr when it is not a terminal (0: none)
    teacher: str | None = None  # a bundle whose outputs the student learns (knowledge distillation)
    teacher_ensemble: list[str] = field(default_factory=list)  # more bundles: the teacher is their ensemble with `teacher`
    kd: str | None = None  # "seq": train on the teacher's beam outputs; "token": match its next-token distributions; "seq+token": both
    kd_beam: int = 5
    kd_alpha: float = 0.5  # token level: weight of the teacher's distributions against the references
    kd_top_k: int = 8  # token level: how many of the teacher's most likely tokens per step are kept
    kd_mix_references: bool = False  # keep the references beside the teacher's outputs
    extra_inputs: str | None = None  # a file of unlabelled sources for the teacher to label
    kd_cache: str | None = None  # where the teacher's outputs are cached; None: OUT/teacher/
    init_from: str | None = None  # a checkpoint whose weights, model options and vocabularies this run starts from
    keep_epochs: bool = False  # also keep every epoch's weights in OUT/epochs/ (for `seq2edge average`)
