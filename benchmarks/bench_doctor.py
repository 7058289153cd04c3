"""How long `clippy-rt doctor` takes to answer, end to end, as a user runs it.

    python benchmarks/bench_doctor.py [--runs 7] [--interpret]

Each run starts a fresh `python -m clippy_rt doctor --json` process (so Python start-up and
the torch import are included, as they are for a user) and records its wall time and the
seconds the checks themselves took (the report's ``seconds``). With --interpret the runs set
TRITON_INTERPRET=1, so the Triton check really runs its kernel (in the interpreter). Reported:
median, p90 (nearest rank) and max in seconds, and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--interpret", action="store_true", help="run with TRITON_INTERPRET=1")
    args = parser.parse_args(argv)

    from clippy_rt.bench.stats import summarize

    env = dict(os.environ)
    if args.interpret:
        env["TRITON_INTERPRET"] = "1"
    load_before = os.getloadavg()[0]
    walls, checks = [], []
    for index in range(args.runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "clippy_rt", "doctor", "--json"], capture_output=True,
                              text=True, env=env, check=False)
        walls.append((time.perf_counter() - start) * 1000.0)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 1
        report = json.loads(done.stdout)
        checks.append(report["seconds"] * 1000.0)
        print(f"run {index + 1}/{args.runs}: {walls[-1] / 1000:.2f} s wall, checks {checks[-1] / 1000:.2f} s",
              file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    print(f"clippy-rt doctor, {args.runs} runs{' with TRITON_INTERPRET=1' if args.interpret else ''}; "
          f"{os.cpu_count()} logical CPUs; 1-minute load average {load_before:.2f} before, {load_after:.2f} after\n")
    print("| measure | median s | p90 s | max s |")
    print("|---|---|---|---|")
    for name, samples in (("wall time of the command", walls), ("the checks alone", checks)):
        stats = summarize(samples)
        print(f"| {name} | {stats.median / 1000:.2f} | {stats.p90 / 1000:.2f} | {stats.max / 1000:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
