"""Mutation testing of one module against its tests, with mutmut: ``make mutants MODULE=...``.

    python tools/mutants.py clippy_rt/stream.py tests/test_stream.py tests/test_frame_order.py \
        [--children 2] [--timeout 600] [--work build/mutants]

mutmut changes a copy of the package one small edit at a time (an operator, a constant, a
dropped argument) and runs the tests that reach the changed function; a mutant no test
notices ("survived") is either a gap in the tests or an edit that changes nothing
("equivalent"). The copy lives in ``--work/<module>`` (the checkout is never edited), with a
``setup.cfg`` naming the module and the tests, so one module's run takes minutes.

Prints the counts (killed, survived, timeouts, no tests) and the surviving mutants' names;
``cd <work dir> && mutmut show <name>`` shows one as a diff. Exits 0 when the run finished
(survivors are reported, not fatal), 124 when ``--timeout`` stopped it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare(work: Path, module: str, tests: list) -> None:
    """A fresh copy of the package and tests in ``work`` with mutmut's configuration."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "clippy_rt", work / "clippy_rt", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    lines = ["[mutmut]", "source_paths = clippy_rt", f"only_mutate = {module}",
             "pytest_add_cli_args = -p no:cacheprovider -q",
             "pytest_add_cli_args_test_selection =", *(f"    {test}" for test in tests),
             "use_git_change_detection = false", "track_dependencies = false", ""]
    (work / "setup.cfg").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="the module to mutate, e.g. clippy_rt/stream.py")
    parser.add_argument("tests", nargs="+", help="test files (or node ids) that cover it")
    parser.add_argument("--children", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=int, default=600, help="stop the run after this many seconds")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "mutants")
    args = parser.parse_args(argv)
    if not (ROOT / args.module).is_file():
        parser.error(f"no module {args.module}")
    missing = [t for t in args.tests if not (ROOT / t.split("::")[0]).exists()]
    if missing:
        parser.error(f"no test file {missing[0]}")
    work = args.work / Path(args.module).stem
    prepare(work, args.module, args.tests)
    mutmut = [sys.executable, "-m", "mutmut"]
    # Its own process group: a stopped run takes the mutants it forked with it.
    # One thread per mutant: the children are forked, and a fork of a process whose thread
    # pool is running can hang (a "timeout" that is no mutant's doing).
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = subprocess.Popen([*mutmut, "run", "--max-children", str(args.children)], cwd=work, env=env,
                           stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        run.wait(timeout=args.timeout)
        status = 0
    except subprocess.TimeoutExpired:
        print(f"mutants: stopped after {args.timeout} s; the counts cover the mutants run so far")
        status = 124
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run.wait()
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=work, check=False, stdout=subprocess.DEVNULL)
    stats_file = work / "mutants" / "mutmut-cicd-stats.json"
    if not stats_file.is_file():
        print("mutants: mutmut wrote no results (see its output by running it in", work, ")")
        return 1
    stats = json.loads(stats_file.read_text())
    listing = subprocess.run([*mutmut, "results"], cwd=work, check=False, capture_output=True, text=True).stdout
    survivors = "\n".join(line for line in listing.splitlines() if line.endswith(": survived"))
    print(f"{args.module}: {stats['killed']} killed, {stats['survived']} survived, {stats['timeout']} timed out, "
          f"{stats['no_tests']} not reached by the tests, of {stats['total']} mutants", flush=True)
    print(survivors.rstrip())
    return status


if __name__ == "__main__":
    sys.exit(main())
