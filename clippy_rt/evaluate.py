"""Zero-shot segmentation evaluation: mIoU, per-class IoU, pixel accuracy, backend agreement.

An evaluation set is a sequence of ``(image, target)`` pairs plus the class prompts. Each
image is segmented by ``Engine.segment`` (labels at the image's own size, a class's logit
the max over its prompts) and compared with its target in one confusion matrix ``M``
(rows = target, columns = prediction):

    IoU_c = M[c, c] / (row_c + col_c - M[c, c]),  mIoU = mean over classes seen,
    pixel accuracy = trace(M) / sum(M)

Target pixels equal to the set's ``ignore_index`` (VOC's 255) count nowhere. When a
second engine (``reference``, normally torch float32) is given, the same images are
segmented by it too and

    agreement = #{pixels where both label maps are equal} / #{pixels counted}

over the same counted (non-ignored) pixels.

Built-in sets: ``synthetic[:N[:SEED]]`` and ``synthetic-plain[:N[:SEED]]`` (generated
scenes, see ``clippy_rt.datasets.synthetic``) and ``voc:PATH`` (a PASCAL VOC layout folder)
under one of two protocols:

- ``reference``: the CLIPpy reference evaluation, step for step: the image's shorter side
  to the model's size (bicubic) and the centred square crop; the label PNG squashed to that
  square (nearest); 60 prompts "a photo of a/an {name}" (the 21 VOC classes under the
  reference's names, then 39 stuff classes), every prediction past the 21st counted as
  background; IoU_c = M[c, c] / (row_c + col_c - M[c, c] + eps), the mean over all 21
  classes (a class absent from a subset scores 0). Comparable with the paper's figure.
- ``native``: labels at each image's own size against the original label map, 21 prompts,
  the mean over the classes seen. Scores the whole image at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError
from .images import load_image
from .metrics import ConfusionMatrix
from .prompts import NO_TEMPLATE
from .validate import check_positive_int

__all__ = [
    "EvalResult",
    "EvalSet",
    "evaluate",
    "open_dataset",
    "synthetic_set",
    "voc_set",
]

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class EvalSet:
    """What to evaluate on.

    Attributes:
        name: a label for reports ("synthetic:500:1000000000", "voc:/data/VOC2012 (val)").
        samples: a sequence whose items are ``(image, target)``: an image anything
            ``Engine.segment`` takes (PIL image, uint8 [H, W, 3] array, path) and the
            integer target labels [H, W] of the same size.
        prompts: ``{class name: [prompt, ...]}`` in label order (label i = i-th class).
        ignore_index: target value that is not counted, or None.
    """

    name: str
    samples: Sequence[Tuple[Any, np.ndarray]]
    prompts: Dict[str, List[str]]
    ignore_index: Optional[int] = None
    # Classes scored; predictions of the prompts past them count as class 0 (None: all).
    scored_classes: Optional[int] = None
    protocol: str = "native"

    @property
    def class_names(self) -> Tuple[str, ...]:
        """The scored classes, in label order."""
        return tuple(self.prompts)[:self.scored_classes]


@dataclass(frozen=True)
class EvalResult:
    """The figures of one evaluation; ``iou`` is per class (NaN: class absent from target
    and prediction); ``agreement`` is None when no reference engine was run."""

    dataset: str
    num_images: int
    class_names: Tuple[str, ...]
    miou: float
    iou: Tuple[float, ...]
    pixel_accuracy: float
    pixels: int
    backend: str = "torch"
    precision: str = "fp32"
    size: Optional[Any] = None
    agreement: Optional[float] = None
    confusion: Tuple[Tuple[int, ...], ...] = field(default=(), repr=False)
    preprocess: str = "auto"
    reference_miou: Optional[float] = None
    protocol: str = "native"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: NaN becomes None."""
        def clean(value: Optional[float]) -> Optional[float]:
            return None if value is None or math.isnan(value) else float(value)

        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "num_images": self.num_images,
            "backend": self.backend,
            "precision": self.precision,
            "size": list(self.size) if isinstance(self.size, tuple) else self.size,
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "iou": {name: clean(value) for name, value in zip(self.class_names, self.iou)},
            "agreement_with_torch_fp32": clean(self.agreement),
            "preprocess": self.preprocess,
            "reference_miou": clean(self.reference_miou),
            "pixels": self.pixels,
            "confusion": [list(row) for row in self.confusion],
        }


