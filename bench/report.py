"""Ratios, the targets of the benchmark issue, the printed table and the PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seq2edge.runtime.info import describe_versions
from seq2edge.runtime.util import atomic_path

from .measure import PEER

# The small-model targets (every bundle after the first), in the --edge-precision: the accuracy of
# the peers beaten on the test split, and speed, size and start-up that suit a device.
# The native host's goals (issue 47): its words/s over g2p-en's, its cold start and peak RSS.
NATIVE_GOALS = {"batch_1_vs_g2p_en": 3.0, "batch_64_vs_g2p_en": 12.0, "cold_start_s": 0.02, "peak_rss_mb": 40}
EDGE_GOALS = {"wer_stressless": 25.5, "per_stressless": 6.0, "wer": 31.0, "batch_1_vs_g2p_en": 2.0,
              "batch_64_vs_g2p_en": 8.0, "graph_mb": 2.0, "cold_start_s": 0.2}


@dataclass
class Target:
    model: str
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
        return f"{self.model + ' ' + self.name:58s} {shown:>9s}  (target {sign} {self.goal:g})  {verdict}"


def speed_of(speeds: list[dict], model: str, variant: str, batch: int) -> float | None:
    for row in speeds:
        if row["model"] == model and row["variant"] == variant and row["batch_size"] == batch:
            return row["words_per_s"]
    return None


def row_of(rows: list[dict], model: str, variant: str) -> dict:
    return next((r for r in rows if r["model"] == model and r["variant"] == variant), {})


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def is_cmudict(result: dict) -> bool:
    """Whether the run measured CMUdict (results written before bench took --corpus did)."""
    return result.get("corpus", "cmudict") == "cmudict"


def targets(result: dict) -> list[Target]:
    """On CMUdict: the runtime's targets for the first bundle and the small-model ones for the others.
    On another corpus only the runtime's targets against PyTorch and its own start-up and size apply:
    there is no peer, and the small-model accuracy goals are CMUdict's."""
    names = [m["name"] for m in result["models"]]
    found = runtime_targets(result, names[0]) if names else []
    if not is_cmudict(result):
        return [t for t in found if "g2p-en" not in t.name]
    for name in names[1:]:
        found += edge_targets(result, name, result["edge_precision"])
    return found


def runtime_targets(result: dict, m: str) -> list[Target]:
    """The runtime's targets against PyTorch and g2p-en, for the first (the accurate) bundle."""
    s, acc = result["speed"], result["accuracy"]
    sizes = {p: v["steps"] for p, v in next(x for x in result["models"] if x["name"] == m)["sizes"].items()}
    share = next((r["run_share"] for r in s if r["model"] == m and r["variant"] == "fp32" and r["batch_size"] == 64), None)
    start = row_of(result["startup"], m, "fp32")
    g2p_en = speed_of(s, PEER, "g2p-en", 1)
    error = "WER" if is_cmudict(result) else "errors"
    paired = next((r for r in result.get("paired_torch", []) if r["model"] == m), None)  # the steadier ratios
    if paired:
        batch_64 = {"fp32": paired["fp32_vs_pytorch"], "int8": paired["int8_vs_pytorch"]}
        how = ", in alternation"
    else:
        batch_64 = {p: ratio(speed_of(s, m, p, 64), speed_of(s, m, "pytorch", 64)) for p in ("fp32", "int8")}
        how = ""
    return [
        Target(m, "fp32 / PyTorch words/s, batch 1", ratio(speed_of(s, m, "fp32", 1), speed_of(s, m, "pytorch", 1)), 8, True),
        Target(m, f"fp32 / PyTorch words/s, batch 64{how}", batch_64["fp32"], 1.5, True),
        Target(m, f"int8 / PyTorch words/s, batch 64{how}", batch_64["int8"], 3.5, True),
        Target(m, f"int8 {error} - fp32 {error} (points)",
               difference(row_of(acc, m, "int8").get("wer"), row_of(acc, m, "fp32").get("wer")), 0.5, False),
        Target(m, "int8 graphs / fp32 graphs (size)", ratio(sizes.get("int8"), sizes.get("fp32")), 0.30, False),
        Target(m, "Python-side share of fp32 decode, batch 64", None if share is None else round(1 - share, 4), 0.10, False),
        Target(m, "fp32 / g2p-en words/s, batch 1", ratio(speed_of(s, m, "fp32", 1), g2p_en), 1, True),
        Target(m, "fp32 default batching (64) / g2p-en words/s", ratio(speed_of(s, m, "fp32", 64), g2p_en), 5, True),
        Target(m, "fp32 cold start to first result (s)", start.get("seconds"), 0.35, False),
        Target(m, "fp32 peak RSS (MB)", start.get("peak_rss_mb"), 100, False),
    ]


