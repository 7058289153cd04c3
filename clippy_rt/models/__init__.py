"""Model code: the ViT image tower, the T5 text tower and the combined model."""

from .clippy import ClippyModel
from .t5 import TextTower
from .vit import VisionTower

__all__ = ["ClippyModel", "TextTower", "VisionTower"]