class _SyntheticSamples(Sequence):
    """Generated scenes as ``(image uint8 [S, S, 3], labels uint8 [S, S])`` pairs."""

    def __init__(self, n: int, seed: int, size: int, style: str = "patterned") -> None:
        from .datasets.synthetic import SyntheticScenes

        self._scenes = SyntheticScenes(n, seed=seed, size=size, style=style)

    def __len__(self) -> int:
        return len(self._scenes)

    def __getitem__(self, index):  # type: ignore[override]
        scene = self._scenes[index]
        return scene.image, scene.labels


class _VOCSamples(Sequence):
    """VOC pairs as they are (``size`` None) or as the reference protocol crops them."""

    def __init__(self, dataset, size: Optional[int] = None) -> None:
        self._dataset = dataset
        self._size = size

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index):  # type: ignore[override]
        image, labels, image_id = self._dataset[index]
        if self._size is None:
            return image, labels
        from .datasets.voc import reference_sample

        return reference_sample(image, self._dataset.label_path(image_id), self._size)


def synthetic_set(n: int = 500, seed: Optional[int] = None, *, image_size: int = 64,
                  shape_templates: Sequence[str] = ("{article} {shape}",),
                  style: str = "patterned") -> EvalSet:
    """``n`` generated scenes from ``seed`` (default: the first held-out seed) at
    ``image_size`` pixels in ``style`` ("patterned" or "plain"), with
    ``eval_prompts(shape_templates)`` (background = one prompt per background kind)."""
    from .datasets.synthetic import EVAL_SEED_BASE, eval_prompts

    seed = EVAL_SEED_BASE if seed is None else seed
    samples = _SyntheticSamples(n, seed, image_size, style)
    prefix = "synthetic" if style == "patterned" else f"synthetic-{style}"
    return EvalSet(name=f"{prefix}:{n}:{seed}", samples=samples,
                   prompts=eval_prompts(shape_templates), ignore_index=None)


PROTOCOLS = ("reference", "native")


def voc_set(root, split: str = "val", template: str = "a photo of {article} {}", *,
            protocol: str = "reference", size: int = 224) -> EvalSet:
    """A VOC-layout folder's ``split`` under ``protocol`` (module doc): "reference" (60
    prompts, ``size`` x ``size`` crops and squashed targets; ``template`` unused) or
    "native" (21 classes, one prompt each from ``template``, original sizes). Label 255
    is ignored either way."""
    from .datasets.voc import VOC_CLASSES, VOC_IGNORE_INDEX, VOCSegmentation, reference_prompts, voc_prompts

    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    dataset = VOCSegmentation(root, split)
    name = f"voc:{root} ({split}, {len(dataset)} images, {protocol} protocol)"
    if protocol == "native":
        return EvalSet(name=name, samples=_VOCSamples(dataset), prompts=voc_prompts(template),
                       ignore_index=VOC_IGNORE_INDEX)
    check_positive_int("size", size)
    return EvalSet(name=name, samples=_VOCSamples(dataset, size), prompts=reference_prompts(),
                   ignore_index=VOC_IGNORE_INDEX, scored_classes=len(VOC_CLASSES), protocol="reference")


