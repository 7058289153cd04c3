"""Zero-shot classification with template ensembles, and its evaluation on a classification
folder (top-1 / top-5), as the CLIPpy reference evaluates ImageNet.

A class's embedding is the mean of the L2-normalised text embeddings of its name filled
into every template, normalised again:

    w_c = normalize(mean_t normalize(text(t.format(name_c))))

An image is read as the reference's ImageFolder reads it (PIL, RGB), its shorter side
brought to the input size with PIL's bicubic filter and the centred square cropped
(``clippy_rt.datasets.voc.reference_crop``); logits = 100 * normalize(image embedding) . w,
and an image counts for top-k when its class is among the k largest logits (torch.topk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .config import format_prompt
from .errors import InputError
from .validate import check_positive_int

__all__ = ["ClassificationResult", "LOGIT_SCALE", "class_embeddings", "classify_ensemble", "evaluate_classification",
           "templates_for"]

# The reference evaluation's fixed logit scale (the ranking does not depend on it).
LOGIT_SCALE = 100.0
TEMPLATE_SETS = ("openai", "single")


def templates_for(choice: str, model_template: Optional[str]) -> List[str]:
    """``openai``: the 80 templates of CLIP's ImageNet ensemble; ``single``: the model's own
    template (its config's ``prompt_template``); anything else: a file with one template a
    line, each holding ``{}``."""
    from .datasets.imagenet import openai_templates

    if choice == "openai":
        return openai_templates()
    if choice == "single":
        return [model_template or "a photo of {article} {}"]
    from pathlib import Path

    try:
        lines = Path(choice).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--templates is openai, single or a file of templates; cannot read {choice}: {exc}") from exc
    templates = [line for line in (raw.strip() for raw in lines) if line and not line.startswith("#")]
    if not templates:
        raise InputError(f"the template file {choice} holds no template")
    for template in templates:
        if "{}" not in template:
            raise InputError(f"template {template!r} in {choice} has no {{}} for the class name")
    return templates


def class_embeddings(engine, names: Sequence[Union[str, Sequence[str]]], templates: Sequence[str], *,
                     progress: Optional[Callable] = None) -> torch.Tensor:
    """[C, D] float32 on the engine's device: per class, the normalised mean of the
    normalised embeddings of its name (or each of its synonyms) in every template."""
    if not names:
        raise InputError("no class names")
    if not templates:
        raise InputError("no templates")
    rows = []
    classes = progress(list(names)) if progress is not None else names
    for name in classes:
        synonyms = [name] if isinstance(name, str) else list(name)
        text = engine.encode_text([format_prompt(t, n) for n in synonyms for t in templates]).float()
        text = torch.nn.functional.normalize(text, dim=-1).mean(dim=0)
        rows.append(text / text.norm())
    return torch.stack(rows)


def classify_ensemble(engine, images, classes: Dict[str, Sequence[str]], templates: Sequence[str], *,
                      top_k: int = 5, size=None, resize: str = "crop") -> List[List[Tuple[str, float]]]:
    """``Engine.classify`` with template ensembles: per image the ``top_k`` classes as
    (class, probability), probs = softmax(exp(logit_scale) * <image, class embedding>), each
    class embedding from ``class_embeddings`` over the class's synonyms and ``templates``."""
    check_positive_int("top_k", top_k)
    names = list(classes)
    weights = class_embeddings(engine, [classes[n] for n in names], templates)
    pooled = engine.encode_image(images, size, resize).pooled.float().to(weights.device)
    logits = math.exp(engine.logit_scale) * pooled @ weights.T
    values, indices = logits.softmax(dim=-1).cpu().topk(min(top_k, len(names)), dim=-1)
    return [[(names[int(i)], float(v)) for v, i in zip(vrow, irow)] for vrow, irow in zip(values, indices)]


@dataclass(frozen=True)
class ClassificationResult:
    dataset: str
    layout: str
    num_images: int
    num_classes: int
    templates: int
    top1: float
    top5: float
    per_class_top1: Dict[str, Optional[float]]
    backend: str
    precision: str
    size: int
    protocol: str = "reference"

    def to_dict(self) -> Dict[str, Any]:
        return {"dataset": self.dataset, "task": "classification", "protocol": self.protocol,
                "layout": self.layout, "num_images": self.num_images, "num_classes": self.num_classes,
                "templates": self.templates, "backend": self.backend, "precision": self.precision,
                "size": self.size, "top1": self.top1, "top5": self.top5, "per_class_top1": self.per_class_top1}


def evaluate_classification(engine, folder, templates: Sequence[str], *, size: int, batch_size: int = 32,
                            name: Optional[str] = None, progress: Optional[Callable] = None,
                            text_progress: Optional[Callable] = None) -> ClassificationResult:
    """Top-1 / top-5 of ``engine`` on ``folder`` (a ``clippy_rt.datasets.imagenet.ImageFolderSet``)."""
    from .datasets.voc import reference_crop

    check_positive_int("batch_size", batch_size)
    check_positive_int("size", size)
    weights = class_embeddings(engine, folder.classes, templates, progress=text_progress)
    k = min(5, len(folder.classes))
    correct1 = correct5 = 0
    per_class = np.zeros((len(folder.classes), 2), dtype=np.int64)          # (right at top-1, seen)
    batches = [folder.items[i:i + batch_size] for i in range(0, len(folder.items), batch_size)]
    for batch in (progress(batches) if progress is not None else batches):
        crops = []
        for path, _ in batch:
            try:
                with Image.open(path) as handle:
                    crops.append(reference_crop(handle.convert("RGB"), size))
            except OSError as exc:
                raise InputError(f"cannot read image {path}: {exc}") from exc
        pooled = engine.encode_image(crops, size=size, resize="squash").pooled.float().to(weights.device)
        logits = LOGIT_SCALE * torch.nn.functional.normalize(pooled, dim=-1) @ weights.T
        top = logits.topk(k, dim=-1).indices.cpu()
        target = torch.tensor([index for _, index in batch])
        hits = top == target[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        np.add.at(per_class, target.numpy(), np.stack([hits[:, 0].numpy(), np.ones(len(batch), bool)], 1))
    count = len(folder.items)
    per_class_top1 = {f"{index}:{cls}": (float(right / seen) if seen else None)
                      for index, (cls, (right, seen)) in enumerate(zip(folder.classes, per_class))}
    return ClassificationResult(dataset=name or str(folder.root), layout=folder.layout, num_images=count,
                                num_classes=len(folder.classes), templates=len(templates),
                                top1=correct1 / count if count else math.nan,
                                top5=correct5 / count if count else math.nan,
                                per_class_top1=per_class_top1, backend=str(engine.backend),
                                precision=str(engine.precision), size=size)
