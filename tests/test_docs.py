"""The documentation keeps up with the code: README.md is an index, docs/ holds the rest.

- every console script of pyproject.toml has its page `docs/commands/<name>.md`, and that page
  names every option string of the command's parser (subcommands' too), read in-process from the
  module's `build_parser()`;
- every `##` section of `docs/results.md` names the command that produced it and its date;
- README.md is at most 150 lines and starts with the two commands;
- every relative link in README.md and docs/**/*.md points to a file that exists.

Each check is a plain function returning the list of problems, so the tests below can show that it
fails on a page that is wrong (a check that cannot fail checks nothing).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 150
FIRST_COMMANDS = ("python3 run.py demo", "python3 run.py test")
COMMAND_IN_BACKTICKS = re.compile(r"`[^`]*(python -m benchmarks\.|python3 run\.py|medgmae_|nnUNetv2_)[^`]*`")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def parser_flags(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, str]]:
    """(where, option string) for every option of `parser` and of its subcommands, -h/--help left out."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                found += parser_flags(subparser, f"{name} {sub}")
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                found.append((name, option))
    return found


def mentions(text: str, option: str) -> bool:
    """`option` appears as a whole token: `-c` is not found inside `--crop` nor `-d` inside `-device`."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def missing_flags(page: Path, flags: list[tuple[str, str]]) -> list[str]:
    if not page.is_file():
        return [f"{page.relative_to(ROOT)} does not exist"]
    text = page.read_text()
    return [f"{page.relative_to(ROOT)} does not mention {where}'s flag {option}"
            for where, option in flags if not mentions(text, option)]


def results_problems(text: str, name: str = "docs/results.md") -> list[str]:
    """Each `## ` section must hold a backtick command that produced it and a YYYY-MM-DD date."""
    problems = []
    sections = re.split(r"^(?=## )", text, flags=re.M)
    headed = [s for s in sections if s.startswith("## ")]
    if not headed:
        return [f"{name} has no '## ' sections"]
    for section in headed:
        title = section.splitlines()[0]
        if not COMMAND_IN_BACKTICKS.search(section):
            problems.append(f"{name}: section {title!r} names no command in backticks "
                            "(`python -m benchmarks.…`, `medgmae_…`, `python3 run.py …`)")
        if not DATE.search(section):
            problems.append(f"{name}: section {title!r} has no date (YYYY-MM-DD)")
    return problems


def readme_problems(text: str) -> list[str]:
    problems = []
    lines = text.splitlines()
    if len(lines) > README_MAX_LINES:
        problems.append(f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move reference into docs/")
    body = [line for line in lines if line.strip()]
    start = 1 if body and body[0].startswith("# ") else 0
    head = body[start:start + 3]
    if not head or not head[0].startswith("```"):
        problems.append("README.md must start (after its title) with a code block holding the two commands")
    elif [line.split("#")[0].strip() for line in head[1:3]] != list(FIRST_COMMANDS):
        problems.append(f"README.md's first code block must be exactly {FIRST_COMMANDS}, got {head[1:3]}")
    return problems


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        path, _, anchor = target.partition("#")
        linked = page.parent / path
        if not linked.exists():
            problems.append(f"{page.relative_to(ROOT)} links to {target}, which does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            problems.append(f"{page.relative_to(ROOT)} links to {target}: {path} has no heading with that anchor")
    return problems


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))


# ---- the checks on the real documentation ------------------------------------------------------

@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_every_command_page_lists_every_flag(name):
    module = importlib.import_module(console_scripts()[name].split(":")[0])
    assert hasattr(module, "build_parser"), f"{module.__name__} has no build_parser() for the docs test"
    problems = missing_flags(DOCS / "commands" / f"{name}.md", parser_flags(module.build_parser(), name))
    assert not problems, "\n".join(problems)


def test_results_sections_name_command_and_date():
    problems = results_problems((DOCS / "results.md").read_text())
    assert not problems, "\n".join(problems)


def test_readme_is_an_index():
    problems = readme_problems((ROOT / "README.md").read_text())
    assert not problems, "\n".join(problems)


def test_readme_links_every_command_page():
    text = (ROOT / "README.md").read_text()
    missing = [name for name in console_scripts() if f"docs/commands/{name}.md" not in text]
    assert not missing, f"README.md's command table has no link to the page of {missing}"


def test_relative_links_resolve():
    problems = [p for page in markdown_pages() for p in broken_links(page)]
    assert not problems, "\n".join(problems)


# ---- the checks can fail -----------------------------------------------------------------------

def test_flag_check_names_the_missing_flag_and_page(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--configuration")
    sub = parser.add_subparsers()
    sub.add_parser("train").add_argument("--no-mirroring", action="store_true")
    page = tmp_path / "tool.md"
    page.write_text("`-c`, `--configuration`; `--crop` and `-device` are other flags\n")
    assert missing_flags(page, parser_flags(parser, "tool")) == [
        "tool.md does not mention tool train's flag --no-mirroring"]
    page.write_text("`--crop`, `-device`, `--no-mirroring-x`\n")
    assert len(missing_flags(page, parser_flags(parser, "tool"))) == 3
    assert missing_flags(tmp_path / "absent.md", []) == ["absent.md does not exist"]


def test_results_check_fails_without_command_or_date():
    good = "## Renderer\n\n2026-11-24, two CPU cores: `python -m benchmarks.renderer` printed 0.16 s.\n"
    assert results_problems(good) == []
    assert len(results_problems("## Renderer\n\nIt took 0.16 s on 2026-11-24.\n")) == 1
    assert len(results_problems("## Renderer\n\n`medgmae_pretrain` took 0.16 s.\n")) == 1
    assert results_problems("no sections\n")


def test_readme_check_fails_on_long_or_reordered_readme():
    good = "# T\n\n```bash\npython3 run.py demo   # x\npython3 run.py test\n```\n"
    assert readme_problems(good) == []
    assert readme_problems(good + "line\n" * README_MAX_LINES)
    assert readme_problems("# T\n\nIntro first.\n\n```bash\npython3 run.py demo\npython3 run.py test\n```\n")
    assert readme_problems("# T\n\n```bash\npython3 run.py test\npython3 run.py demo\n```\n")


def test_link_check_fails_on_missing_target(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "there.png").write_bytes(b"")
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Title\n\n## The main job (`python3 run.py demo`)\n")
    page.write_text("![ok](there.png) [web](https://example.org) [anchor](#x) [bad](docs/gone.md#part)\n"
                    "[ok](other.md#the-main-job-python3-runpy-demo) [no heading](other.md#the-main-job)\n")
    assert broken_links(page) == ["page.md links to docs/gone.md#part, which does not exist",
                                  "page.md links to other.md#the-main-job: other.md has no heading with that anchor"]


OUTSIDE = re.compile(r"\.\./(?:\.\./)*shared/")


def outside_references(text: str) -> list[str]:
    """Paths that leave the repository (a clone has no `../shared/`): the lines that name one."""
    return [line.strip() for line in text.splitlines() if OUTSIDE.search(line)]


def test_no_document_points_outside_the_repository():
    packages = [d for d in ROOT.iterdir() if (d / "__init__.py").exists()] + [ROOT / "tests"]
    pages = markdown_pages() + [ROOT / "run.py"] + [py for d in packages for py in d.rglob("*.py")]
    found = {str(p.relative_to(ROOT)): outside_references(p.read_text(encoding="utf-8")) for p in pages if p.name != "test_docs.py"}
    assert not {page: lines for page, lines in found.items() if lines}


def test_outside_check_finds_a_reference_to_shared():
    assert outside_references("The paper is `../shared/paper/MedGMAE.txt`.") == ["The paper is `../shared/paper/MedGMAE.txt`."]
    assert outside_references("see [design](../design.md) and docs/../README.md") == []
