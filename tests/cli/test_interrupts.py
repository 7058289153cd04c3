"""SIGINT and SIGTERM in the middle of long commands: no half-written output, no hidden
temporaries, a non-zero exit with one line, and a rerun over the same --out works."""

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

EXIT = {signal.SIGINT: (130, "clippy-rt: interrupted"), signal.SIGTERM: (143, "clippy-rt: terminated")}


def _start(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clippy_rt", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the command finished before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the command to get going"
        time.sleep(0.01)


def _stop(process, signum):
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    code, line = EXIT[signum]
    assert process.returncode == code, stderr
    lines = [l for l in stderr.splitlines() if l.strip()]
    assert lines[-1] == line and "Traceback" not in stderr, stderr
    return stdout, stderr


def _hidden(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(40):
        path = folder / f"frame{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_segment_interrupted_then_rerun(tmp_path, tiny_model_dir, many_images, signum):
    out = tmp_path / "out"
    argv = ["segment", tiny_model_dir, *many_images, "--prompts", "a,b,c", "--out", out, "--json"]
    process = _start(*argv)
    _wait_for(lambda: out.is_dir() and len(list(out.glob("*.overlay.png"))) >= 2, process)
    _stop(process, signum)
    written = sorted(p for p in out.iterdir() if p.name != "legend.png")
    assert 0 < len(written) < 2 * len(many_images)
    assert _hidden(out) == [] and _hidden(tmp_path) == []
    for path in written:
        Image.open(path).load()  # every file there is complete
    finished = {p.name.split(".")[0] for p in written if p.name.endswith(".overlay.png")}
    assert {p.name.split(".")[0] for p in written} == finished  # both files of each finished image

    if signum == signal.SIGTERM:  # one rerun is enough to show the same --out is reusable
        done = subprocess.run([sys.executable, "-m", "clippy_rt", *map(str, argv)], capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert len(list(out.iterdir())) == 2 * len(many_images) + 1 and _hidden(out) == []  # + legend.png


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_eval_interrupted(tiny_model_dir, signum):
    process = _start("eval", tiny_model_dir, "--dataset", "synthetic:400", "--batch-size", "4", "--json")
    lines = []

    def progressed():
        lines.append(process.stderr.readline())
        return lines[-1].startswith("eval: ")

    _wait_for(progressed, process)
    stdout, _ = _stop(process, signum)
    assert stdout == ""  # no partial report


def test_export_terminated_leaves_no_partial_directory(tmp_path, tiny_model_dir):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "onnx"
    argv = ["export", tiny_model_dir, "--out", out, "--fp16", "--check-sizes", "32,64"]
    process = _start(*argv)
    _wait_for(lambda: any(p.name.endswith(".partial") and any(p.iterdir()) for p in tmp_path.iterdir()), process)
    _stop(process, signal.SIGTERM)
    assert not out.exists() and _hidden(tmp_path) == []
