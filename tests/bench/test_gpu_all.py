"""benchmarks/gpu_all.sh in its CPU dry run (the real script, as far as it goes without a GPU),
its plan under small deadlines, and gpu_check's step limits and incremental report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_all.sh"
STEPS = ("build-wheel", "install", "import-check", "native", "gpu-tests", "gpu-check", "gpu-pipeline")
KEY_FILES = {"SUMMARY.md", "RESULTS.md", "gpu_check.md", "gpu_pipeline.md", "gpu_pipeline.json", "gpu-tests.xml"}
ARCHIVE = "gpu-check.tar.gz"
MAX_FILES = 8  # what a device tool brings back from $OUT
RESERVE_S = 10  # the script keeps this much of the deadline for packaging

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

PLAN = re.compile(r"^gpu_all plan \(.*?\): deadline (\d+) s = (.*)$", re.M)
STARTED = re.compile(r"^== ([a-z-]+): limit (\d+) s \(at (\d+) s of the (\d+) s deadline\)$", re.M)


def _load(name: str):
    """benchmarks/NAME.py as a module (registered, as its dataclasses need)."""
    module_name = f"_{name}_under_test"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _run(tmp_path: Path, *args: str, timeout: float = 240.0):
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(scratch))
    env.pop("GPU_ALL_DEADLINE_S", None)
    result = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    return result, out


def _plan(stdout: str):
    """(deadline, {step: share}, packaging seconds) from the plan line."""
    match = PLAN.search(stdout)
    assert match, stdout
    shares = {name: int(seconds) for name, seconds in re.findall(r"(?:^|\+ )([a-z-]+) (\d+) s", match.group(2))}
    return int(match.group(1)), {k: v for k, v in shares.items() if k != "packaging"}, shares["packaging"]


def _archive_names(out: Path):
    with tarfile.open(out / ARCHIVE) as archive:
        return {Path(name).name for name in archive.getnames()}


def _archived_text(out: Path, name: str) -> str:
    with tarfile.open(out / ARCHIVE) as archive:
        return archive.extractfile(f"gpu-check/{name}").read().decode("utf-8")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One full dry run, building the wheel from this tree: (completed process, $OUT)."""
    return _run(tmp_path_factory.mktemp("gpu-all"), "--dry-run", "--build-wheel")


@needs_bash
def test_dry_run_passes_every_step(dry_run):
    result, _ = dry_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for step in STEPS:
        assert re.search(rf"^   {step}: ok in \d+ s$", result.stdout, re.M), (step, result.stdout[-3000:])


@needs_bash
def test_dry_run_brings_back_the_archive_and_key_files_only(dry_run):
    result, out = dry_run
    names = {path.name for path in out.iterdir()}
    assert len(names) <= MAX_FILES and ARCHIVE in names, names
    assert names <= KEY_FILES | {ARCHIVE}, names
    archived = _archive_names(out)
    assert {f"{step}.log" for step in STEPS} <= archived, archived
    assert {"steps.log", "SUMMARY.md", "gpu-tests.xml", "gpu_check.md", "gpu_pipeline.json"} <= archived, archived


@needs_bash
def test_dry_run_summary_names_every_step(dry_run):
    _, out = dry_run
    summary = (out / "SUMMARY.md").read_text()
    for step in STEPS:
        assert f"== {step}: limit" in summary and f"   {step}: ok" in summary, step
    assert "gpu_all plan (dry run)" in summary


@needs_bash
def test_dry_run_steps_fit_the_deadline(dry_run):
    result, _ = dry_run
    deadline, shares, packaging = _plan(result.stdout)
    assert set(shares) == set(STEPS) and all(share > 0 for share in shares.values()), shares
    assert sum(shares.values()) + packaging <= deadline
    started = STARTED.findall(result.stdout)
    assert [name for name, *_ in started] == list(STEPS)
    for name, limit, at, step_deadline in started:
        assert int(step_deadline) == deadline
        assert int(at) + int(limit) <= deadline - RESERVE_S, (name, limit, at)


