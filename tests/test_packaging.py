"""A built wheel carries the package-dir mapped subpackages and the package data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_kernels_export_and_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("clippy_rt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("clippy_rt/kernels/seg_head.py", "clippy_rt/kernels/patch_pool.py",
                     "clippy_rt/export/onnx.py", "clippy_rt/cli/main.py", "clippy_rt/data/corpus.txt",
                     "clippy_rt/datasets/synthetic.py", "clippy_rt/bench/stats.py",
                     "clippy_rt/robotics/bag.py", "clippy_rt/robotics/node.py", "clippy_rt/text_cache.py",
                     "clippy_rt/serve/deployment.py", "clippy_rt/serve/client.py"):
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    # Installed, the namespace subpackages import from the installed copy, outside the checkout.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    code = ("import clippy_rt.kernels.seg_head as s, clippy_rt.export.seg_head_graph as e\n"
            "print(s.__file__); print(e.__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(site))).stdout
    assert [Path(line) for line in out.split()] == [site / "clippy_rt" / "kernels" / "seg_head.py",
                                                    site / "clippy_rt" / "export" / "seg_head_graph.py"]


def test_import_without_optional_dependencies():
    code = ("import sys\n"
            "for name in ('triton', 'onnxruntime', 'onnx', 'tensorrt', 'timm', 'transformers', 'ray'):\n"
            "    sys.modules[name] = None\n"
            "import clippy_rt, clippy_rt.kernels, clippy_rt.export, clippy_rt.serve.client, clippy_rt.serve.replica\n"
            "from clippy_rt.cli.main import build_parser\n"
            "build_parser()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wheel_build_warns_about_no_package_data(tmp_path):
    # setuptools warns for every folder of package data that `packages` does not list; the
    # demo model and the CUDA sources must ship all the same.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                           "-v", "-w", str(tmp_path)], check=True, capture_output=True, text=True, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert "absent from the `packages` configuration" not in output
    assert "Building wheel" in output or "Created wheel" in output  # -v showed the backend's output
    (wheel,) = tmp_path.glob("clippy_rt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("clippy_rt/data/demo/weights.safetensors", "clippy_rt/data/demo/config.json",
                     "clippy_rt/kernels/csrc/seg_head.cu"):
        assert expected in names, expected
