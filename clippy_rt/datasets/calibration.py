"""Calibration sets for post-training quantisation: images and prompts whose activation ranges a quantiser measures."""

from __future__ import annotations

from pathlib import Path

from clippy_rt.errors import InputError

CALIBRATION_COUNT = 64
CALIBRATION_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def calibration_set(directory=None, count: int = CALIBRATION_COUNT):
    """(images, prompts, source): the first ``count`` images of ``directory`` (sorted by
    name) with the evaluation prompts, or without one ``count`` generated scenes of training
    seeds (never an evaluation seed) with their captions. ``source`` says which."""
    from .synthetic import TRAIN_SEED_BASE, eval_prompts, generate_scene

    if count < 1:
        raise InputError(f"--calibration-count must be >= 1, got {count}")
    if directory is None:
        scenes = [generate_scene(TRAIN_SEED_BASE + index) for index in range(count)]
        return ([scene.image for scene in scenes], [scene.caption for scene in scenes],
                f"generated scenes, seeds {TRAIN_SEED_BASE}..{TRAIN_SEED_BASE + count - 1}")
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in CALIBRATION_SUFFIXES)[:count]
    if not paths:
        raise InputError(f"{directory} holds no images ({', '.join(CALIBRATION_SUFFIXES)})")
    prompts = [prompt for group in eval_prompts().values() for prompt in group]
    return paths, prompts, f"{len(paths)} images of {Path(directory).name}"
