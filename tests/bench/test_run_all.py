"""benchmarks/run_all.py: the delimited RESULTS.md section and a quick run with plots."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the defining module up in sys.modules while the file executes.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_section_is_created_in_a_new_file(run_all, tmp_path):
    path = tmp_path / "RESULTS.md"
    text = run_all.update_results(path, "cpu", "### CPU matrix\n\nnumbers\n")
    assert text.startswith("# Benchmark results\n")
    assert text.count(run_all.BEGIN) == 1 and text.count(run_all.END) == 1
    assert "numbers" in text and "### GPU matrix" in text


def test_only_the_section_and_only_its_kind_change(run_all, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\nKernel notes by hand.\n")
    run_all.update_results(path, "gpu", "### GPU matrix\n\ngpu numbers\n")
    with path.open("a") as handle:
        handle.write("\n## Accuracy\n\nwritten by another tool\n")
    run_all.update_results(path, "cpu", "### CPU matrix\n\ncpu numbers v1\n")
    text = run_all.update_results(path, "cpu", "### CPU matrix\n\ncpu numbers v2\n")
    assert text.startswith("# Results\n\nKernel notes by hand.\n")
    assert text.endswith("\n## Accuracy\n\nwritten by another tool\n")
    assert "gpu numbers" in text and "cpu numbers v2" in text and "v1" not in text
    assert text.count(run_all.BEGIN) == 1 and text.count("<!-- bench:cpu:begin -->") == 1


def test_a_broken_section_is_not_overwritten(run_all, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(f"intro\n{run_all.BEGIN}\nhalf a section\n")
    with pytest.raises(ValueError, match="without a following"):
        run_all.update_results(path, "cpu", "body")
    assert path.read_text() == f"intro\n{run_all.BEGIN}\nhalf a section\n"


def test_quick_run_writes_results_and_plots(run_all, tmp_path):
    code = run_all.main(["--quick", "--backends", "torch", "--device", "cpu", "--out", str(tmp_path),
                         "--threads", "1", "--no-progress"])
    assert code == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "### CPU matrix" in text and "| end-to-end | segment | torch |" in text
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["cpu_end_to_end_breakdown.png", "cpu_latency_vs_batch.png", "cpu_seg_head_vs_size.png"]
    for name in plots:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{name})" in text
