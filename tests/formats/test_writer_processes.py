"""Writers in real processes: two commands writing one --out at once leave one complete
result and the loser says so; temporaries of a writer killed with SIGKILL are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clippy_rt.formats.atomic import PUBLISH_BARRIER_ENV, atomic_write_bytes


def _start(barrier: Path, *argv) -> subprocess.Popen:
    env = dict(os.environ, **{PUBLISH_BARRIER_ENV: str(barrier)})
    return subprocess.Popen([sys.executable, "-m", "clippy_rt", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_until_ready(barrier: Path, processes, timeout=300.0):
    """Both writers have finished their staging directories and wait to move them into place."""
    deadline = time.monotonic() + timeout
    while not all((barrier / f"{p.pid}.ready").exists() for p in processes):
        for p in processes:
            assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline, "timed out waiting for both writers"
        time.sleep(0.02)


def _release(barrier: Path, process) -> tuple:
    (barrier / f"{process.pid}.go").touch()
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _model(folder: Path) -> dict:
    """A model directory's files: tensors for the weights (their header's key order may vary
    between processes), bytes for the rest."""
    from safetensors.torch import load_file

    files = _files(folder)
    files["weights.safetensors"] = {name: tensor.numpy().tobytes() for name, tensor in
                                    load_file(folder / "weights.safetensors").items()}
    return files


def _race(tmp_path, out, first_argv, second_argv):
    """Run two writers of ``out`` until both are ready to publish; let the first finish, then
    the second. Returns the second's (exit code, stdout, stderr)."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    first, second = _start(barrier, *first_argv), _start(barrier, *second_argv)
    try:
        _wait_until_ready(barrier, [first, second])
        # Both passed the "is --out free?" check and hold a complete staging directory.
        assert not out.exists()
        assert len([p for p in out.parent.iterdir() if p.name.endswith(".partial")]) == 2
        code, stdout, stderr = _release(barrier, first)
        assert code == 0 and stdout.strip() != "", stderr
        return _release(barrier, second)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
                p.wait()


def _assert_lost(code, stdout, stderr, out):
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    assert code != 0 and "Traceback" not in stderr, stderr
    # Progress lines may come first; the one error line, naming --out, ends the output.
    assert errors == lines[-1:] and "written by another process" in lines[-1] and str(out) in lines[-1], stderr
    assert "wrote" not in stdout


def test_two_random_inits_to_one_out(tmp_path):
    from clippy_rt.formats.random_init import random_init

    out = tmp_path / "work" / "model"
    out.parent.mkdir()
    result = _race(tmp_path, out, ["random-init", "--arch", "tiny", "--out", out, "--seed", "1"],
                   ["random-init", "--arch", "tiny", "--out", out, "--seed", "2"])
    _assert_lost(*result, out)
    first, second = _model(random_init("tiny", tmp_path / "ref1", seed=1)), \
        _model(random_init("tiny", tmp_path / "ref2", seed=2))
    assert first["weights.safetensors"] != second["weights.safetensors"]  # the two results differ
    assert _model(out) == first  # the first writer's result, whole, with nothing of the second
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]  # no staging left


def test_two_exports_to_one_out(tmp_path, tiny_model_dir):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "work" / "onnx"
    out.parent.mkdir()
    common = ["export", tiny_model_dir, "--out", out, "--check-sizes", "32", "--check-batches", "1",
              "--no-seg-head"]
    result = _race(tmp_path, out, common + ["--fp16"], common)
    _assert_lost(*result, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fp16" in manifest["precisions"]  # the first writer's (--fp16) result was kept
    assert set(manifest["files"]) <= set(_files(out)) and {"image.fp16.onnx", "text.fp16.onnx"} <= set(_files(out))
    # Every file matches the manifest's checksums: one writer's files, not a mix.
    check = subprocess.run([sys.executable, "-m", "clippy_rt", "info", str(out)], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["onnx"]


KILLED_WRITER = """
import sys, time
from clippy_rt.formats.atomic import atomic_write

def write(handle):
    handle.write(b"half of it")
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

atomic_write(sys.argv[1], write)
"""


def _writer_in_the_middle(target: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline() == "writing\n"
    return process


def _temporaries(folder: Path, pid: int):
    return [p for p in folder.iterdir() if p.name.startswith(".") and f".{pid}." in p.name]


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "labels.png"
    killed = _writer_in_the_middle(target)
    live = _writer_in_the_middle(target)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        stray = _temporaries(tmp_path, killed.pid)
        assert len(stray) == 1 and stray[0].read_bytes() == b"half of it"  # SIGKILL: nothing ran
        kept = _temporaries(tmp_path, live.pid)
        assert len(kept) == 1
        # The temporary of a dead writer of another file ("labels.png.5") is not this write's to judge.
        other = tmp_path / f".labels.png.5.{killed.pid}.0123456789ab.tmp"
        other.write_bytes(b"x")
        atomic_write_bytes(target, b"complete")
        assert target.read_bytes() == b"complete"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["labels.png", kept[0].name, other.name])
    finally:
        live.kill()
        live.wait()
        killed.stdout.close()
        live.stdout.close()