@needs_bash
def test_dry_run_checks_the_install_native_build_tests_and_benchmarks(dry_run):
    _, out = dry_run
    imports = _archived_text(out, "import-check.log")
    places = re.findall(r"^clippy_rt: (\S+) from (.+)$", imports, re.M)
    assert {name for name, _ in places} >= {"clippy_rt", "clippy_rt.kernels", "clippy_rt.export"}, imports
    for _, where in places:
        for place in where.split(", "):
            assert "/site/clippy_rt" in place and not place.startswith(str(ROOT)), place
    if shutil.which("cmake"):
        assert "configured" in _archived_text(out, "native.log")
    collected = re.search(r"^collected (\d+) gpu tests$", _archived_text(out, "gpu-tests.log"), re.M)
    assert collected and int(collected.group(1)) > 0
    assert "--native-lib" in _archived_text(out, "gpu-check.log")
    results = (out / "RESULTS.md").read_text()
    assert re.search(r"<!-- gpu-check:begin -->\n## Kernel GPU check\n\nDry run", results)
    assert re.search(r"<!-- gpu-pipeline:begin -->\n### GPU pipeline table\n\nGPU pipeline: \(dry run", results)
    assert json.loads((out / "gpu_pipeline.json").read_text())["rows"] == []


@needs_bash
def test_too_small_a_deadline_skips_steps_and_still_packages(tmp_path):
    result, out = _run(tmp_path, "--dry-run", "--deadline-s", "5", "--build-wheel", timeout=60)
    assert result.returncode != 0
    deadline, shares, packaging = _plan(result.stdout)
    assert deadline == 5 and sum(shares.values()) + packaging <= 5
    assert not STARTED.findall(result.stdout), result.stdout
    assert re.search(r"^== build-wheel: skipped: deadline: .* less than the \d+ s this step needs$",
                     result.stdout, re.M), result.stdout
    for step in STEPS:
        assert re.search(rf"^== {step}: skipped: ", result.stdout, re.M), step
    names = {path.name for path in out.iterdir()}
    assert len(names) <= MAX_FILES and ARCHIVE in names and "SUMMARY.md" in names, names
    assert {"steps.log", "SUMMARY.md"} <= _archive_names(out)
    summary = (out / "SUMMARY.md").read_text()
    assert all(f"== {step}: skipped" in summary for step in STEPS)


@needs_bash
def test_a_failing_step_sets_the_exit_status_and_the_steps_that_need_it_do_not_run(tmp_path):
    # The install step fails with a status of its own (7); the run must end with that status,
    # not with the 1 of the steps skipped after it.
    python = tmp_path / "python-failing-install"
    python.write_text("#!/usr/bin/env bash\n"
                      'case " $* " in *" install "*" --target "*) echo "install refused" >&2; exit 7 ;; esac\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    wheel = tmp_path / "clippy_rt-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=str(python), TMPDIR=str(tmp_path))
    env.pop("GPU_ALL_DEADLINE_S", None)
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(wheel)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 7, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"^   install: exit 7 after \d+ s$", result.stdout, re.M), result.stdout
    for step in STEPS[2:]:
        assert re.search(rf"^== {step}: skipped: needs ", result.stdout, re.M), step
    names = {path.name for path in out.iterdir()}
    assert len(names) <= MAX_FILES and ARCHIVE in names and "SUMMARY.md" in names, names
    assert "install refused" in _archived_text(out, "install.log")


@needs_bash
def test_plan_shares_are_clipped_to_the_deadline(tmp_path):
    previous = None
    for deadline in (20, 60, 100, 150, 300, 480, 900):
        result, out = _run(tmp_path, "--plan-only", "--build-wheel", "--deadline-s", str(deadline), timeout=30)
        assert result.returncode == 0, result.stderr
        planned_deadline, shares, packaging = _plan(result.stdout)
        assert planned_deadline == deadline and list(shares) == list(STEPS)
        assert sum(shares.values()) + packaging <= deadline, (deadline, shares)
        if previous is not None:  # a longer deadline never shortens a step
            assert all(shares[step] >= previous[step] for step in STEPS), (previous, shares)
        previous = shares
        assert not out.exists()  # the plan alone writes nothing
    assert _run(tmp_path, "--plan-only", "--deadline-s", "0", timeout=30)[0].returncode == 2


