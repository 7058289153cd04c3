"""The commands in README's "Command line" section run as written, on the tiny model."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from clippy_rt.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _section_commands(title: str):
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```console\n(.*?)```", section, flags=re.S)
    return [shlex.split(line[2:]) for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_command_line_section_runs(tmp_path, monkeypatch, capsys):
    commands = _section_commands("Command line")
    assert len(commands) >= 5 and all(c[0] == "clippy-rt" for c in commands)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert cli(command[1:]) == 0, (command, capsys.readouterr().err)
    assert any(p.name.endswith(".labels.png") for p in (tmp_path / "out").iterdir())
