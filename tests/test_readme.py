"""README.md and the pages in docs/: their commands run as written, and their links resolve.

- README's "Command line" section: every command runs, in order, on the tiny and demo models.
- The `clippy-rt` commands in the ```console blocks of the other README sections and of every
  docs/*.md page run too when they are offline and cheap, by this rule (`_why_not_run`):
    * the subcommand is one of OFFLINE_SUBCOMMANDS (no server, no hardware, no network);
    * the model argument is the shipped `demo` model, `models/tiny` (made by `random-init`), or
      a directory written by an earlier command of the same page (`--out`);
    * nothing asks for hardware (`--device cuda`, `--backend tensorrt`);
    * an `eval` dataset is generated (`synthetic:N`, run with N cut to SYNTHETIC_SCENES: the
      command is checked here, its figures are checked elsewhere); real datasets are absent.
  To keep this file under 30 s, `export` runs its parity check at batch 1 only
  (`--check-batches 1` unless the command names batches; tests/export checks parity).
  Everything else is not run, and `_why_not_run` names the reason: `serve` (a server), `build`
  (TensorRT), `bag` (recorded data), `bench` (long), `doctor` (its exit status depends on the
  machine), `convert` (real checkpoints), and any command on a placeholder (`MODEL`) or on
  `models/b16`, whose weights cannot be downloaded here. `pytest tests/test_readme.py -rA`
  prints the list.
- Every docs/*.md page is linked from README, and every relative link in README.md and
  docs/*.md names an existing file (or folder), with its `#anchor` a heading of that file.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from clippy_rt.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))

OFFLINE_SUBCOMMANDS = {"random-init", "info", "segment", "classify", "eval", "export"}
HARDWARE_OPTIONS = {("--device", "cuda"), ("--backend", "tensorrt")}
BUILTIN_MODELS = {"demo", "models/tiny"}
SYNTHETIC_SCENES = 8


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _console_commands(text: str):
    """The `$ ` lines of the ```console blocks, continuation lines (ending in `\\`) joined."""
    blocks = re.findall(r"```console\n(.*?)```", text, flags=re.S)
    joined = [re.sub(r"\\\n\s*", " ", block) for block in blocks]
    return [line[2:] for block in joined for line in block.splitlines() if line.startswith("$ ")]


def _section_commands(title: str):
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line) for line in _console_commands(section)]


def test_command_line_section_runs(tmp_path, monkeypatch, capsys):
    commands = _section_commands("Command line")
    assert len(commands) >= 5 and all(c[0] == "clippy-rt" for c in commands)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert cli(command[1:]) == 0, (command, capsys.readouterr().err)
    assert any(p.name.endswith(".labels.png") for p in (tmp_path / "out").iterdir())


# --- commands of the other pages -------------------------------------------------------------


def _option(args, name):
    return args[args.index(name) + 1] if name in args[:-1] else None


def _why_not_run(args, written):
    """None when `clippy-rt ARGS` is run by the test, else the reason it is not."""
    if not args or args[0] not in OFFLINE_SUBCOMMANDS:
        return f"subcommand {args[0] if args else None!r} is not in OFFLINE_SUBCOMMANDS"
    for name, value in HARDWARE_OPTIONS:
        if _option(args, name) == value:
            return f"{name} {value} needs hardware"
    if args[0] != "random-init":
        model = args[1] if len(args) > 1 else None
        if model not in BUILTIN_MODELS and model not in written:
            return f"model {model!r} is not available here"
    dataset = _option(args, "--dataset")
    if args[0] == "eval" and not (dataset or "").startswith("synthetic"):
        return f"dataset {dataset!r} is not generated"
    return None


def _page_commands(path: Path):
    """The `clippy-rt` commands of a page, as (args, reason not run or None); for README, those
    outside "Command line" (which the test above runs)."""
    text = path.read_text()
    if path.name == "README.md":
        text = re.sub(r"^## Command line\n.*?(?=^## )", "", text, flags=re.S | re.M)
    written, out = set(), []
    for line in _console_commands(text):
        words = shlex.split(line, comments=True)
        if not words or words[0] != "clippy-rt":
            continue
        args = words[1:]
        reason = _why_not_run(args, written)
        if reason is None:
            if _option(args, "--out"):
                written.add(_option(args, "--out"))
            dataset = _option(args, "--dataset")
            if dataset and dataset.startswith("synthetic"):
                args[args.index("--dataset") + 1] = f"synthetic:{SYNTHETIC_SCENES}"
            if args[0] == "export" and "--check-batches" not in args:
                args += ["--check-batches", "1"]
        out.append((args, reason))
    return out


PAGES = [ROOT / "README.md", *DOCS]


def test_the_rule_runs_some_commands_and_names_a_reason_for_the_others():
    commands = [c for page in PAGES for c in _page_commands(page)]
    run = [args for args, reason in commands if reason is None]
    for args, reason in commands:
        print("run:" if reason is None else f"not run ({reason}):", shlex.join(["clippy-rt", *args]))
    assert len(run) >= 3, commands
    assert {args[0] for args in run} >= {"eval", "export"}
    assert all(reason for args, reason in commands if args not in run)


@pytest.mark.parametrize("page", [p for p in PAGES if any(r is None for _, r in _page_commands(p))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_commands_run(page, tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    run = [args for args, reason in _page_commands(page) if reason is None]
    if any(args[1:2] == ["models/tiny"] for args in run if args[0] != "random-init"):
        assert cli(["random-init", "--arch", "tiny", "--out", "models/tiny"]) == 0
    for args in run:
        assert cli(args) == 0, (page.name, args, capsys.readouterr().err)


# --- links ----------------------------------------------------------------------------------


def _anchors(path: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', -1, -2 for repeats."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    seen, anchors = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path):
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _without_code(path.read_text()))


def test_every_docs_page_is_linked_from_readme():
    linked = {(ROOT / target.split("#")[0]).resolve() for target in _links(ROOT / "README.md")}
    assert [p.name for p in DOCS if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists() or ROOT not in (dest, *dest.parents):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert broken == [], f"{page.name}: links that do not resolve: {broken}"
