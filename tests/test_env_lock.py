"""tools/env_lock.py: the lock's format, what counts as moved, and the lock that ships."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "tests" / "constraints.txt"
_spec = importlib.util.spec_from_file_location("env_lock", ROOT / "tools" / "env_lock.py")
env_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(env_lock)


def test_read_lock_normalises_names_and_skips_comments():
    text = "# header\n\nTorch==2.14.1\nruamel.yaml==0.18.6  # note\nmcap_ros2_support==0.5.5\n"
    assert env_lock.read_lock(text) == {"torch": "2.14.1", "ruamel-yaml": "0.18.6", "mcap-ros2-support": "0.5.5"}


@pytest.mark.parametrize("line", ["torch>=2.1", "torch", "torch==2.1; python_version<'3.12'",
                                  "https://example.invalid/x.whl", "-e ."])
def test_read_lock_refuses_loose_pins(line):
    with pytest.raises(ValueError, match="lock:1"):
        env_lock.read_lock(line + "\n")


def test_read_lock_refuses_a_package_pinned_twice():
    with pytest.raises(ValueError, match="pinned twice"):
        env_lock.read_lock("ruamel.yaml==1\nruamel_yaml==2\n")


def test_moved_lists_upgrades_new_and_missing_packages():
    lock = {"transformers": "5.24.0", "timm": "1.0.31", "gone": "1.0"}
    current = {"transformers": "5.25.0", "timm": "1.0.31", "kernels": "0.19.1"}
    assert env_lock.moved(lock, current) == [("gone", "1.0", None), ("kernels", None, "0.19.1"),
                                             ("transformers", "5.24.0", "5.25.0")]
    text = env_lock.describe(env_lock.moved(lock, current), "L")
    assert "3 package(s) differ from L" in text
    assert "transformers: 5.24.0 -> 5.25.0" in text and "kernels: not locked -> 0.19.1 (new)" in text
    assert "gone: 1.0 -> not installed" in text
    assert env_lock.describe([], "L") == "the environment matches L"


def test_written_lock_reads_back(tmp_path):
    pins = {"torch": "2.14.1", "numpy": "2.4.6"}
    text = env_lock.render_lock(pins, "line one\n\nline three")
    assert text.startswith("# line one\n#\n# line three\nnumpy==2.4.6\ntorch==2.14.1\n")
    assert env_lock.read_lock(text) == pins


def test_the_shipped_lock_pins_the_test_references_and_the_torch_pair():
    pins = env_lock.read_lock(LOCK.read_text(), str(LOCK))
    for name in ("torch", "torchvision", "numpy", "pytest", "timm", "transformers", "kernels", "onnx",
                 "onnxruntime", "ray", "mcap", "rosbags"):
        assert name in pins, name
    # The build tools too: make test installs pip from the lock and builds with its setuptools.
    assert "pip" in pins and "setuptools" in pins
    assert "clippy-rt" not in pins


def test_diff_command_names_what_moved(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("pytest==0.0.1\n")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "env_lock.py"), "diff", str(lock)],
                         capture_output=True, text=True, check=True).stdout
    import pytest as installed_pytest

    assert f"pytest: 0.0.1 -> {installed_pytest.__version__}" in out
    lock.write_text("pytest>=1\n")
    bad = subprocess.run([sys.executable, str(ROOT / "tools" / "env_lock.py"), "diff", str(lock)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not an exact pin" in bad.stderr
