"""The front door and the docs: README stays short, every link resolves, and the option references are `--help`."""

import re
import shutil
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import cli_reference  # noqa: E402

PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "models").glob("*/README.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


def test_the_option_references_in_the_docs_are_what_help_prints():
    assert cli_reference.stale_pages() == []


def test_a_changed_option_makes_its_page_stale(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    page = docs / "decoding.md"
    page.write_text(page.read_text().replace("--length-penalty FLOAT", "--length-penalty NUMBER", 1))
    assert cli_reference.stale_pages(docs) == [str(page)]
    page.write_text(cli_reference.render(page.read_text()))
    assert cli_reference.stale_pages(docs) == []


def test_every_cli_command_has_its_reference_in_the_docs():
    from seq2edge.runtime.cli import LAZY_COMMANDS

    documented = {m.group("command").strip() for page in (REPO / "docs").glob("*.md")
                  for m in cli_reference.BLOCK.finditer(page.read_text())}
    assert documented == set(LAZY_COMMANDS)


def test_readme_is_a_front_door_of_at_most_250_lines_opening_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert not re.search(r"20\d\d-\d\d-\d\d", text), "README holds a dated figure: it belongs in docs/experiments/ or a card"


def test_every_relative_link_resolves_to_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert broken == []


def test_the_docs_index_lists_every_page():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in (REPO / "docs").glob("*.md") if f"docs/{p.name}" not in readme]
    assert missing == []
    experiments = (REPO / "docs" / "experiments" / "README.md").read_text()
    assert [p.name for p in (REPO / "docs" / "experiments").glob("2*.md") if p.name not in experiments] == []


def test_the_architecture_page_names_every_module():
    """docs/ARCHITECTURE.md's module index: a module added without a line there fails here."""
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    files = [p for folder in ("runtime", "export", "train", "bench") for p in (REPO / folder).rglob("*.py") if p.name != "__init__.py"]
    files += [*(REPO / "tools").glob("*.py"), *(REPO / "tools").glob("*.mjs"), *(REPO / "hosts" / "js").glob("*.mjs")]
    native = REPO / "hosts" / "c"
    files += [p for p in native.rglob("*") if p.is_file() and "build" not in p.relative_to(native).parts
              and (p.suffix in (".c", ".cpp", ".hpp", ".h", ".inc", ".py", ".sh") or p.name == "Makefile")]
    missing = [str(p.relative_to(REPO)) for p in files if f"`{p.relative_to(REPO)}`" not in page]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"
