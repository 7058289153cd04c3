"""Working in a checkout's root never shadows an installed package: the top-level kernels/
and export/ folders are namespace folders (no __init__.py), which any installed regular
package of the same name beats, wherever it sits on sys.path."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_in_root(code: str, env=None) -> str:
    """``python -c code`` from the checkout's root: the root is sys.path[0], as for an
    interactive `python`, a notebook or `python -m pytest` started there."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_hugging_face_kernels_resolves_to_site_packages_and_t5_builds():
    code = ("import kernels, transformers\n"
            "from kernels import CUDAProperties  # what transformers' hub_kernels imports\n"
            "config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,\n"
            "                               num_heads=4, relative_attention_num_buckets=8)\n"
            "model = transformers.T5EncoderModel(config)\n"
            "print(kernels.__file__)\n")
    location = Path(run_in_root(code).splitlines()[-1]).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in location.parents, location
    assert location.parent != ROOT / "kernels", location


def test_installed_packages_named_kernels_and_export_win_over_the_folders(tmp_path):
    # Regular packages of both names on PYTHONPATH, which comes after the root on sys.path.
    for name in ("kernels", "export"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"ORIGIN = 'installed {name}'\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = run_in_root("import kernels, export; print(kernels.ORIGIN); print(export.ORIGIN)", env)
    assert out.splitlines() == ["installed kernels", "installed export"]


def test_the_folders_are_the_installed_subpackages_in_a_checkout():
    code = ("import clippy_rt.kernels.seg_head as s, clippy_rt.export.seg_head_graph as e\n"
            "print(s.__file__); print(e.__file__)\n")
    seg_head, graph_module = (Path(line).resolve() for line in run_in_root(code).splitlines())
    assert seg_head == ROOT / "kernels" / "seg_head.py"
    assert graph_module == ROOT / "export" / "seg_head_graph.py"
    for folder in ("kernels", "export"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py makes it a shadowing package"
