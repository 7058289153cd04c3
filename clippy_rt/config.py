"""Model configuration: frozen dataclasses, saved as ``config.json`` in a model directory.

Architecture arguments (what the weights are shaped like) and metadata (mean/std,
default input size, prompt template, where the weights came from) are kept in
separate fields so that a converter can fill one without guessing the other.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

from . import limits
from .errors import ConfigError
from .validate import check_positive_int

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

POOLINGS = ("max", "cls")
FFN_KINDS = ("relu", "gated-gelu")
CONFIG_VERSION = 1


@dataclass(frozen=True)
class ImageTowerConfig:
    """ViT image tower (timm ``vit_base_patch16_224`` layout, pre-norm, one class token)."""

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    norm_eps: float = 1e-6
    # Side of the square patch grid the position embedding was trained for.
    pos_grid: int = 14
    # "max": max over tokens (CLIPpy); "cls": the class token (the CLIP-style ablation).
    pooling: str = "max"
    # Whether the class token takes part in the max (the published checkpoint was trained with it).
    pool_include_cls: bool = True
    mean: Tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: Tuple[float, float, float] = OPENAI_CLIP_STD
    image_size: int = 224

    def __post_init__(self) -> None:
        _positive(self, "patch_size", "width", "depth", "heads", "mlp_dim", "pos_grid", "image_size")
        _at_most(self, depth=limits.MAX_DEPTH, width=limits.MAX_WIDTH, mlp_dim=limits.MAX_WIDTH,
                 heads=limits.MAX_HEADS, image_size=limits.MAX_INPUT_SIDE, patch_size=limits.MAX_INPUT_SIDE,
                 pos_grid=limits.MAX_INPUT_SIDE)
        if self.width % self.heads:
            raise ConfigError(f"image width {self.width} is not divisible by heads {self.heads}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"image pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std must be 3 values with std > 0, got {self.mean} / {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass(frozen=True)
class TextTowerConfig:
    """T5 encoder text tower with mean pooling and an optional bias-free Dense projection."""

    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    heads: int = 12
    depth: int = 12
    ffn: str = "relu"
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm_eps: float = 1e-6
    max_length: int = 256
    projection: bool = True
    projection_dim: int = 768
    pad_id: int = 0
    eos_id: int = 1
    unk_id: int = 2

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "d_model", "d_kv", "d_ff", "heads", "depth",
                  "relative_buckets", "relative_max_distance", "max_length", "projection_dim")
        _at_most(self, depth=limits.MAX_DEPTH, d_model=limits.MAX_WIDTH, d_kv=limits.MAX_WIDTH,
                 d_ff=limits.MAX_WIDTH, projection_dim=limits.MAX_WIDTH, heads=limits.MAX_HEADS,
                 vocab_size=limits.MAX_VOCAB, max_length=limits.MAX_TEXT_LENGTH,
                 relative_buckets=limits.MAX_RELATIVE_BUCKETS, relative_max_distance=limits.MAX_TEXT_LENGTH)
        if self.ffn not in FFN_KINDS:
            raise ConfigError(f"text ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.max_length < 2:
            raise ConfigError(f"text max_length must be >= 2 (room for EOS), got {self.max_length}")

    @property
    def embed_dim(self) -> int:
        return self.projection_dim if self.projection else self.d_model


@dataclass(frozen=True)
class ClippyConfig:
    """The whole model: both towers, the prompt template and where the weights came from."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    prompt_template: str = "a photo of {article} {}"
    # log of the initial logit scale (1/0.07); the checkpoint's value replaces it.
    logit_scale_init: float = 2.659260036932778
    arch: str = "clippy-b16"
    random_weights: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.image.width != self.text.embed_dim:
            raise ConfigError(
                f"image embedding width {self.image.width} does not match text embedding width "
                f"{self.text.embed_dim}: the towers must share one embedding space")
        if self.parameter_estimate() > limits.MAX_PARAMETERS:
            raise ConfigError(f"this config describes about {self.parameter_estimate():,} parameters, more "
                              f"than the {limits.MAX_PARAMETERS:,} clippy-rt loads")
        if not isinstance(self.prompt_template, str) or "{}" not in self.prompt_template:
            raise ConfigError(f"prompt_template must contain '{{}}', got {self.prompt_template!r}")

    @property
    def embed_dim(self) -> int:
        return self.image.width

    def parameter_estimate(self) -> int:
        """Weights of both towers, to within norms and biases."""
        image, text = self.image, self.text
        vit = image.depth * (4 * image.width ** 2 + 2 * image.width * image.mlp_dim)
        inner = text.heads * text.d_kv
        ffn_inputs = 2 if text.ffn == "gated-gelu" else 1
        t5 = (text.depth * (4 * text.d_model * inner + (ffn_inputs + 1) * text.d_model * text.d_ff)
              + text.vocab_size * text.d_model + text.d_model * text.projection_dim)
        return vit + t5

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config_version"] = CONFIG_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ClippyConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config_version {version} is not supported (expected {CONFIG_VERSION})")
        try:
            image = ImageTowerConfig(**_known(ImageTowerConfig, data.pop("image", {}), "image"))
            text = TextTowerConfig(**_known(TextTowerConfig, data.pop("text", {}), "text"))
            return cls(image=image, text=text, **_known(cls, data, "model"))
        except TypeError as exc:
            raise ConfigError(f"invalid config: {exc}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ClippyConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        check_positive_int(f"{type(obj).__name__}.{name}", getattr(obj, name), error=ConfigError)


def _at_most(obj: Any, **bounds: int) -> None:
    for name, bound in bounds.items():
        value = getattr(obj, name)
        if value > bound:
            raise ConfigError(f"{type(obj).__name__}.{name} is {value:,}, above the limit of {bound:,}")


def _known(cls: type, data: Dict[str, Any], what: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{what} config must be a JSON object")
    names = {f.name for f in dataclasses.fields(cls)} - {"image", "text"}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {what} config keys: {', '.join(unknown)}")
    out = dict(data)
    for key in ("mean", "std"):
        if key in out and isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def clippy_b16() -> ClippyConfig:
    """The paper's model: DINO ViT-B/16 image tower, Sentence-T5 base text tower."""
    return ClippyConfig()


def tiny() -> ClippyConfig:
    """A few-kilobyte model of the same architecture, for tests."""
    return ClippyConfig(
        image=ImageTowerConfig(patch_size=8, width=32, depth=2, heads=2, mlp_dim=64, pos_grid=4,
                               image_size=32),
        text=TextTowerConfig(vocab_size=512, d_model=32, d_kv=8, d_ff=64, heads=4, depth=2,
                             relative_buckets=8, relative_max_distance=16, max_length=32,
                             projection=True, projection_dim=32),
        arch="tiny",
    )


ARCHITECTURES = {"clippy-b16": clippy_b16, "tiny": tiny}


def architecture(name: str) -> ClippyConfig:
    """The named architecture's config (``clippy-b16`` or ``tiny``)."""
    try:
        return ARCHITECTURES[name]()
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def format_prompt(template: str, name: str) -> str:
    """Fill a template; ``{article}`` becomes "an" before a vowel and "a" otherwise."""
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return template.replace("{article}", article).replace("{}", name)
