"""Ratios, the targets of the benchmark issue, the printed table and the PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seq2edge.runtime.util import atomic_path


@dataclass
class Target:
    name: str
    value: float | None  # None: could not be measured in this run
    goal: float
    at_least: bool  # True: value >= goal; False: value <= goal

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.goal if self.at_least else self.value <= self.goal

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        shown = "n/a" if self.value is None else f"{self.value:.3g}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[self.met]
        return f"{self.name:48s} {shown:>9s}  (target {sign} {self.goal:g})  {verdict}"


def speed_of(speeds: list[dict], variant: str, batch: int) -> float | None:
    for row in speeds:
        if row["variant"] == variant and row["batch_size"] == batch:
            return row["words_per_s"]
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def targets(result: dict) -> list[Target]:
    s = result["speed"]
    wer = result["wer"]
    sizes = result["sizes"]
    share = next((r["run_share"] for r in s if r["variant"] == "fp32" and r["batch_size"] == 64), None)
    start = {r["variant"]: r for r in result["startup"]}
    rt = start.get("runtime", {})
    return [
        Target("fp32 / PyTorch words/s, batch 1", ratio(speed_of(s, "fp32", 1), speed_of(s, "pytorch", 1)), 8, True),
        Target("fp32 / PyTorch words/s, batch 64", ratio(speed_of(s, "fp32", 64), speed_of(s, "pytorch", 64)), 1.5, True),
        Target("int8 / PyTorch words/s, batch 64", ratio(speed_of(s, "int8", 64), speed_of(s, "pytorch", 64)), 3.5, True),
        Target("int8 WER - fp32 WER (points)", None if "int8" not in wer else round(wer["int8"] - wer["fp32"], 3), 0.5, False),
        Target("int8 graphs / fp32 graphs (size)", ratio(sizes.get("int8"), sizes.get("fp32")), 0.30, False),
        Target("Python-side share of fp32 decode, batch 64", None if share is None else round(1 - share, 4), 0.10, False),
        Target("fp32 / g2p-en words/s, batch 1", ratio(speed_of(s, "fp32", 1), speed_of(s, "g2p-en", 1)), 1, True),
        Target("fp32 default batching (64) / g2p-en words/s", ratio(speed_of(s, "fp32", 64), speed_of(s, "g2p-en", 1)), 5, True),
        Target("runtime cold start to first result (s)", rt.get("seconds"), 0.35, False),
        Target("runtime peak RSS (MB)", rt.get("peak_rss_mb"), 100, False),
    ]


def table(result: dict) -> str:
    lines = [f"seq2edge bench: {result['bundle']}  ({result['words']} CMUdict test words, threads {result['threads']}, "
             f"median of {result['repeats']} runs after a warm-up)", ""]
    lines.append(f"{'variant':9s} {'batch':>5s} {'words/s':>10s} {'ms/word':>9s} {'in session.run':>15s} {'vs pytorch':>11s}")
    for row in result["speed"]:
        base = speed_of(result["speed"], "pytorch", row["batch_size"])
        share = "" if row["run_share"] is None else f"{100 * row['run_share']:.1f}%"
        vs = ratio(row["words_per_s"], base)
        lines.append(f"{row['variant']:9s} {row['batch_size']:5d} {row['words_per_s']:10.1f} {row['ms_per_word']:9.3f} "
                     f"{share:>15s} {'' if vs is None else f'{vs:.2f}x':>11s}")
    lines.append("")
    lines.append("WER (with stress) on these words: " + ", ".join(f"{k} {v:.2f}%" for k, v in result["wer"].items()))
    lines.append("graph bytes: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in result["sizes"].items()))
    for row in result["startup"]:
        lines.append(f"cold start {row['variant']:8s} {row['seconds']:.3f} s to first result, peak RSS {row['peak_rss_mb']:.0f} MB")
    lines.append("")
    lines.append("targets:")
    lines.extend("  " + t.line() for t in targets(result))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in result["speed"]):
        rows = sorted((r for r in result["speed"] if r["variant"] == variant), key=lambda r: r["batch_size"])
        xs, ys = [r["batch_size"] for r in rows], [r["words_per_s"] for r in rows]
        ax.plot(xs, ys, "o-" if len(xs) > 1 else "D", label=variant)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("words / s")
    ax.set_title(f"greedy decoding, {result['threads']} thread(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