@needs_bash
def test_plan_builds_a_wheel_only_when_there_is_none(tmp_path):
    wheel = tmp_path / "clippy_rt-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    given = _plan(_run(tmp_path, "--plan-only", str(wheel), timeout=30)[0].stdout)[1]
    assert list(given) == list(STEPS[1:])
    # An unexpanded glob (dist/ not carried to the GPU machine) falls back to a build there.
    missing = _plan(_run(tmp_path, "--plan-only", "dist/clippy_rt-*.whl", timeout=30)[0].stdout)[1]
    assert list(missing) == list(STEPS)


def test_gpu_check_step_limits_never_exceed_what_is_left():
    gpu_check = _load("gpu_check")
    plans = [list(gpu_check.STEP_CAPS), ["seg_head", "patch_pool", "preprocess"], ["preprocess"]]
    for plan in plans:
        for budget in (0.0, 9.0, 25.0, 60.0, 160.0, 460.0, 1000.0):
            planned = gpu_check.planned_limits(plan, budget)
            assert sum(planned.values()) <= budget + 1e-9 or sum(planned.values()) == sum(
                gpu_check.STEP_CAPS[name] for name in plan)
            # Every step uses all the time it is given: the check still ends within the budget.
            elapsed = 0.0
            for name in plan:
                left = budget - elapsed
                limit = gpu_check.step_limit(name, plan, planned, left)
                assert limit <= max(0.0, left) and limit <= gpu_check.STEP_CAPS[name], (plan, budget, name)
                assert limit == 0.0 or limit >= gpu_check.STEP_MINIMUM
                elapsed += limit
            assert elapsed <= budget + 1e-9
    # Time an earlier step left unused goes to the next one.
    plan = ["seg_head", "patch_pool", "preprocess"]
    planned = gpu_check.planned_limits(plan, 80.0)
    assert gpu_check.step_limit("patch_pool", plan, planned, 80.0) == gpu_check.STEP_CAPS["patch_pool"]


def test_gpu_check_report_is_written_after_each_step(tmp_path):
    gpu_check = _load("gpu_check")
    results = tmp_path / "RESULTS.md"
    results.write_text(f"intro\n\n{gpu_check.BEGIN}\nold\n{gpu_check.END}\n\noutro\n")
    alone = tmp_path / "gpu_check.md"
    report = gpu_check.Report([results, alone], "GPU check header", pending=["seg_head", "patch_pool"])
    report.write()
    for path in (results, alone):
        text = path.read_text()
        assert "GPU check header" in text and "Steps not run (yet): seg_head, patch_pool" in text
    step = {"status": "ok", "seconds": 12.0, "output": "",
            "rows": [{"copy GB/s": 3000}, {"output": 448, "K": 21, "triton ms": 0.05}, {"tuned": {}}]}
    report.add(gpu_check.timing_section("Seg head", step), "seg_head")
    text = results.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\noutro\n") and "old" not in text
    assert "| output | K | triton ms |\n|---|---|---|\n| 448 | 21 | 0.05 |" in text
    assert "copy bandwidth in this process 3000 GB/s" in text
    assert "Steps not run (yet): patch_pool." in text and text.count(gpu_check.BEGIN) == 1
    report.add(gpu_check.timing_section("patch_pool", gpu_check.skipped_step("patch_pool", 3.0, 60.0)),
               "patch_pool")
    text = alone.read_text()
    assert "Steps not run" not in text and "skipped: 3 s of the 60 s budget left" in text


def test_gpu_check_and_pipeline_dry_runs_write_their_sections(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # gpu_pipeline puts benchmarks/ on it
    gpu_check = _load("gpu_check")
    section = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--dry-run", "--skip-tests", "--budget-s", "50", "--native-lib",
                           str(tmp_path / "missing.so"), "--write", str(section)]) == 0
    text = section.read_text()
    assert "Dry run" in text and "missing.so (given, not built here)" in text
    assert "seg_head 24 s, patch_pool 13 s, preprocess 13 s;" in text
    gpu_pipeline = _load("gpu_pipeline")
    assert gpu_pipeline.main(["--dry-run", "--out", str(tmp_path), "--batches", "1,4", "--budget-s", "40"]) == 0
    assert "B=4: 11 rows" in (tmp_path / "gpu_pipeline.md").read_text()
    assert json.loads((tmp_path / "gpu_pipeline.json").read_text())["rows"] == []
    capsys.readouterr()
    sys.modules.pop("gpu_check", None)
