"""The ``Engine`` API shared by every backend.

A backend supplies two tensor functions, ``_image_forward(pixels) -> (patch [B, N, D],
pooled [B, D])`` and ``_text_forward(input_ids, attention_mask) -> [K, D]``; everything
else (pre-processing, prompt sets, the text cache, segmentation and classification
post-processing) lives here, so the torch, ONNX Runtime and TensorRT backends return
identical types.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .config import ClippyConfig
from .errors import BackendUnavailableError, InputError
from .images import Prepared, as_pixel_batch, check_input_size, prepare_batch
from .numerics import check_finite
from .prompts import PromptSet, PromptsLike, build_prompt_set, class_logits, prompts_to_classes
from .tokenizer import Tokenizer

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESIZE_MODES = ("squash", "crop", "letterbox")


@dataclass
class ImageFeatures:
    """``patch``: float32 [B, h, w, D], each vector L2-normalised; ``pooled``: float32 [B, D].

    ``prepared`` describes how each input was resized (empty for pre-processed tensors).
    """

    patch: torch.Tensor
    pooled: torch.Tensor
    prepared: List[Prepared] = field(default_factory=list)

    @property
    def grid(self) -> Tuple[int, int]:
        return self.patch.shape[1], self.patch.shape[2]


@dataclass
class Segmentation:
    """``labels``: int64 [H, W], an index into ``prompts`` (the class names);
    ``scores``: float32 [H, W], the winning class's cosine similarity.

    With ``resize="crop"`` the labels cover ``crop_box`` = (top, left, height, width) of
    the original image; otherwise the whole original image.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    prompts: Tuple[str, ...]
    crop_box: Optional[Tuple[int, int, int, int]] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)

    def fractions(self) -> Dict[str, float]:
        """Pixel fraction of each class."""
        counts = torch.bincount(self.labels.flatten(), minlength=len(self.prompts)).double()
        total = max(1, self.labels.numel())
        return {name: float(counts[i]) / total for i, name in enumerate(self.prompts)}


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"invalid device {device!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device {str(device)!r} requested but CUDA is not available on this "
                                      "machine (use device='cpu')")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")
    return device