def edge_targets(result: dict, m: str, p: str) -> list[Target]:
    """The small-model targets in precision p: test-split accuracy, speed against g2p-en, size, start-up."""
    g = EDGE_GOALS
    acc = row_of(result["accuracy"], m, p)
    size = next(x for x in result["models"] if x["name"] == m)["sizes"].get(p, {}).get("all")
    paired = row_of(result.get("paired", []), m, p)  # timed in alternation with g2p-en: the steadier ratio
    return [
        Target(m, f"{p} stressless WER (%)", acc.get("wer_stressless"), g["wer_stressless"], False),
        Target(m, f"{p} stressless PER (%)", acc.get("per_stressless"), g["per_stressless"], False),
        Target(m, f"{p} WER with stress (%)", acc.get("wer"), g["wer"], False),
        Target(m, f"{p} / g2p-en words/s, batch 1, in alternation", paired.get("vs_g2p_en_batch_1"),
               g["batch_1_vs_g2p_en"], True),
        Target(m, f"{p} batch 64 / g2p-en words/s, in alternation", paired.get("vs_g2p_en_batch_64"),
               g["batch_64_vs_g2p_en"], True),
        Target(m, f"{p} graphs, greedy graph included (MB)", None if size is None else round(size / 1e6, 3), g["graph_mb"], False),
        Target(m, f"{p} cold start to first result (s)", row_of(result["startup"], m, p).get("seconds"), g["cold_start_s"], False),
        Target(m, f"{p} cold start, JavaScript host on Node (s)", row_of(result["startup"], m, f"{p}-node").get("seconds"),
               g["cold_start_s"], False),
        Target(m, f"{p} native host / g2p-en words/s, batch 1, in alternation", paired.get("native_vs_g2p_en_batch_1"),
               NATIVE_GOALS["batch_1_vs_g2p_en"], True),
        Target(m, f"{p} native host batch 64 / g2p-en words/s, in alternation", paired.get("native_vs_g2p_en_batch_64"),
               NATIVE_GOALS["batch_64_vs_g2p_en"], True),
        Target(m, f"{p} cold start, native host (s)", row_of(result["startup"], m, f"{p}-c").get("seconds"),
               NATIVE_GOALS["cold_start_s"], False),
        Target(m, f"{p} peak RSS, native host (MB)", row_of(result["startup"], m, f"{p}-c").get("peak_rss_mb"),
               NATIVE_GOALS["peak_rss_mb"], False),
    ]


def table(result: dict) -> str:
    width = max([len(m["name"]) for m in result["models"]] + [len(PEER), 5])
    cmudict = is_cmudict(result)
    what = "CMUdict test words" if cmudict else f"test inputs of {result['corpus']}"
    lines = [f"seq2edge bench: {' '.join(m['bundle'] for m in result['models'])}  ({result['words']} {what} timed, "
             f"threads {result['threads']}, median of {result['repeats']} runs after a warm-up; accuracy on "
             f"{result['accuracy_words']} test {'words' if cmudict else 'inputs'})"]
    if result["machine"].get("onnxruntime"):
        lines.append(describe_versions(result["machine"]["onnxruntime"]))
    lines.append("")
    lines.append(f"{'model':{width}s} {'variant':10s} {'batch':>5s} {'words/s' if cmudict else 'inputs/s':>9s} "
                 f"{'ms/word' if cmudict else 'ms/input':>8s} {'in session.run':>14s} {'vs pytorch':>10s} "
                 f"{'vs g2p-en' if cmudict else '':>9s}")
    g2p_en = speed_of(result["speed"], PEER, "g2p-en", 1)
    for row in result["speed"]:
        share = "" if row["run_share"] is None else f"{100 * row['run_share']:.1f}%"
        vs_torch = ratio(row["words_per_s"], speed_of(result["speed"], row["model"], "pytorch", row["batch_size"]))
        vs_peer = ratio(row["words_per_s"], g2p_en)
        lines.append(f"{row['model']:{width}s} {row['variant']:10s} {row['batch_size']:5d} {row['words_per_s']:9.1f} "
                     f"{row['ms_per_word']:8.3f} {share:>14s} {_times(vs_torch):>10s} {_times(vs_peer):>9s}")
    for row in result.get("paired_torch", []):
        lines += ["", f"timed in alternation with PyTorch (batch {row['batch']}, {row['chunk']}-word chunks, {row['rounds']} rounds): "
                      "words/s over PyTorch's, median (each round)"]
        for precision in ("fp32", "int8"):
            if row[precision]:
                lines.append(f"{row['model']:{width}s} {precision:10s} {_times(row[f'{precision}_vs_pytorch']):>7s} "
                             f"({', '.join(f'{x:.2f}' for x in row[precision])})")
    for row in result.get("paired", []):
        if row is result["paired"][0]:
            lines += ["", f"timed in alternation with g2p-en ({row['chunk']}-word chunks, {row['rounds']} rounds): "
                          "words/s over g2p-en's, median (each round)"]
        lines.append(f"{row['model']:{width}s} {row['variant']:10s} batch 1 {_times(row['vs_g2p_en_batch_1']):>7s} "
                     f"({', '.join(f'{x:.2f}' for x in row['batch_1'])})   batch 64 {_times(row['vs_g2p_en_batch_64']):>7s} "
                     f"({', '.join(f'{x:.2f}' for x in row['batch_64'])})")
        if row.get("native_vs_g2p_en_batch_1") is not None:
            lines.append(f"{row['model']:{width}s} {row['variant'] + ' C':10s} batch 1 {_times(row['native_vs_g2p_en_batch_1']):>7s} "
                         f"({', '.join(f'{x:.2f}' for x in row['native_batch_1'])})   batch 64 "
                         f"{_times(row['native_vs_g2p_en_batch_64']):>7s} ({', '.join(f'{x:.2f}' for x in row['native_batch_64'])})")
    headers = (f"{'WER':>7s} {'PER':>6s}  {'stressless WER':>14s} {'PER':>6s}" if cmudict else
               f"{'errors':>7s} {'token error rate':>16s}")  # errors: inputs matching no reference (100 - exact match)
    lines += ["", f"{'model':{width}s} {'variant':10s} {headers}  {'graphs MB':>9s} {'+ greedy':>8s}"]
    sizes = {m["name"]: m["sizes"] for m in result["models"]}
    for row in result["accuracy"]:
        size = sizes.get(row["model"], {}).get(row["variant"])
        steps = "" if size is None else f"{size['steps'] / 1e6:.2f}"
        total = "" if size is None or size["all"] == size["steps"] else f"{size['all'] / 1e6:.2f}"
        scores = (f"{row['wer']:6.2f}% {row['per']:5.2f}%  {row['wer_stressless']:13.2f}% {row['per_stressless']:5.2f}%"
                  if cmudict else f"{row['wer']:6.2f}% {row['per']:15.2f}%")
        lines.append(f"{row['model']:{width}s} {row['variant']:10s} {scores}  {steps:>9s} {total:>8s}")
    lines.append("")
    for row in result["startup"]:
        lines.append(f"cold start {row['model'] + ' ' + row['variant']:{width + 11}s} {row['seconds']:.3f} s to first result, "
                     f"peak RSS {row['peak_rss_mb']:.0f} MB")
    lines += ["", "targets:"]
    lines.extend("  " + t.line() for t in targets(result))
    return "\n".join(lines)


