"""Training curves: train loss and dev WER per epoch, drawn into the checkpoint as curves.png."""

from __future__ import annotations

from pathlib import Path

from seq2edge.runtime.util import atomic_path


def plot_curves(history: list[dict], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h["dev_wer"] for h in history], "s-", color="tab:red", label="dev WER")
    right.set_ylabel("dev WER (%)", color="tab:red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
