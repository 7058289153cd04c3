"""The test environment's lock: write it from an environment, or list what moved against it.

    python tools/env_lock.py write tests/constraints.txt   # pin every installed distribution
    python tools/env_lock.py diff tests/constraints.txt    # what this environment has that differs

The lock is a pip constraints file (``name==version`` lines), read by ``make test`` with
``pip install -c``: it pins what gets installed without asking for anything to be installed.
``make test-latest`` installs the newest releases in a separate environment, runs the suite
there and prints ``diff`` against the lock, so a failure there names the packages that moved;
``make lock`` then writes the lock from that environment.

Installed distributions are read with importlib.metadata; everything but the project itself
is pinned, pip and setuptools included: ``make test`` installs pip from the lock, and passes
the lock as ``--build-constraint`` too, so the isolated build of the project uses the locked
setuptools.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple

NOT_PINNED = {"clippy-rt"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(?:#.*)?$")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of '-', '_' and '.' as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> Dict[str, str]:
    """Normalised name -> version of every distribution this interpreter sees (first on the path wins)."""
    found: Dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return {name: version for name, version in found.items() if name not in NOT_PINNED}


def read_lock(text: str, source: str = "lock") -> Dict[str, str]:
    """Normalised name -> version from ``name==version`` lines; comments and blank lines skipped.

    Raises ValueError naming the line for anything else (a range, a URL, a duplicate), since a
    lock that pins loosely protects nothing.
    """
    pins: Dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{source}:{number}: not an exact pin 'name==version': {raw!r}")
        name = normalize(match.group(1))
        if name in pins:
            raise ValueError(f"{source}:{number}: {match.group(1)} is pinned twice")
        pins[name] = match.group(2)
    return pins


def render_lock(pins: Dict[str, str], header: str) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join(lines + [f"{name}=={pins[name]}" for name in sorted(pins)]) + "\n"


def moved(lock: Dict[str, str], current: Dict[str, str]) -> List[Tuple[str, Optional[str], Optional[str]]]:
    """(name, locked version or None, installed version or None) for every difference, by name."""
    names = sorted(set(lock) | set(current))
    return [(name, lock.get(name), current.get(name)) for name in names if lock.get(name) != current.get(name)]


def describe(changes: List[Tuple[str, Optional[str], Optional[str]]], lock_path: str) -> str:
    if not changes:
        return f"the environment matches {lock_path}"
    lines = [f"{len(changes)} package(s) differ from {lock_path} (locked -> installed):"]
    for name, locked, current in changes:
        if locked is None:
            lines.append(f"  {name}: not locked -> {current} (new)")
        elif current is None:
            lines.append(f"  {name}: {locked} -> not installed")
        else:
            lines.append(f"  {name}: {locked} -> {current}")
    return "\n".join(lines)


HEADER = """Versions of the test environment known to pass `make test` (pip constraints: exact pins).
`make test` and .ci/run install pip, then everything else with `pip install -c
tests/constraints.txt --build-constraint tests/constraints.txt` (the second for the
setuptools that builds the project), so a new release elsewhere cannot change what the suite
runs against. Recorded on {date} with Python {python}
on {machine} Linux, CPU only; another Python or platform may lack some of these wheels
(then run `make test LOCK=` to install without the lock).
Refresh: `make test-latest` (the suite on the newest releases, in .venv-latest, then the list
of packages that moved), and when it passes, `make lock` (this file from .venv-latest).
Written by tools/env_lock.py; do not edit by hand."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["write", "diff"])
    parser.add_argument("lock", type=Path)
    args = parser.parse_args(argv)
    current = installed()
    if args.action == "write":
        header = HEADER.format(date=datetime.date.today().isoformat(), python=platform.python_version(),
                               machine=platform.machine())
        from clippy_rt.formats.atomic import atomic_write_bytes

        atomic_write_bytes(args.lock, render_lock(current, header).encode("utf-8"))
        print(f"wrote {len(current)} pins to {args.lock}")
        return 0
    try:
        lock = read_lock(args.lock.read_text(encoding="utf-8"), str(args.lock))
    except (OSError, ValueError) as exc:
        print(f"env_lock: {exc}", file=sys.stderr)
        return 2
    print(describe(moved(lock, current), str(args.lock)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
