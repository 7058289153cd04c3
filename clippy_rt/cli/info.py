"""Describe a model, ONNX or engine directory: config, parameter counts, files, random or not."""

from __future__ import annotations

from pathlib import Path

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
        info["random_weights"] = md.config.random_weights
        info["parameters"] = {
            "image": sum(p.numel() for p in model.visual.parameters()),
            "text": sum(p.numel() for p in model.text.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        }
        info["tokenizer"] = md.tokenizer.name
    elif kind == ENGINE:
        from clippy_rt.formats.engine_dir import read_sidecar

        info["kind"], info["manifest"] = "tensorrt", read_sidecar(path)
        info["random_weights"] = bool(info["manifest"].get("config", {}).get("random_weights", False))
    else:
        from clippy_rt.formats.onnx_dir import read_onnx_dir

        # The whole check, checksums included: info is how a user vets a directory.
        info["kind"], info["manifest"] = kind, read_onnx_dir(path, verify_checksums=True).manifest
        info["random_weights"] = bool(info["manifest"].get("config", {}).get("random_weights", False))
    if args.json:
        print_json(info)
        return 0
    print(f"{info['kind']} directory {path}")
    if info.get("random_weights"):
        print("weights: RANDOM (not trained)")
    if "config" in info:
        cfg = info["config"]
        img, txt = cfg["image"], cfg["text"]
        print(f"arch: {cfg['arch']}  source: {cfg['source'] or '-'}")
        print(f"image tower: ViT patch {img['patch_size']}, width {img['width']}, depth {img['depth']}, "
              f"heads {img['heads']}, pooling {img['pooling']} (class token {'in' if img['pool_include_cls'] else 'out'}), "
              f"input {img['image_size']}")
        print(f"text tower: T5 d_model {txt['d_model']}, depth {txt['depth']}, heads {txt['heads']}, "
              f"ffn {txt['ffn']}, vocab {txt['vocab_size']}, max length {txt['max_length']}, "
              f"projection {'yes' if txt['projection'] else 'no'}")
        params = info["parameters"]
        print(f"parameters: image {params['image']:,}  text {params['text']:,}  total {params['total']:,}")
    for name, size in files.items():
        print(f"  {name}  {size:,} bytes")
    return 0
