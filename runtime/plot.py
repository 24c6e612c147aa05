"""Attention heatmaps (matplotlib is an optional extra, imported only here)."""

from __future__ import annotations

import functools
from pathlib import Path

from .errors import Seq2EdgeError
from .util import atomic_path


def plot_attention(result, path: str | Path) -> Path:
    """Draw result.attention (target x source) with the tokens on the axes; written atomically."""
    if result.attention is None:
        raise Seq2EdgeError("this result has no attention; decode with return_attention=True")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Seq2EdgeError("plotting needs matplotlib: pip install 'seq2edge[plot]'") from None
    path = Path(path)
    drawable = _glyph_check(matplotlib)
    rows = [drawable(t) for t in [*result.tokens, "</s>"]]
    cols = [drawable(t) for t in result.source_tokens]
    fig, ax = plt.subplots(figsize=(max(3, 0.45 * len(cols) + 1.5), max(2.5, 0.35 * len(rows) + 1.2)))
    image = ax.imshow(result.attention, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=90 if max(map(len, cols), default=0) > 3 else 0)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    ax.set_title(drawable(result.input if len(result.input) <= 40 else result.input[:37] + "..."), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _glyph_check(matplotlib):
    """A function that writes the characters no font of matplotlib's font.family can draw as U+XXXX,
    so that a token of a script without an installed font is named instead of drawn as an empty box."""
    charmaps = _charmaps(tuple(matplotlib.rcParams["font.family"]))

    def has(c: str) -> bool:
        return any(ord(c) in m for m in charmaps)

    def drawable(text: str) -> str:
        if all(c.isspace() or has(c) for c in text):
            return text
        return " ".join("".join(c if has(c) else f" U+{ord(c):04X} " for c in text).split())

    return drawable


@functools.lru_cache(maxsize=4)
def _charmaps(families: tuple[str, ...]) -> list[dict]:
    """The character maps of the fonts those families resolve to, read once per process (one PNG per
    input line would otherwise read the font files again for each)."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    charmaps = []
    for family in families:
        try:
            charmaps.append(FT2Font(font_manager.findfont(font_manager.FontProperties(family=[family]))).get_charmap())
        except Exception:  # a font that cannot be read draws nothing
            continue
    return charmaps
