"""Describe a model, ONNX or engine directory: architecture, prompt template, vocabulary, files.

For every kind: the towers' architecture, random weights or not, the prompt template the
model was trained with and, where the directory ships a vocabulary.json ({"class":
["prompt", ...], ...}), its classes and prompts with a ready --prompts argument. A model
directory adds parameter counts; an ONNX directory its precisions, the parity measured at
export and each file's sha256 (all checked against the manifest); an engine directory
the TensorRT version and GPU it was built for, its precision and its plans' sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

from clippy_rt.formats.model_dir import VOCABULARY_FILE

from .common import print_json



def add_arguments(parser) -> None:
    parser.add_argument("path", type=Path, help="model directory (or ONNX / engine directory, or 'demo')")
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args) -> int:
    from clippy_rt.api import resolve_model_path
    from clippy_rt.errors import ModelDirError
    from clippy_rt.formats.kinds import ENGINE, MODEL, artifact_kind

    path = resolve_model_path(args.path)
    if not path.is_dir():
        raise ModelDirError(f"not a directory: {path}")
    files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
    info = {"path": str(path), "files": files}
    kind = artifact_kind(path)
    if kind == MODEL:
        from clippy_rt.formats.model_dir import load_model

        model, md = load_model(path)
        info["kind"] = "model"
        info["config"] = md.config.to_dict()
        info["parameters"] = {
            "image": sum(p.numel() for p in model.visual.parameters()),
            "text": sum(p.numel() for p in model.text.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        }
        info["tokenizer"] = md.tokenizer.name
    elif kind == ENGINE:
        from clippy_rt.formats.engine_dir import read_sidecar

        info["kind"], info["manifest"] = "tensorrt", read_sidecar(path)
        info["config"] = info["manifest"].get("config", {})
    else:
        from clippy_rt.formats.onnx_dir import read_onnx_dir

        # The whole check, checksums included: info is how a user vets a directory.
        info["kind"], info["manifest"] = kind, read_onnx_dir(path, verify_checksums=True).manifest
        info["config"] = info["manifest"].get("config", {})
    info["random_weights"] = bool(info["config"].get("random_weights", False))
    info["prompt_template"] = info["config"].get("prompt_template")
    info["vocabulary"] = read_vocabulary(path)
    if args.json:
        print_json(info)
        return 0
    for line in describe(info):
        print(line)
    return 0


def read_vocabulary(path: Path):
    """The directory's vocabulary.json as {class: [prompts]}, checked; None without one."""
    from clippy_rt.errors import ModelDirError
    from clippy_rt.prompts import build_prompt_set

    file = path / VOCABULARY_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object of class -> list of prompts")
        prompt_set = build_prompt_set({name: list(prompts) if isinstance(prompts, list) else prompts
                                       for name, prompts in data.items()})
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelDirError(f"{file} is not a vocabulary ({{class: [prompts]}}): {reason}") from None
    vocabulary = {name: [] for name in prompt_set.classes}
    for prompt, owner in zip(prompt_set.prompts, prompt_set.prompt_class):
        vocabulary[prompt_set.classes[owner]].append(prompt)
    return vocabulary


def prompts_argument(vocabulary) -> str:
    """``vocabulary`` as segment's --prompts: classes by ',', prompts by '|', each class as
    ``name=prompt|prompt`` unless its name is its first prompt (the same classes and prompts)."""
    parts = []
    for name, prompts in vocabulary.items():
        joined = "|".join(prompts)
        parts.append(joined if prompts[0] == name else f"{name}={joined}")
    return ",".join(parts)


def describe(info) -> list:
    """``info`` as text lines."""
    lines = [f"{info['kind']} directory {info['path']}"]
    if info.get("random_weights"):
        lines.append("weights: RANDOM (not trained)")
    cfg = info.get("config") or {}
    if cfg.get("image") and cfg.get("text"):
        img, txt = cfg["image"], cfg["text"]
        lines.append(f"arch: {cfg.get('arch', '-')}  source: {cfg.get('source') or '-'}")
        lines.append(f"image tower: ViT patch {img['patch_size']}, width {img['width']}, depth {img['depth']}, "
                     f"heads {img['heads']}, pooling {img['pooling']} "
                     f"(class token {'in' if img['pool_include_cls'] else 'out'}), input {img['image_size']}")
        lines.append(f"text tower: T5 d_model {txt['d_model']}, depth {txt['depth']}, heads {txt['heads']}, "
                     f"ffn {txt['ffn']}, vocab {txt['vocab_size']}, max length {txt['max_length']}, "
                     f"projection {'yes' if txt['projection'] else 'no'}")
    if "parameters" in info:
        params = info["parameters"]
        lines.append(f"parameters: image {params['image']:,}  text {params['text']:,}  total {params['total']:,}")
    manifest = info.get("manifest") or {}
    if info["kind"] == "tensorrt":
        capability = ".".join(str(v) for v in manifest.get("compute_capability", []))
        lines.append(f"built with TensorRT {manifest.get('tensorrt_version')} for {manifest.get('gpu_name')} "
                     f"(compute capability {capability}); precision {manifest.get('precision')}")
    elif manifest:
        lines.append(f"precisions: {', '.join(manifest.get('precisions', [])) or '-'}  (opset {manifest.get('opset')})")
    for row in manifest.get("parity", []):
        size = "x".join(str(v) for v in row.get("size", []))
        worst = max((row.get("max_abs") or {}).values(), default=float("nan"))
        lines.append(f"parity {row.get('precision')} {size} batch {row.get('batch')}: max |diff| {worst:.2e}, "
                     f"labels agree {row.get('label_agreement')}%")
    template = info.get("prompt_template")
    if template:
        lines.append(f"prompt template: {template!r}  (segment and classify fill prompts into it; "
                     f"--no-template: verbatim)")
    vocabulary = info.get("vocabulary")
    if vocabulary:
        lines.append(f"vocabulary ({VOCABULARY_FILE}, {len(vocabulary)} classes):")
        for name, prompts in vocabulary.items():
            lines.append(f"  {name}: {' | '.join(prompts)}")
        lines.append(f"  as --prompts: {json.dumps(prompts_argument(vocabulary))}")
    # The ONNX manifest lists files by name; the engine sidecar lists plans by graph, each
    # with its file name.
    hashes = {name: entry.get("sha256") for name, entry in manifest.get("files", {}).items()
              if isinstance(entry, dict)}
    hashes.update({entry.get("file"): entry.get("sha256") for entry in manifest.get("plans", {}).values()
                   if isinstance(entry, dict)})
    for name, size in info["files"].items():
        digest = f"  sha256 {hashes[name]}" if hashes.get(name) else ""
        lines.append(f"  {name}  {size:,} bytes{digest}")
    return lines
