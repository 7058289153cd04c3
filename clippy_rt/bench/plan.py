"""The model source and the plan: which cases a run measures, in which order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from clippy_rt.backends import backend_record
from clippy_rt.errors import InputError
from clippy_rt.formats.kinds import ENGINE, MODEL, ONNX, artifact_config, artifact_kind
from clippy_rt.precisions import COMPUTE_DTYPES

from .settings import BASELINE_VARIANT, NOT_APPLICABLE, VARIANTS, BenchSettings, Case




@dataclass(frozen=True)
class ModelSource:
    """A resolved input: ``kind`` is "model", "onnx" or "engine"."""

    path: Path
    kind: str
    config: object

    def describe(self, arch: Optional[str]) -> Dict[str, object]:
        return {"path": None if arch else str(self.path), "kind": self.kind, "arch": self.config.arch,
                "random_weights": bool(self.config.random_weights), "source": self.config.source,
                "generated_from_arch": arch}


def resolve_source(model: Optional[str], arch: Optional[str], workdir: Path, seed: int = 0) -> ModelSource:
    """A model / ONNX / engine directory (or random weights of ``arch`` written under
    ``workdir``). Raises ModelDirError for a missing or unrecognised directory."""
    from clippy_rt.api import resolve_model_path
    if arch is not None:
        from clippy_rt.formats.random_init import random_init

        path = random_init(arch, workdir / f"random-{arch}", seed=seed)
        return ModelSource(Path(path), MODEL, artifact_config(path, MODEL))
    path = resolve_model_path(model)
    kind = artifact_kind(path)
    return ModelSource(path, kind, artifact_config(path, kind))


def extra_source(kind: str, settings: BenchSettings):
    """The directory given for artifact ``kind`` besides the main input (--onnx-dir,
    --engine-dir), or None."""
    return {ONNX: settings.onnx_dir, ENGINE: settings.engine_dir}.get(kind)


def _backend_reachable(backend: str, kind: str, settings: BenchSettings) -> bool:
    """Whether ``backend`` can load from the input of kind ``kind`` (plus --onnx-dir / --engine-dir)."""
    record = backend_record(backend)
    return (kind == record.artifact_kind or kind in record.made_from
            or extra_source(record.artifact_kind, settings) is not None)


def plan_cases(settings: BenchSettings, config, kind: str = MODEL) -> List[Case]:
    """Every case of the matrix in run order (grouped so each engine loads once; the GEMM
    probes, CPU only, follow each backend and precision's image tower).

    The baseline combination is added when the input can run it (``kind`` is the input's
    kind: "model", "onnx" or "engine"). Raises InputError for a size that is not a
    multiple of the patch size.
    """
    patch = config.image.patch_size
    sizes = tuple(settings.sizes) if settings.sizes is not None else (config.image.image_size,)
    for size in sizes:
        if size % patch:
            raise InputError(f"size {size} is not a multiple of the model's patch size {patch}")
    combos = [(b, p) for b in settings.backends for p in settings.precisions]
    precisions = list(settings.precisions)
    if settings.baseline is not None and _backend_reachable(settings.baseline[0], kind, settings):
        if settings.baseline not in combos:
            combos.insert(0, settings.baseline)
        if settings.baseline[1] not in precisions:
            precisions.insert(0, settings.baseline[1])
    stages = set(settings.stages)
    cases: List[Case] = []
    for device in settings.devices:
        if "preprocess" in stages:
            for batch in settings.batches:
                for size in sizes:
                    for variant in VARIANTS["preprocess"]:
                        cases.append(Case("preprocess", variant, NOT_APPLICABLE, NOT_APPLICABLE, device,
                                          batch, size, None))
        if "seg-head" in stages:
            # The seg head computes in a float dtype; int8 applies to the towers only.
            for precision in (p for p in precisions if p in COMPUTE_DTYPES):
                baseline_only = precision not in settings.precisions
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            for variant in VARIANTS["seg-head"]:
                                if baseline_only and variant != BASELINE_VARIANT["seg-head"]:
                                    continue
                                cases.append(Case("seg-head", variant, NOT_APPLICABLE, precision, device,
                                                  batch, size, k))
        for backend, precision in combos:
            is_baseline = settings.baseline == (backend, precision)
            if "image" in stages:
                variants = ["forward"] + (["cuda-graph"] if settings.cuda_graph else [])
                for batch in settings.batches:
                    for size in sizes:
                        for variant in variants:
                            cases.append(Case("image", variant, backend, precision, device, batch, size, None))
            if "gemm" in stages and device == "cpu":
                for batch in settings.batches:
                    for size in sizes:
                        cases.append(Case("gemm", "probe", backend, precision, device, batch, size, None))
            if "text" in stages:
                for k in settings.prompts:
                    for variant in VARIANTS["text"]:
                        cases.append(Case("text", variant, backend, precision, device, None, None, k))
            if "end-to-end" in stages:
                variants = (["reference-post"] if is_baseline else []) + ["segment"]
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            for variant in variants:
                                cases.append(Case("end-to-end", variant, backend, precision, device,
                                                  batch, size, k))
            if "stream" in stages:
                for batch in settings.batches:
                    for size in sizes:
                        for k in settings.prompts:
                            cases.append(Case("stream", "stream", backend, precision, device, batch, size, k))
    return list(dict.fromkeys(cases))


def bench_prompts(count: int) -> List[str]:
    """``count`` distinct prompts: the 21 VOC class prompts first, then numbered objects."""
    from clippy_rt.datasets.voc import voc_prompts

    prompts = [texts[0] for texts in voc_prompts().values()]
    prompts += [f"a photo of object number {i}" for i in range(len(prompts), count)]
    return prompts[:count]