def resolve_precision(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


class Engine:
    """Base engine. Subclasses set ``backend`` and implement the two forward functions."""

    backend = "abstract"

    def __init__(self, config: ClippyConfig, tokenizer: Tokenizer, logit_scale: float,
                 device: torch.device, precision: str, source: Path) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.logit_scale = float(logit_scale)
        self.device = device
        self.precision = precision
        self.source = Path(source)
        self._text_cache: Dict[str, torch.Tensor] = {}
        self._cache_lock = threading.Lock()

    # -- backend hooks ---------------------------------------------------------------
    def _image_forward(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _text_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.config.random_weights

    def __repr__(self) -> str:
        random = ", random weights" if self.random_weights else ""
        return (f"{type(self).__name__}(arch={self.config.arch!r}, backend={self.backend!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r}{random})")

    def prepare(self, images, size=None, resize: str = "squash", bgr: bool = False
                ) -> Tuple[torch.Tensor, List[Prepared]]:
        """Images (PIL, uint8 HWC arrays, paths, or a float tensor already normalised)
        -> (pixels float32 [B, 3, H, W], per-image Prepared; empty for tensors)."""
        if resize not in RESIZE_MODES:
            raise InputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if size is not None:
            check_input_size(size, self.config.image.patch_size)
        if isinstance(images, torch.Tensor):
            return as_pixel_batch(images, self.config.image.patch_size), []
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InputError("no images given")
        cfg = self.config.image
        return prepare_batch(images, cfg.image_size if size is None else size, mode=resize, mean=cfg.mean,
                             std=cfg.std, patch_size=cfg.patch_size, bgr=bgr)

    def encode_image(self, images, size=None, resize: str = "squash", bgr: bool = False) -> ImageFeatures:
        """Returns ImageFeatures: ``patch`` float32 [B, h, w, D] and ``pooled`` [B, D], L2-normalised."""
        pixels, prepared = self.prepare(images, size, resize, bgr)
        patch, pooled = self._image_forward(pixels)
        check_finite(patch, "patch features")
        check_finite(pooled, "image embeddings")
        patch_size = self.config.image.patch_size
        h, w = pixels.shape[-2] // patch_size, pixels.shape[-1] // patch_size
        patch = patch.float().reshape(patch.shape[0], h, w, patch.shape[-1])
        return ImageFeatures(patch=patch, pooled=pooled.float(), prepared=prepared)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Returns L2-normalised text embeddings, float32 [K, D] on the engine's device.

        Embeddings are cached per prompt text; only prompts not seen before are encoded.
        """
        if isinstance(prompts, str):
            raise InputError("encode_text takes a list of prompts, got one string; wrap it in a list")
        prompts = [p if isinstance(p, str) else _bad_prompt(p) for p in prompts]
        if not prompts:
            raise InputError("the prompt list is empty: give at least one prompt")
        for index, text in enumerate(prompts):
            if not text.strip():
                raise InputError(f"prompt {index} is empty")
        with self._cache_lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            input_ids, attention_mask = self.tokenizer.encode(missing)
            embeds = self._text_forward(input_ids, attention_mask).float()
            check_finite(embeds, "text embeddings")
            with self._cache_lock:
                for text, embed in zip(missing, embeds):
                    self._text_cache[text] = embed
        with self._cache_lock:
            return torch.stack([self._text_cache[p] for p in prompts])

    def clear_text_cache(self) -> None:
        with self._cache_lock:
            self._text_cache.clear()

    def segment(self, images, prompts: PromptsLike, size=None, template: Optional[str] = None,
                resize: str = "squash", bgr: bool = False, seg_backend: str = "auto"):
        """Open-vocabulary segmentation. One image -> Segmentation; a list -> a list of them.

        ``prompts`` is a list of class prompts or a ``{class: [prompt, ...]}`` mapping (a
        class's logit is the max over its prompts). Labels come back at the original
        image size (the crop's, with ``resize="crop"``; the tensor's, for a tensor input).
        """
        from .kernels.seg_head import seg_head

        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, torch.Tensor) and images.ndim == 4)
        prompt_set = build_prompt_set(prompts, template)
        timings = {}
        start = time.perf_counter()
        pixels, prepared = self.prepare(images, size, resize, bgr)
        timings["preprocess"] = _ms(start)
        start = time.perf_counter()
        text = self.encode_text(list(prompt_set.prompts))
        timings["text"] = _ms(start)
        start = time.perf_counter()
        features = self.encode_image(pixels)
        self._sync()
        timings["image"] = _ms(start)

        start = time.perf_counter()
        # Images that share an output size and window (frames of one camera) go through
        # the seg head in one call.
        groups: Dict[tuple, List[int]] = {}
        for index in range(pixels.shape[0]):
            if prepared:
                key = (tuple(prepared[index].out_size), prepared[index].window)
            else:
                key = (tuple(pixels.shape[-2:]), None)
            groups.setdefault(key, []).append(index)
        results: List[Optional[Segmentation]] = [None] * pixels.shape[0]
        for (out_size, window), indices in groups.items():
            patch = features.patch[indices].to(text.device)
            labels, scores = seg_head(patch, text, out_size, window=window, return_scores=True,
                                      backend=seg_backend)
            labels = prompts_to_classes(labels, prompt_set).cpu()
            scores = scores.float().cpu()
            for row, index in enumerate(indices):
                results[index] = Segmentation(
                    labels=labels[row], scores=scores[row], prompts=prompt_set.classes,
                    crop_box=prepared[index].crop_box if prepared else None)
        timings["postprocess"] = _ms(start)
        for result in results:
            result.timings_ms = dict(timings)
        return results[0] if single else results

    def classify(self, images, labels: PromptsLike, top_k: int = 5, template: Optional[str] = None,
                 size=None, resize: str = "crop", bgr: bool = False):
        """Zero-shot classification. One image -> [(label, probability), ...] (top_k, best
        first); a list -> one such list per image. probs = softmax(exp(logit_scale) * <e, T>)."""
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {top_k!r}")
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, torch.Tensor) and images.ndim == 4)
        prompt_set = build_prompt_set(labels, template)
        text = self.encode_text(list(prompt_set.prompts))
        pooled = self.encode_image(images, size, resize, bgr).pooled.to(text.device)
        logits = class_logits(pooled @ text.T, prompt_set) * torch.exp(torch.tensor(self.logit_scale))
        probs = logits.softmax(dim=-1).cpu()
        k = min(top_k, len(prompt_set.classes))
        values, indices = probs.topk(k, dim=-1)
        out = [[(prompt_set.classes[int(i)], float(v)) for v, i in zip(vrow, irow)]
               for vrow, irow in zip(values, indices)]
        return out[0] if single else out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _bad_prompt(value) -> str:
    raise InputError(f"prompts must be strings, got {type(value).__name__}")


class TorchEngine(Engine):
    """The reference backend: the PyTorch model, eager."""

    backend = "torch"

    def __init__(self, model, config: ClippyConfig, tokenizer: Tokenizer, device: torch.device,
                 precision: str, source: Path) -> None:
        super().__init__(config, tokenizer, float(model.logit_scale.detach()), device, precision, source)
        self.dtype = resolve_precision(precision)
        self.model = model.to(device=device, dtype=self.dtype).eval()

    @torch.inference_mode()
    def _image_forward(self, pixels):
        return self.model.encode_image(pixels.to(self.device, self.dtype))

    @torch.inference_mode()
    def _text_forward(self, input_ids, attention_mask):
        return self.model.encode_text(input_ids.to(self.device), attention_mask.to(self.device))
