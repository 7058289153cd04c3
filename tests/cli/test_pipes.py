"""A reader that goes away (``clippy-rt info | head``) ends a command quietly with 0,
Ctrl-C during the start-up imports gives one line, not a traceback, and so does a warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _run_with_stdout_closed(*argv) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", "clippy_rt", *map(str, argv)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    # Closed before the command has imported anything: its first write finds no reader.
    process.stdout.close()
    _, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, process.returncode, "", stderr)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["info", "segment", "doctor"])
def test_closed_stdout_exits_quietly(command, image, tmp_path):
    argv = {"info": ["info", "demo"],
            "segment": ["segment", "demo", image, "--prompts", "circle,square", "--json"],
            "doctor": ["doctor", "--path", tmp_path]}[command]
    done = _run_with_stdout_closed(*argv)
    assert done.returncode == 0, done.stderr
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr


def test_a_real_error_still_fails_with_stdout_closed(tmp_path):
    done = _run_with_stdout_closed("info", tmp_path / "missing")
    assert done.returncode == 1 and "error:" in done.stderr and "Traceback" not in done.stderr


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the imports start")
def test_ctrl_c_during_the_imports_is_one_line():
    process = subprocess.Popen([sys.executable, "-m", "clippy_rt", "info", "demo"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    # Wait until torch's library is mapped: the interrupt then lands in the imports.
    deadline = time.monotonic() + 120
    while not _loaded(process.pid, "libtorch"):
        assert process.poll() is None, "the command ended before torch was imported"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "clippy-rt: interrupted"
    assert stdout == ""


def test_a_read_only_cache_folder_warns_in_one_line(tmp_path):
    # XDG_CACHE_HOME under a file: the text cache's folder cannot be created, as with a
    # read-only HOME. A command that keeps its text cache on disk says so in one line.
    (tmp_path / "file").write_text("")
    script = ("import sys, clippy_rt.cli.main as m, clippy_rt.cli.info as info\n"
              "from clippy_rt.text_cache import enable_disk_cache\n"
              "def run(args):\n"
              "    engine = clippy_rt.load('demo'); enable_disk_cache(engine)\n"
              "    engine.encode_text(['a circle']); engine.encode_text(['a square']); return 0\n"
              "import clippy_rt; info.run = run\n"
              "sys.exit(m.main(['info', 'demo']))\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "file" / "cache")}
    done = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clippy-rt: warning: text cache "), done.stderr
    assert str(tmp_path / "file") in lines[0] and "in memory only" in lines[0]
