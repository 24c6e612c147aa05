"""Write the CLI reference into the docs from click's own `--help`, so a page cannot drift from the code.

    python tools/cli_reference.py            # rewrite every block in docs/*.md
    python tools/cli_reference.py --check    # exit 1 naming each stale block (make test runs this)

A block in a page is

    <!-- cli-reference: seq2edge decode -->
    ```text
    (the output of `seq2edge decode --help`)
    ```
    <!-- end cli-reference -->

and everything between the two comments is replaced. (After sqlite-utils, whose docs use cog for this.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from seq2edge.runtime.cli import cli

DOCS = Path(__file__).resolve().parents[1] / "docs"
WIDTH = 100
BLOCK = re.compile(r"(<!-- cli-reference: seq2edge(?P<command>(?: [a-z]+)*) -->\n)(?P<body>.*?)(<!-- end cli-reference -->)",
                   re.DOTALL)


def help_text(command: str) -> str:
    """`seq2edge COMMAND --help` at a fixed width, as a fenced block."""
    result = CliRunner().invoke(cli, [*command.split(), "--help"], prog_name="seq2edge", terminal_width=WIDTH,
                                max_content_width=WIDTH)
    if result.exit_code != 0:
        raise SystemExit(f"seq2edge{command} --help failed: {result.output}")
    lines = [line.rstrip() for line in result.output.splitlines()]
    return "```text\n" + "\n".join(lines).strip("\n") + "\n```\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + help_text(m.group("command").strip()) + m.group(4), text)


def stale_pages(docs: Path = DOCS) -> list[str]:
    """Pages whose blocks differ from today's `--help`."""
    return [str(page) for page in sorted(docs.glob("*.md")) if render(page.read_text()) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--check"]:
        stale = stale_pages()
        for page in stale:
            print(f"{page}: its CLI reference differs from --help; run `python tools/cli_reference.py`")
        return 1 if stale else 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        if render(text) != text:
            page.write_text(render(text))
            print(f"{page}: CLI reference rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
