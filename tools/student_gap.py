"""How far a distilled student is from its teacher on words it trained on and on words it did not.

    python tools/student_gap.py models/g2p-en-small models/g2p-en [--words 3000]
    python tools/student_gap.py models/g2p-en-small models/g2p-en --ensemble B2 --ensemble B3 --teacher-beam 1

For the first `words` entries of the training and dev parts of CMUdict: the student's WER (greedy,
with stress), the teacher's (beam 5 by default, as `--kd seq` labels with `--kd-beam 5`; with
`--ensemble`, the teacher is that ensemble, as `train --teacher` given several times), and the share
of words on which the student gives exactly the teacher's output. A student that copies its teacher
on the training words but not on dev is short of data, not of size (README "The small model").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C
from seq2edge.train.metrics import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--words", type=int, default=3000)
    parser.add_argument("--ensemble", type=Path, action="append", default=[], help="a further teacher bundle")
    parser.add_argument("--teacher-beam", type=int, default=5, help="the teacher's beam (its --kd-beam)")
    args = parser.parse_args()
    student = Seq2Seq.load(args.student, providers="cpu", unknown="unk", too_long="truncate")
    teacher = Seq2Seq.load(args.teacher, providers="cpu", unknown="unk", too_long="truncate", ensemble=args.ensemble)
    entries = C.load_cmudict().entries
    target = student.bundle.target
    for part in ("train", "dev"):
        chosen = C.split(entries, part)[: args.words]
        sources = [e.source for e in chosen]
        refs = [[target.split(r) for r in e.references] for e in chosen]
        mine = student.decode(sources, errors="return")
        theirs = teacher.decode(sources, beam_size=args.teacher_beam, errors="return")
        same = sum(a.ok and b.ok and a.tokens == b.tokens for a, b in zip(mine, theirs))
        print(f"{part} ({len(chosen)} words): student WER {score([r.tokens for r in mine], refs).wer:.2f}%, "
              f"teacher (beam {args.teacher_beam}) WER {score([r.tokens for r in theirs], refs).wer:.2f}%, "
              f"student = teacher on {100 * same / len(chosen):.1f}%")


if __name__ == "__main__":
    main()
