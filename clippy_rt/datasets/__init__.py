"""Evaluation datasets: generated scenes (``synthetic``) and the PASCAL VOC layout (``voc``)."""

from clippy_rt.datasets.synthetic import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLOURS,
    EVAL_SEED_BASE,
    SHAPES,
    TRAIN_SEED_BASE,
    Scene,
    SyntheticScenes,
    class_names,
    eval_prompts,
    generate_scene,
    parse_spec,
)
from clippy_rt.datasets.voc import VOC_CLASSES, VOC_PROMPT_NAMES, VOCSegmentation, voc_prompts

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_PHRASES",
    "COLOURS",
    "EVAL_SEED_BASE",
    "SHAPES",
    "TRAIN_SEED_BASE",
    "VOC_CLASSES",
    "VOC_PROMPT_NAMES",
    "Scene",
    "SyntheticScenes",
    "VOCSegmentation",
    "class_names",
    "eval_prompts",
    "generate_scene",
    "parse_spec",
    "voc_prompts",
]
