"""The ``Engine`` API shared by every backend, as public stages.

    prepare       images -> PreparedBatch (pixels [B, 3, H, W] + how each was resized)
    encode_image  PreparedBatch (or images) -> ImageFeatures (patch [B, h, w, D], pooled [B, D])
    encode_text   prompts -> text embeddings float32 [K, D] (cached per prompt)
    label         patch features + text rows (+ class map) -> labels, scores [B, H, W] on the device
    decode        ImageFeatures + text + PromptSet -> [Segmentation] (``label`` per output size)
    decode_classes  ImageFeatures + text + PromptSet -> top-k (class, probability) per image

``segment`` and ``classify`` compose them; so does anything outside the engine (the
benchmark, streaming, serving, robotics). An engine is composed of two runners
(``clippy_rt.runner``): ``image_runner`` for the image graph and ``text_runner`` for the
text graph of the I/O spec, so the torch, ONNX Runtime and TensorRT backends
(``clippy_rt.backends``) validate the same way and return identical types. What the
towers compute: docs/MODEL.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .config import ClippyConfig
from .device_prep import frames_of, prepare_frames, resampler_of, to_host, use_device_path
from .errors import BackendUnavailableError, InputError
from .formats.identity import artifact_identity
from .images import RESIZE_MODES, as_pixel_batch, check_input_size, prepare_batch
from .numerics import check_finite
from .prompts import PromptSet, PromptsLike, class_logits, model_prompt_set
from .results import ImageFeatures, PreparedBatch, Segmentation, class_label_dtype, is_single
from .runner import Runner, image_feed, split_image_outputs, text_feed, text_output
from .text_cache import TextCache
from .tokenizer import Tokenizer
from .validate import check_positive_int


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


class Engine:
    """An image runner and a text runner (``clippy_rt.runner``) composed into the staged API.

    Built by a backend's loader (``clippy_rt.load``); ``backend`` is that backend's record
    (``clippy_rt.backends.BackendRecord``): the engine keeps its name, the dtype its image
    graph takes pixels in, whether a stream may capture CUDA graphs, and the artifact kind
    its identity is computed for. ``model`` is the torch module behind the runners, where
    the backend has one (None for exported graphs).
    """

    def __init__(self, image_runner: Runner, text_runner: Runner, tokenizer: Tokenizer, config: ClippyConfig,
                 *, backend, device: torch.device, precision: str, logit_scale: float,
                 source: Path, text_cache: Optional[TextCache] = None, model=None) -> None:
        self.image_runner = image_runner
        self.text_runner = text_runner
        self.tokenizer = tokenizer
        self.config = config
        self.backend = backend.name
        self.cuda_graphs = backend.cuda_graphs
        self.pixel_dtype = backend.pixel_dtype(precision)
        self._artifact_kind = backend.artifact_kind
        self.device = device
        self.precision = precision
        self.logit_scale = float(logit_scale)
        self.source = Path(source)
        self.model = model
        self.text_cache = text_cache if text_cache is not None else TextCache()
        self.text_cache.device = device

    def identity(self, memo_dir: Optional[Path] = None) -> str:
        """The sha256 naming the loaded artifact (``clippy_rt.formats.identity``); the on-disk
        text cache is keyed by it. ``memo_dir`` remembers weight digests between runs."""
        return artifact_identity(self.source, self._artifact_kind, memo_dir)

    def _image_forward(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return split_image_outputs(self.image_runner.infer_torch(image_feed(pixels)))

    def _text_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return text_output(self.text_runner.infer_torch(text_feed(input_ids, attention_mask)))

    # -- public API --------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.config.random_weights

    @property
    def template(self) -> str:
        """The model's prompt template (its config's ``prompt_template``), which ``segment``,
        ``classify`` and ``stream`` fill prompts into unless given another template."""
        return self.config.prompt_template

    def prompt_set(self, prompts: PromptsLike, template: Optional[str] = None) -> PromptSet:
        """``prompts`` as the PromptSet ``segment`` / ``classify`` / ``stream`` use: a list or
        ``{class: [prompt, ...]}`` filled into ``template``, or into the model's template
        when ``template`` is None (``template="{}"`` keeps the prompts verbatim); a PromptSet
        is used as built unless ``template`` is given. InputError for a bad set."""
        return model_prompt_set(prompts, template, self.template)

    def __repr__(self) -> str:
        random = ", random weights" if self.random_weights else ""
        return (f"Engine(arch={self.config.arch!r}, backend={self.backend!r}, "
                f"device={str(self.device)!r}, precision={self.precision!r}{random})")

    def prepare(self, images, size=None, resize: str = "squash", bgr: bool = False,
                preprocess: str = "auto") -> PreparedBatch:
        """Images (PIL, uint8 HWC frames as numpy or torch, paths, or a float tensor already
        normalised) -> PreparedBatch (pixels [B, 3, H, W], per-image Prepared; empty for
        float tensors).

        ``preprocess``: "auto" pre-processes uint8 frames on a CUDA engine's device
        (``clippy_rt.device_prep``, PIL's bicubic filter, pixels in the engine's dtype) and
        everything else on the host (PIL, float32); "device" / "host" force one path;
        "kernel" is the device path with the fused bilinear kernel (fastest, not PIL's
        filter). "device" and "kernel" take uint8 frames only.
        """
        if resize not in RESIZE_MODES:
            raise InputError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        if size is not None:
            check_input_size(size, self.config.image.patch_size)
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            return PreparedBatch(as_pixel_batch(images, self.config.image.patch_size), [])
        cfg = self.config.image
        size = cfg.image_size if size is None else size
        if use_device_path(images, preprocess, self.device):
            # Pixels in the torch tower's dtype; exported graphs (ONNX, TensorRT) take float32.
            return PreparedBatch(*prepare_frames(
                images, size, mode=resize, mean=cfg.mean, std=cfg.std,
                patch_size=cfg.patch_size, bgr=bgr, device=self.device,
                dtype=self.pixel_dtype, resample=resampler_of(preprocess)))
        frames = frames_of(images)
        if frames is not None:
            images = [f.cpu().numpy() if isinstance(f, torch.Tensor) else f for f in frames]
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise InputError("no images given")
        return PreparedBatch(*prepare_batch(images, size, mode=resize, mean=cfg.mean,
                                            std=cfg.std, patch_size=cfg.patch_size, bgr=bgr))

    def image_tower(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The image tower alone on prepared pixels [B, 3, H, W] (host or device, any float
        dtype) -> (patch features [B, h*w, D], pooled [B, D]) on the engine's device, in the
        backend's output dtype. ``encode_image`` adds the reshape and the dtype."""
        return self._image_forward(pixels)

    def encode_image(self, images, size=None, resize: str = "squash", bgr: bool = False,
                     preprocess: str = "auto", dtype: Optional[torch.dtype] = torch.float32) -> ImageFeatures:
        """Images, a float pixel tensor or a PreparedBatch -> ImageFeatures: ``patch``
        [B, h, w, D] and ``pooled`` [B, D], L2-normalised (``prepared`` carried over), in
        ``dtype`` (None: the tower's own dtype, e.g. float16, with no copy)."""
        if isinstance(images, PreparedBatch):
            pixels, prepared = images.pixels, images.prepared
            pixels = as_pixel_batch(pixels, self.config.image.patch_size)
        else:
            pixels, prepared = self.prepare(images, size, resize, bgr, preprocess)
        patch, pooled = self.image_tower(pixels)
        check_finite(patch, "patch features")
        check_finite(pooled, "image embeddings")
        patch_size = self.config.image.patch_size
        h, w = pixels.shape[-2] // patch_size, pixels.shape[-1] // patch_size
        patch = patch.reshape(patch.shape[0], h, w, patch.shape[-1])
        if dtype is not None:
            patch, pooled = patch.to(dtype), pooled.to(dtype)
        return ImageFeatures(patch=patch, pooled=pooled, prepared=list(prepared))

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Returns L2-normalised text embeddings, float32 [K, D] on the engine's device.

        Embeddings are cached per prompt text (``self.text_cache``, a bounded LRU); only
        prompts not in the cache are encoded.
        """
        if isinstance(prompts, str):
            raise InputError("encode_text takes a list of prompts, got one string; wrap it in a list")
        prompts = [p if isinstance(p, str) else _bad_prompt(p) for p in prompts]
        if not prompts:
            raise InputError("the prompt list is empty: give at least one prompt")
        for index, text in enumerate(prompts):
            if not text.strip():
                raise InputError(f"prompt {index} is empty")
        found = self.text_cache.get(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            input_ids, attention_mask = self.tokenizer.encode(missing)
            embeds = self._text_forward(input_ids, attention_mask).float()
            check_finite(embeds, "text embeddings")
            found.update(self.text_cache.put(missing, embeds))
        # Built from this call's own lookups: a concurrent clear or eviction cannot
        # remove an embedding between the lookup and the stack.
        return torch.stack([found[p] for p in prompts])

    def clear_text_cache(self, disk: bool = False) -> None:
        """Forget the cached text embeddings (with ``disk``, the on-disk store's too)."""
        self.text_cache.clear(disk=disk)

    def label(self, patch: torch.Tensor, text: torch.Tensor, out_size: Tuple[int, int], window=None,
              class_map: Optional[torch.Tensor] = None,
              seg_head_impl: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
        """The seg head on patch features [B, h, w, D] of images that share one output size and
        window, against text rows [P, D], each row mapped to its class by ``class_map`` [P]
        (None: row j is class j). Returns (labels [B, H, W] class indices, in ``class_map``'s
        dtype or the kernel's, scores float32 [B, H, W]) on the text's device; ``decode``
        casts labels to ``class_label_dtype``. Capturable in a CUDA graph."""
        from .kernels.seg_head import seg_head

        labels, scores = seg_head(patch.to(text.device), text, out_size, window=window, return_scores=True,
                                  impl=seg_head_impl)
        if class_map is not None:
            labels = class_map.to(labels.device)[labels.long()]
        return labels, scores.float()

    def decode(self, features: ImageFeatures, text: torch.Tensor, prompt_set: PromptSet,
               seg_head_impl: str = "auto", device_output: bool = False,
               class_map: Optional[torch.Tensor] = None) -> List[Segmentation]:
        """Segmentation of each image: ``label`` on the patch features (in their own dtype:
        float16 features are read as they are) and the text rows ``text`` [P, D] (by default
        the embeddings of ``prompt_set.prompts``; ``class_map`` [P] maps rows to classes,
        by default ``prompt_set.class_map()``). Labels come at each image's ``out_size`` (the
        pixel tensor's size for pre-processed input), in ``class_label_dtype`` of the class
        count; they and the scores are copied to the host through pinned memory, or stay on
        the device with ``device_output=True``. ``timings_ms`` is left empty."""
        patch_size = self.config.image.patch_size
        count, h, w = features.patch.shape[:3]
        prepared = features.prepared
        if class_map is None and prompt_set.has_synonyms:
            class_map = prompt_set.class_map()
        dtype = class_label_dtype(len(prompt_set.classes))
        # Images that share an output size and window (frames of one camera) go through
        # the seg head in one call.
        groups: Dict[tuple, List[int]] = {}
        for index in range(count):
            if prepared:
                key = (tuple(prepared[index].out_size), prepared[index].window)
            else:
                key = ((h * patch_size, w * patch_size), None)
            groups.setdefault(key, []).append(index)
        results: List[Optional[Segmentation]] = [None] * count
        for (out_size, window), indices in groups.items():
            patch = features.patch if len(indices) == count else features.patch[indices]
            labels, scores = self.label(patch, text, out_size, window, class_map, seg_head_impl)
            labels = labels.to(dtype)
            if not device_output:
                labels, scores = to_host(labels, scores)
            for row, index in enumerate(indices):
                results[index] = Segmentation(
                    labels=labels[row], scores=scores[row], prompts=prompt_set.classes,
                    crop_box=prepared[index].crop_box if prepared else None)
        return results

    def decode_classes(self, features: ImageFeatures, text: torch.Tensor, prompt_set: PromptSet,
                       top_k: int = 5) -> List[List[Tuple[str, float]]]:
        """Per image, the ``top_k`` classes of ``prompt_set`` as (class, probability), best
        first: probs = softmax(exp(logit_scale) * class logits of <pooled, text>)."""
        check_positive_int("top_k", top_k)
        pooled = features.pooled.float().to(text.device)
        logits = class_logits(pooled @ text.T, prompt_set) * torch.exp(torch.tensor(self.logit_scale))
        probs = logits.softmax(dim=-1).cpu()
        k = min(top_k, len(prompt_set.classes))
        values, indices = probs.topk(k, dim=-1)
        return [[(prompt_set.classes[int(i)], float(v)) for v, i in zip(vrow, irow)]
                for vrow, irow in zip(values, indices)]

    def segment(self, images, prompts: PromptsLike, size=None, template: Optional[str] = None,
                resize: str = "squash", bgr: bool = False, seg_head_impl: str = "auto",
                preprocess: str = "auto", device_output: bool = False):
        """Open-vocabulary segmentation. One image -> Segmentation; a list -> a list of them.

        ``prompts`` is a list of class prompts or a ``{class: [prompt, ...]}`` mapping (a
        class's logit is the max over its prompts), each filled into ``template``: by
        default the model's own (``engine.template``), ``template="{}"`` for the prompts
        verbatim (see ``prompt_set``). Labels come back at the original
        image size (the crop's, with ``resize="crop"``; the tensor's, for a tensor input).
        The seg head reads the tower's patch features in its own dtype. Results are
        copied to the host through pinned memory, or stay on the device with
        ``device_output=True``. ``preprocess``: see ``prepare``.
        """
        single = is_single(images)
        prompt_set = self.prompt_set(prompts, template)
        timings = {}
        start = time.perf_counter()
        batch = self.prepare(images, size, resize, bgr, preprocess)
        timings["preprocess"] = _ms(start)
        start = time.perf_counter()
        text = self.encode_text(list(prompt_set.prompts))
        timings["text"] = _ms(start)
        start = time.perf_counter()
        features = self.encode_image(batch, dtype=None)
        self.synchronize()
        timings["image"] = _ms(start)
        start = time.perf_counter()
        results = self.decode(features, text, prompt_set, seg_head_impl, device_output)
        timings["postprocess"] = _ms(start)
        for result in results:
            result.timings_ms = dict(timings)
        return results[0] if single else results

    def classify(self, images, labels: PromptsLike, top_k: int = 5, template: Optional[str] = None,
                 size=None, resize: str = "crop", bgr: bool = False):
        """Zero-shot classification. One image -> [(label, probability), ...] (top_k, best
        first); a list -> one such list per image. probs = softmax(exp(logit_scale) * <e, T>).
        ``labels`` are filled into ``template`` as in ``segment`` (default: the model's)."""
        check_positive_int("top_k", top_k)
        single = is_single(images)
        prompt_set = self.prompt_set(labels, template)
        text = self.encode_text(list(prompt_set.prompts))
        features = self.encode_image(images, size, resize, bgr, dtype=None)
        out = self.decode_classes(features, text, prompt_set, top_k)
        return out[0] if single else out

    def stream(self, prompts: PromptsLike, size=None, resize: str = "squash", batch: int = 8,
               bgr: bool = False, template: Optional[str] = None, device_output: bool = False,
               preprocess: str = "auto", graphs: bool = True):
        """A ``clippy_rt.stream.Stream`` for camera loops: ``stream(frame)`` -> Segmentation,
        ``stream([f0, f1, ...])`` -> list; with the torch backend the image path runs in CUDA
        graphs on CUDA and as TorchScript traces on the CPU (``graphs=False``: eagerly).
        ``template`` as in ``segment`` (default: the model's)."""
        from .stream import Stream

        return Stream(self, prompts, size=size, resize=resize, batch=batch, bgr=bgr, template=template,
                      device_output=device_output, preprocess=preprocess, graphs=graphs)

    def synchronize(self) -> None:
        """Wait for the engine's device work (a no-op on the CPU); for timing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _bad_prompt(value) -> str:
    raise InputError(f"prompts must be strings, got {type(value).__name__}")
