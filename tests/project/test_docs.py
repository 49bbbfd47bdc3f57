"""The documents agree with the code: the commands, options and bench scripts the README and docs/ name exist,
the README's links reach a file and a heading, the licence and the vendored data's notices are there, and the
re-acquire list is what the README says. (docs/ pages' links are checked in ``test_deploy.py``.)"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT, copy_example
from mhd.client import cli

pytestmark = pytest.mark.usefixtures("isolated_config", "two_workers")


@pytest.mark.slow
def test_the_reacquire_list_is_what_the_readme_says(tmp_path):
    section = copy_example(tmp_path / "section")
    runner = CliRunner()
    assert runner.invoke(cli.main, ["submit", "--dir", str(section)]).exit_code == 2
    assert runner.invoke(cli.main, ["report", "--dir", str(section)]).exit_code == 0
    lines = (section / "mhd-report" / "mhd-reacquire.txt").read_text().splitlines()
    assert lines and all(len(line.split("\t")) == 2 for line in lines)  # tile, a tab, what to fix
    readme = (ROOT / "README.md").read_text()
    assert "the tile id, a tab, what to fix" in readme and "one tile id per line" not in readme


@pytest.mark.slow
def test_the_bench_commands_the_docs_name_exist():
    """Every ``python bench/<script>.py <command>`` that the README and docs/ name is a command of that script."""
    root = ROOT
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    named = sorted(set(re.findall(r"python bench/([a-z_]+)\.py ([a-z]+)", text)))
    assert ("blur_validation", "sections") in named
    helps: dict[str, str] = {}
    for script, command in named:
        if script not in helps:
            out = subprocess.run([sys.executable, str(root / "bench" / f"{script}.py"), "--help"], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            helps[script] = out.stdout
        assert re.search(rf"\b{command}\b", helps[script]), f"bench/{script}.py has no command {command}"


#: The documents a user reads: the README and every page under docs/.
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands_in(text: str, program: str) -> list[str]:
    """Every command of ``program`` in a Markdown text (fenced lines and inline code, wrapped lines joined), from its name on.

    A command is one that a shell would run: at the start of a line or of a code span, after ``&&`` or ``;``, after
    environment assignments, or with a path before the program's name (``.venv/bin/client``).
    """
    fences = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    pieces = [line for block in fences for line in block.replace("\\\n", " ").splitlines()]
    rest = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.M | re.S)
    pieces += [m.group(2).replace("\n", " ") for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", rest, re.S)]
    out = []
    for piece in pieces:
        for command in re.split(r"&&|;", piece.split(" #")[0]):
            m = re.match(rf"\s*(?:\w+=\S*\s+)*(?:\S*/)?({re.escape(program)}\s.*)", command)
            if m:
                out.append(m.group(1).split(" | ")[0].strip())
    return out


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_client_options_the_docs_name_exist(doc):
    """Every ``client <command> ... --option`` in the README and docs/ is an option of that command (its --help)."""
    helps: dict[tuple[str, ...], str] = {}
    for line in _commands_in(doc.read_text(), "client"):
        words = [w for w in line.split()[1:] if w not in ("-v", "-vv")]
        if not words or not re.fullmatch(r"[a-z-]+", words[0]):
            continue
        command = tuple(words[:2]) if words[0] == "endpoint" and len(words) > 1 else (words[0],)
        assert command[0] in cli.main.commands, f"{doc.name}: no command 'client {command[0]}'"
        if command not in helps:
            out = CliRunner().invoke(cli.main, [*command, "--help"], terminal_width=200)
            assert out.exit_code == 0, out.output
            helps[command] = out.output
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", helps[command]), f"{doc.name}: client {' '.join(command)} has no {option}"


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_bench_options_the_docs_name_exist(doc):
    """Every ``python bench/<script>.py [command] --option`` in the README and docs/ is in that script's --help."""
    helps: dict[tuple[str, ...], str] = {}
    for line in _commands_in(doc.read_text(), "python"):
        m = re.match(r"python bench/(\w+)\.py((?: \S+)*)", line)
        if not m:
            continue  # python -c, python -m
        script, args = m.group(1), m.group(2).split()
        command = args[:1] if args and re.fullmatch(r"[a-z]+", args[0]) else []
        key = (script, *command)
        if key not in helps:
            out = subprocess.run([sys.executable, str(ROOT / "bench" / f"{script}.py"), *command, "--help"], capture_output=True, text=True)
            assert out.returncode == 0, f"{doc.name}: {line}: {out.stderr}"
            helps[key] = out.stdout
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", " ".join(args)):
            assert re.search(rf"(?<![\w-]){option}(?![\w-])", helps[key]), (
                f"{doc.name}: bench/{script}.py {' '.join(command)} has no {option}"
            )


def test_the_readme_links_point_to_existing_files_and_headings():
    """The README's relative links (docs/ pages are checked in test_deploy.py) reach a file, and a heading there."""
    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target if target else ROOT / "README.md"
        assert path.exists(), f"README.md: broken link {link}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md: no heading for #{anchor} in {target or 'README.md'}"


def test_the_licence_and_the_vendored_datas_notices_are_there():
    """The code's MIT licence is at the root; each vendored data set keeps its own notice, and the README names them."""
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the mhd contributors\n")
    assert "MIT License" in (ROOT / "tests" / "data" / "sem-kriss" / "LICENSE").read_text()
    assert "Cite:" in (ROOT / "tests" / "data" / "isbi2012" / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for path in ("LICENSE", "tests/data/isbi2012/README.md", "tests/data/sem-kriss/LICENSE"):
        assert f"]({path})" in readme, path