def open_dataset(spec: str, *, split: str = "val", protocol: Optional[str] = None, size: int = 224) -> EvalSet:
    """``synthetic[:N[:SEED]]``, ``synthetic-plain[:N[:SEED]]`` or ``voc:PATH`` -> an EvalSet.
    ``protocol``: for VOC, "reference" (the default) or "native"; generated scenes have the
    native one only. ``size``: the reference protocol's crop (the model's input size).

    Raises:
        InputError: another prefix, a malformed spec, a protocol the dataset does not have,
            or a VOC folder that is incomplete.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a str, got {type(spec).__name__}")
    if spec.startswith("voc:"):
        root = spec[len("voc:"):]
        if not root:
            raise InputError("voc:PATH needs a folder path after 'voc:'")
        return voc_set(root, split, protocol=protocol or "reference", size=size)
    if spec.split(":")[0] in ("synthetic", "synthetic-plain"):
        from .datasets.synthetic import parse_dataset_spec

        if protocol not in (None, "native"):
            raise InputError(f"generated scenes are scored with the native protocol only, got protocol {protocol!r}")
        n, seed, style = parse_dataset_spec(spec)
        return synthetic_set(n, seed, style=style)
    raise InputError(f"unknown dataset {spec!r}: expected 'synthetic[:N[:SEED]]', "
                     "'synthetic-plain[:N[:SEED]]' or 'voc:PATH'")


def _batches(count: int, batch_size: int) -> List[range]:
    return [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _choice(preprocess: str) -> Dict[str, str]:
    """The ``preprocess`` keyword for ``segment``, left out for "auto" (the default of any
    engine-like object)."""
    return {} if preprocess == "auto" else {"preprocess": preprocess}


def evaluate(engine, eval_set: EvalSet, *, reference=None, size=None, resize: str = "squash",
             batch_size: int = DEFAULT_BATCH, preprocess: str = "auto", reference_preprocess: str = "auto",
             progress: Optional[Callable[[Sequence[range]], Iterator[range]]] = None) -> EvalResult:
    """Segment every image of ``eval_set`` with ``engine`` and score it (see the module doc).

    ``reference``: an optional second Engine run on the same images for the agreement
    figure. ``size``/``resize``: the model input size (default: the model's) and fitting
    mode, as for ``Engine.segment``. ``preprocess`` / ``reference_preprocess``: the
    pre-processing path of each engine (``Engine.prepare``; "device" / "kernel" decode the images
    to uint8 frames first), so the reference may be the same engine on the host path
    for the device-vs-PIL agreement. ``progress``: wraps the list of batches (e.g.
    ``clippy_rt.cli.common.progress``). Returns an EvalResult.

    Raises:
        InputError: an empty set, a bad batch size, or a target whose shape differs from
            its image or holds a value outside the classes (other than ``ignore_index``).
    """
    check_positive_int("batch_size", batch_size)
    count = len(eval_set.samples)
    if count == 0:
        raise InputError(f"the evaluation set {eval_set.name} is empty")
    classes = len(eval_set.class_names)
    matrix = ConfusionMatrix(classes, ignore_index=eval_set.ignore_index)
    reference_matrix = ConfusionMatrix(classes, ignore_index=eval_set.ignore_index)
    agree, counted = 0, 0
    batches = _batches(count, batch_size)
    for batch in (progress(batches) if progress is not None else batches):
        pairs = [eval_set.samples[i] for i in batch]
        images = [image for image, _ in pairs]
        if {"device", "kernel"} & {preprocess, reference_preprocess}:
            images = [np.asarray(load_image(image)) for image in images]
        # An evaluation set's prompts are final (its protocol's templates already applied).
        predictions = engine.segment(images, eval_set.prompts, size=size, resize=resize, template=NO_TEMPLATE,
                                     **_choice(preprocess))
        references = (reference.segment(images, eval_set.prompts, size=size, resize=resize, template=NO_TEMPLATE,
                                        **_choice(reference_preprocess))
                      if reference is not None else [None] * len(pairs))
        for (_, target), prediction, ref in zip(pairs, predictions, references):
            target = np.asarray(target)
            labels = _scored(prediction.labels.numpy(), classes)
            if target.shape != labels.shape:
                raise InputError(f"a target of {eval_set.name} has shape {target.shape}, but its "
                                 f"image segments to {labels.shape}")
            matrix.update(labels, target)
            if ref is not None:
                ref_labels = _scored(ref.labels.numpy(), classes)
                reference_matrix.update(ref_labels, target)
                keep = (np.ones(target.shape, dtype=bool) if eval_set.ignore_index is None
                        else target != eval_set.ignore_index)
                agree += int((labels == ref_labels)[keep].sum())
                counted += int(keep.sum())
    agreement = None
    if reference is not None:
        agreement = agree / counted if counted else math.nan
    reference_protocol = eval_set.protocol == "reference"
    iou = matrix.iou_with_eps() if reference_protocol else matrix.iou()

    def mean_iou(which: ConfusionMatrix) -> float:
        return float(np.nanmean(which.iou_with_eps())) if reference_protocol else which.miou()

    return EvalResult(
        dataset=eval_set.name, num_images=count, class_names=eval_set.class_names,
        miou=mean_iou(matrix), iou=tuple(float(v) for v in iou), protocol=eval_set.protocol,
        pixel_accuracy=matrix.pixel_accuracy(), pixels=matrix.total,
        backend=getattr(engine, "backend", "torch"), precision=getattr(engine, "precision", "fp32"),
        size=size, agreement=agreement, preprocess=preprocess,
        reference_miou=mean_iou(reference_matrix) if reference is not None else None,
        confusion=tuple(tuple(int(v) for v in row) for row in matrix.matrix))


def _scored(labels: np.ndarray, classes: int) -> np.ndarray:
    """Predictions of prompts past the scored ``classes`` (the reference's stuff classes) as 0."""
    if labels.size and labels.max() >= classes:
        labels = np.where(labels >= classes, 0, labels)
    return labels
