"""clippy-rt: open-vocabulary segmentation and classification with CLIPpy.

Run `clippy-rt COMMAND --help` for a command's options.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

# Subcommand name -> module in this package; each module's docstring is its help, and it
# defines add_arguments(parser) and run(args) -> int. Modules are imported only when used.
COMMANDS = {
    "segment": "segment",
    "classify": "classify",
    "info": "info",
    "convert": "convert",
    "random-init": "random_init",
    "export": "export",
    "build": "build",
    "bench": "bench",
    "eval": "eval",
    "demo": "demo",
    "bag": "bag",
    "doctor": "doctor",
    "serve": "serve",
}


def _load(name: str):
    try:
        return importlib.import_module(f"clippy_rt.cli.{COMMANDS[name]}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("clippy_rt.cli."):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clippy-rt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        command = sub.add_parser(name, help=summary, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def _version() -> str:
    from clippy_rt import __version__
    return f"clippy-rt {__version__}"


def main(argv: Optional[List[str]] = None) -> int:
    # Ctrl-C and a closed stdout are handled from the first line: building the parser
    # imports torch (seconds), and an interrupt there deserves one line, not a traceback.
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        print("clippy-rt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        return 0


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (``clippy-rt info | head``); if so, point stdout at
    the null device so the rest of the output (and the flush at exit) goes nowhere quietly."""
    try:
        sys.stdout.flush()
        closed = _reader_gone(sys.stdout.fileno())
    except BrokenPipeError:
        closed = True
    except (OSError, ValueError):
        return False
    if not closed:
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return True


def _reader_gone(descriptor: int) -> bool:
    """Whether ``descriptor`` is a pipe whose reading end is closed (POLLERR on Linux and
    macOS; False where poll does not exist)."""
    import select

    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line on stderr, like the errors (no source line under them)."""
    text = " ".join(str(message).split())
    return f"clippy-rt: warning: {text}\n"


def _main(argv: Optional[List[str]]) -> int:
    import warnings

    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = previous


def _run(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from clippy_rt.errors import ClippyError

    from .signals import Terminated, terminate_unwinds

    try:
        with terminate_unwinds():
            return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("clippy-rt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("clippy-rt: terminated", file=sys.stderr)
        return 143
    except MemoryError:
        if getattr(args, "debug", False):
            raise
        print(f"clippy-rt {args.command}: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:
        if _stdout_closed():
            return 0
        if getattr(args, "debug", False):
            raise
        print(f"clippy-rt {args.command}: error: broken pipe", file=sys.stderr)
        return 1
    except (ClippyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"clippy-rt {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
