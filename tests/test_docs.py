"""The documentation: the site builds strictly, and the commands its pages show still parse.

Every ```bash block of docs/ is checked unless the line before it starts with `<!-- no-test`
(blocks that need SLURM, a GPU or files a reader brings). Each block must pass `bash -n`; each
`cnnpar` command must parse with cnnpar's own parser; each `pytest -m` names registered markers;
each `snakemake` command runs as a dry run (`-n`) in a scratch copy of the workflow, with
tests/data/config.tiny.yaml merged last so that the job graph stays small, and every config file
it names is validated on its own. Nothing here runs a study.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from workflow_helpers import REPO, TINY, load_config

from cnnpar import cli
from cnnpar.study.config import validate_config

DOCS = REPO / "docs"
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
NO_TEST = "<!-- no-test"
FENCE = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"<<-?\s*(['\"]?)(\w+)\1")
SEPARATORS = {"&&", "||", ";", "|", "&"}
# Commands a page may show that are neither cnnpar, pytest nor snakemake: checked by `bash -n`
# only. A new one is added here on purpose, once it is clear the docs mean it.
OTHER_COMMANDS = {".", "source", "python3", "pip", "git", "cat", "bash", "ruff", "snakefmt"}
OTHER_COMMANDS |= {"mkdocs"}
# What a scratch copy of the workflow needs (the dry run writes .snakemake/ there, not here).
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "envs", "tests", "pyproject.toml"]


@dataclass
class Block:
    page: str
    number: int  # 1-based, among the page's tested bash blocks
    text: str
    commands: list[list[str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # written by heredocs: name → text

    @property
    def id(self) -> str:
        return f"{self.page}#{self.number}"


def parse_block(page: str, number: int, text: str) -> Block:
    """The block's simple commands (continuations joined, comments and heredoc bodies dropped)
    and the files its heredocs write (`cat > FILE <<'EOF'`)."""
    block = Block(page, number, text)
    lines = text.splitlines()
    i, pending = 0, ""
    while i < len(lines):
        line, i = pending + lines[i], i + 1
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        heredoc = HEREDOC.search(line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc[2]:
                body.append(lines[i])
                i += 1
            i += 1  # the terminator
            target = re.search(r">\s*(\S+)\s*$", line[: heredoc.start()])
            if target:
                block.files[target[1]] = "\n".join(body) + "\n"
            line = line[: heredoc.start()]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                if command:
                    block.commands.append(command)
                command = []
            else:
                command.append(token)
    return block


def doc_blocks() -> list[Block]:
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text()
        number = 0
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().splitlines()
            if before and before[-1].startswith(NO_TEST):
                continue
            number += 1
            blocks.append(parse_block(str(path.relative_to(DOCS)), number, match[1]))
    return blocks


BLOCKS = doc_blocks()


def markers() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {m.split(":")[0].strip() for m in pyproject["tool"]["pytest"]["ini_options"]["markers"]}


# --- the site ------------------------------------------------------------------------------


@pytest.mark.slow  # seconds: spawns processes or trains
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The generated Reference pages are there and speak of what the code declares.
    config = (site / "reference/config/index.html").read_text()
    assert "train.tinycnn.engines" in config and "classify.grids" in config
    commands = (site / "reference/cli/index.html").read_text()
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        assert f"cnnpar {name}" in commands, name
    assert "schema_version" in (site / "reference/run-record/index.html").read_text()
    assert "speedup_verdict" in (site / "reference/tables/index.html").read_text()
    assert "time_to_accuracy" in (site / "reference/registry/index.html").read_text()


def test_the_readme_commands_are_the_install_page_s_and_ci_s() -> None:
    readme = (REPO / "README.md").read_text()
    install = (DOCS / "getting-started/install.md").read_text()
    blocks = [m[1].strip() for m in FENCE.finditer(readme)]
    first, tests = blocks[0], blocks[1]
    assert first.endswith("snakemake --cores 2") and first in install
    assert tests.endswith('pytest -m "not gpu"') and tests in install
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert tests.removeprefix(". .venv/bin/activate && ") in ci
    assert 'pytest -m "not slow and not slurm and not gpu"' in readme
    assert len(readme.splitlines()) <= 100


# --- the commands the pages show -----------------------------------------------------------


def test_the_pages_show_commands() -> None:
    shown = {c[0] for b in BLOCKS for c in b.commands}
    assert {"cnnpar", "snakemake", "pytest"} <= shown


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_every_command_of_a_page_parses(block: Block) -> None:
    syntax = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{block.id}: {syntax.stderr}"
    known = markers()
    for argv in block.commands:
        name = argv[0]
        if name == "cnnpar":
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                try:
                    cli.build_parser().parse_args(argv[1:])
                except SystemExit as done:  # --help
                    assert done.code == 0, f"{block.id}: {shlex.join(argv)}: {out.getvalue()}"
                except cli.UsageError as err:
                    pytest.fail(f"{block.id}: {shlex.join(argv)}: {err}")
        elif name == "pytest":
            for flag, value in itertools.pairwise(argv):
                if flag == "-m":
                    words = set(re.findall(r"[A-Za-z_]\w*", value)) - {"and", "or", "not"}
                    assert words <= known, f"{block.id}: unknown markers {words - known}"
            for arg in argv[1:]:
                if arg.startswith("tests/"):
                    assert (REPO / arg.split("::")[0]).exists(), f"{block.id}: {arg}"
        elif name == "bash":
            assert (REPO / argv[1]).exists(), f"{block.id}: {shlex.join(argv)}"
        elif name != "snakemake":
            assert name in OTHER_COMMANDS, f"{block.id}: unexpected command {name!r}"


def _dry_run_args(argv: list[str]) -> list[str]:
    """The command's arguments as a dry run with the tiny config merged last."""
    args = [a for a in argv[1:] if a not in ("-n", "--dry-run", "--dryrun")]
    for flag in ("--configfile", "--configfiles"):
        if flag in args:
            end = args.index(flag) + 1
            while end < len(args) and not args[end].startswith("-"):
                end += 1
            return ["-n", *args[:end], str(TINY), *args[end:]]
    return ["-n", *args, "--configfile", str(TINY)]