def _times(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (more words/s, lower WER), by speed."""
    keep = [i for i, (speed, wer) in enumerate(points)
            if not any(s >= speed and w <= wer and (s, w) != (speed, wer) for s, w in points)]
    return sorted(keep, key=lambda i: points[i][0])


def plot(result: dict, path: Path) -> None:
    """Left: stressless test WER (another corpus: the share of inputs matching no reference) against
    batch-1 words/s, one point per model and precision (and PyTorch, g2p-en), the Pareto front joined.
    Right: words/s against batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmudict = is_cmudict(result)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels, points = [], []
    for row in result["accuracy"]:
        speed = speed_of(result["speed"], row["model"], row["variant"], 1)
        if speed is not None:
            labels.append(row["variant"] if row["model"] == PEER else f"{row['model']} {row['variant']}")
            points.append((speed, row["wer_stressless"] if cmudict else row["wer"]))
    front = pareto_front(points)
    above: list[tuple[float, float]] = []  # points labelled above; a near neighbour gets its label below
    for i, ((speed, wer), label) in enumerate(zip(points, labels)):
        left.plot(speed, wer, "o", color="C3" if i in front else "C0")
        near = any(abs(wer - w) < 0.4 and max(speed, s) / min(speed, s) < 1.8 for s, w in above)
        if not near:
            above.append((speed, wer))
        left.annotate(label, (speed, wer), textcoords="offset points", xytext=(5, -11 if near else 4), fontsize=8)
    if front:
        left.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="C3", alpha=0.6,
                  label="Pareto front")
        left.legend(fontsize=8)
    left.set_xscale("log")
    unit = "words" if cmudict else "inputs"
    left.set_xlabel(f"{unit} / s at batch 1 (one thread)")
    left.set_ylabel(f"stressless WER, % ({result['accuracy_words']} test words)" if cmudict else
                    f"inputs matching no reference, % ({result['accuracy_words']} test inputs)")
    left.set_title("accuracy against batch-1 speed")
    left.grid(True, which="both", alpha=0.3)
    for series in dict.fromkeys((r["model"], r["variant"]) for r in result["speed"]):
        rows = sorted((r for r in result["speed"] if (r["model"], r["variant"]) == series), key=lambda r: r["batch_size"])
        xs, ys = [r["batch_size"] for r in rows], [r["words_per_s"] for r in rows]
        label = series[1] if series[0] == PEER else " ".join(series)
        right.plot(xs, ys, "o-" if len(xs) > 1 else "D", label=label)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("batch size")
    right.set_ylabel(f"{unit} / s")
    right.set_title(f"greedy decoding, {result['threads']} thread(s)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
