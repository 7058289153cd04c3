"""Say what this machine can run, and why not; check engine directories against it.

    clippy-rt doctor [ENGINE_DIR ...] [--json] [--path DIR]

One line per part: Python; torch (version, CUDA build, device, compute capability,
memory); Triton (imports, and a tiny kernel compiled and run on the GPU, or in Triton's
interpreter with TRITON_INTERPRET=1); the CUDA C++ library (found, loads, ABI version);
onnxruntime (version, execution providers); TensorRT; on a Jetson the L4T / JetPack
release, memory, nvpmodel power mode and jetson_clocks; free disk at --path; and for each
ENGINE_DIR whether its engine.json matches this TensorRT and GPU.

Each line is ok, missing, mismatch, n/a (does not apply here) or error (could not be
inspected), followed by the command that fixes it where there is one. Exit status 0 when
everything could be inspected (even if parts are missing), 1 when a check failed.
"""

from __future__ import annotations

from pathlib import Path

from .common import print_json


def add_arguments(parser) -> None:
    parser.add_argument("engine_dirs", nargs="*", type=Path, metavar="ENGINE_DIR",
                        help="TensorRT engine directories to check against this machine")
    parser.add_argument("--path", type=Path, default=Path("."),
                        help="where engines and ONNX directories will be written, for the free-disk line "
                             "(default: the current directory)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from clippy_rt.doctor import Probe, diagnose, format_report

    report = diagnose(args.engine_dirs, Probe(disk_path=args.path))
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0 if report.inspected_everything else 1
