"""Zero-shot accuracy of a model: segmentation (mIoU, per-class IoU, pixel accuracy) or
classification (top-1 / top-5).

Datasets: "synthetic[:N[:SEED]]" (generated scenes, each shape class with its own fill
pattern; default 500 held-out scenes), "synthetic-plain[:N[:SEED]]" (the same scenes with
flat fills; in both, the background class is the max over one prompt per background
kind, each shape "a {shape}") or "voc:PATH" (a PASCAL VOC folder: JPEGImages/, SegmentationClass/,
ImageSets/Segmentation/SPLIT.txt; label 255 ignored). VOC is scored under --protocol
"reference" (the default: the CLIPpy reference evaluation step for step, comparable with
the paper's figure: shorter side to the model's size and centre crop, label map squashed
to the crop's size, 60 prompts of which the 39 stuff classes count as background, mean IoU
over all 21 classes) or "native" (21 prompts "a photo of a/an {class}", labels at each
image's own size against the original label map); docs/evaluation.md compares them. The
output names the split and the number of images. With a backend or precision other than torch fp32, the same images are
also segmented by torch fp32 and the label agreement between the two is reported; the
torch model comes from --reference, or from MODEL itself when it is a model directory,
or from the source recorded in an ONNX directory's manifest. With --preprocess device or
kernel the images are pre-processed on the engine's device (on the CPU, with torch ops)
and the agreement is with the same engine on the host (PIL) path: "device" is PIL's
bicubic filter computed on the device, "kernel" the fused bilinear kernel.

"imagenet:PATH" is zero-shot classification as the CLIPpy reference evaluates ImageNet
(``clippy_rt.classification``): PATH holds one folder per class (sorted folder order = class
order) or, with --labels FILE, images listed with their class index; class names are
ImageNet's 1,000 unless --classes FILE (or "folders") names them; each class embedding
is the mean over --templates (default: CLIP's 80 "openai" templates; "single": the model's
own; or a file); the output is top-1 and top-5 accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .common import add_model_arguments, load_engine, print_json, progress, random_warning, size_arg


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--dataset", default="synthetic",
                        help="synthetic[:N[:SEED]], synthetic-plain[:N[:SEED]], voc:PATH or imagenet:PATH "
                             "(default: synthetic = 500 held-out scenes)")
    parser.add_argument("--classes", default=None,
                        help="imagenet: class names, a file with one a line in class order, or 'folders' "
                             "(default: ImageNet's 1,000)")
    parser.add_argument("--labels", default=None,
                        help="imagenet: a file of '<image path> <class index>' lines (images under PATH) "
                             "instead of class folders")
    parser.add_argument("--templates", default="openai",
                        help="imagenet: openai (CLIP's 80 templates, the default), single (the model's "
                             "template) or a file with one template a line")
    parser.add_argument("--split", default="val", help="VOC split file name (default: val)")
    parser.add_argument("--protocol", default=None, choices=["reference", "native"],
                        help="VOC scoring protocol (default: reference; generated scenes: native)")
    parser.add_argument("--size", type=size_arg, default=None,
                        help="model input size, S or HxW, multiples of the patch size (default: the model's)")
    parser.add_argument("--resize", default="squash", choices=["squash", "crop", "letterbox"],
                        help="how images are fitted to the input size (default: squash)")
    parser.add_argument("--preprocess", default="auto", choices=["auto", "host", "device", "kernel"],
                        help="pre-processing path (default: auto = device for uint8 frames on CUDA); "
                             "'device' and 'kernel' also report the agreement with the host (PIL) path")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--reference", default=None,
                        help="torch model directory for the agreement figure (default: see above)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar on stderr (default: on)")


def _reference_dir(args) -> str:
    """The torch model directory to compare against (see the module doc)."""
    from clippy_rt.errors import InputError

    if args.reference is not None:
        return args.reference
    if args.model == "demo":
        from clippy_rt.formats.model_dir import demo_model_dir
        return str(demo_model_dir())
    from clippy_rt.formats.kinds import MODEL, ONNX, find_artifact_kind, metadata_file

    path = Path(args.model)
    kind = find_artifact_kind(path)
    if kind == MODEL:
        return str(path)
    if kind == ONNX:
        manifest = metadata_file(path, ONNX)
        try:
            source = json.loads(manifest.read_text()).get("source", {}).get("model_dir")
        except (json.JSONDecodeError, AttributeError):
            source = None
        if source and find_artifact_kind(source) == MODEL:
            return str(source)
    raise InputError(f"cannot find the torch model behind {args.model} for the agreement figure; "
                     "pass --reference MODEL_DIR")


def _reference_size(args) -> int:
    """The reference protocol's square crop: --size (one side) or the model's input size."""
    from clippy_rt.api import resolve_model_path
    from clippy_rt.errors import InputError
    from clippy_rt.formats.kinds import artifact_config, artifact_kind

    if args.resize != "squash":
        raise InputError("the reference protocol crops the images itself; --resize does not apply to it "
                         "(use --protocol native)")
    if args.size is not None:
        height, width = args.size if isinstance(args.size, tuple) else (args.size, args.size)
        if height != width:
            raise InputError(f"the reference protocol takes a square size, got {height}x{width}")
        return height
    path = resolve_model_path(args.model)
    return artifact_config(path, artifact_kind(path)).image.image_size


def run(args) -> int:
    import sys

    import clippy_rt
    from clippy_rt.backends import REFERENCE, REFERENCE_PRECISION, is_reference
    from clippy_rt.errors import InputError
    from clippy_rt.evaluate import evaluate, open_dataset
    from clippy_rt.validate import check_positive_int

    check_positive_int("--batch-size", args.batch_size)
    if args.dataset.startswith("imagenet:"):
        return _run_classification(args)
    for option in ("classes", "labels"):
        if getattr(args, option) is not None:
            raise InputError(f"--{option} applies to imagenet:PATH datasets only")
    size = args.size
    if args.dataset.startswith("voc:") and args.protocol != "native":
        size = _reference_size(args)
    eval_set = open_dataset(args.dataset, split=args.split, protocol=args.protocol, size=size or 224)
    engine = load_engine(args)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    reference = None
    reference_preprocess = args.preprocess
    # The engine's own values: --device and --precision default per backend.
    if not is_reference(engine.backend, engine.precision):
        reference = clippy_rt.load(_reference_dir(args), backend=REFERENCE.name, device=str(engine.device),
                                   precision=REFERENCE_PRECISION)
    if args.preprocess in ("device", "kernel"):
        reference = reference or engine
        reference_preprocess = "host"
    result = evaluate(engine, eval_set, reference=reference, size=size, resize=args.resize,
                      batch_size=args.batch_size, preprocess=args.preprocess,
                      reference_preprocess=reference_preprocess,
                      progress=lambda batches: progress(batches, "eval", enabled=args.progress))
    if args.json:
        print_json(result.to_dict())
        return 0
    _print_rows([("dataset", result.dataset), ("protocol", result.protocol), ("images", result.num_images),
                 ("backend", f"{result.backend} ({result.precision})"), ("mIoU", _percent(result.miou)),
                 ("pixel accuracy", _percent(result.pixel_accuracy))])
    if result.agreement is not None:
        host = " (host pre-processing)" if reference_preprocess == "host" else ""
        print(f"agreement with torch fp32{host}   {_percent(result.agreement)}")
        print(f"reference mIoU   {_percent(result.reference_miou)}")
    print("per-class IoU:")
    width = max(len(name) for name in result.class_names)
    for name, value in zip(result.class_names, result.iou):
        print(f"  {name:<{width}}  {_percent(value)}")
    return 0


def _run_classification(args) -> int:
    import sys

    from clippy_rt.classification import evaluate_classification, templates_for
    from clippy_rt.datasets.imagenet import open_image_folder, read_class_names
    from clippy_rt.errors import InputError

    if args.protocol == "native":
        raise InputError("imagenet:PATH has one protocol, the reference's; --protocol does not apply")
    if args.preprocess not in ("auto", "host") or args.resize != "squash" or args.reference is not None:
        raise InputError("imagenet:PATH crops each image as the reference does, on the host; "
                         "--preprocess, --resize and --reference do not apply to it")
    root = args.dataset[len("imagenet:"):]
    classes = args.classes
    if classes is not None and classes != "folders":
        classes = read_class_names(classes)
    folder = open_image_folder(root, classes=classes, labels=args.labels)
    size = _reference_size(args)
    engine = load_engine(args)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    templates = templates_for(args.templates, engine.config.prompt_template)
    result = evaluate_classification(
        engine, folder, templates, size=size, batch_size=args.batch_size, name=f"imagenet:{root}",
        text_progress=lambda names: progress(names, "class embeddings", enabled=args.progress),
        progress=lambda batches: progress(batches, "eval", enabled=args.progress))
    if args.json:
        print_json(result.to_dict())
        return 0
    _print_rows([("dataset", f"{result.dataset} ({result.layout})"),
                 ("protocol", f"{result.protocol} (zero-shot classification)"), ("images", result.num_images),
                 ("classes", f"{result.num_classes}, {result.templates} templates each"),
                 ("backend", f"{result.backend} ({result.precision}), {result.size} px"),
                 ("top-1", _percent(result.top1)), ("top-5", _percent(result.top5))])
    return 0


def _print_rows(rows) -> None:
    for label, value in rows:
        print(f"{label:<17}{value}")


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:6.2f}%"
