"""Write a model directory with random weights (for tests, benchmarks and trying the tools).

The tokenizer is a SentencePiece model trained on a small built-in corpus. The config is
marked random, and every command that uses the model says so.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    from clippy_rt.config import ARCHITECTURES

    parser.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES), help="architecture")
    parser.add_argument("--out", required=True, type=Path, help="output model directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from clippy_rt.formats.random_init import random_init

    out = random_init(args.arch, args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a {args.arch} model with RANDOM weights to {out}")
    return 0