def _config_files(argv: list[str]) -> list[str]:
    """The config files a snakemake command names."""
    for flag in ("--configfile", "--configfiles"):
        if flag in argv:
            files = []
            for arg in argv[argv.index(flag) + 1 :]:
                if arg.startswith("-"):
                    break
                files.append(arg)
            return files
    return []


def snakemake_runs() -> list[tuple[Block, list[str]]]:
    """Each distinct snakemake command of the pages (as a dry run), with its block's files."""
    runs: dict[tuple, tuple[Block, list[str]]] = {}
    for block in BLOCKS:
        for argv in block.commands:
            if argv[0] == "snakemake":
                key = (tuple(_dry_run_args(argv)), tuple(sorted(block.files.items())))
                runs.setdefault(key, (block, argv))
    return list(runs.values())


SNAKEMAKE_RUNS = snakemake_runs()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("block", "argv"),
    SNAKEMAKE_RUNS,
    ids=[f"{b.id}:{shlex.join(a[1:])}" for b, a in SNAKEMAKE_RUNS],
)
def test_every_snakemake_command_of_a_page_dry_runs(
    block: Block, argv: list[str], tmp_path: Path
) -> None:
    for name in WORKFLOW_FILES:
        (tmp_path / name).symlink_to(REPO / name)
    for name, text in block.files.items():
        (tmp_path / name).write_text(text)
    for name in _config_files(argv):  # each in full: the tiny config would hide its values
        validate_config(load_config(tmp_path / name), SCHEMA)
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *_dry_run_args(argv)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{block.id}: {shlex.join(argv)}\n{done.stderr[-3000:]}"
