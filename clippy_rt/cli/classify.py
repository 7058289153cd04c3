"""Zero-shot classification of images against free-text labels.

Labels are separated by commas, synonyms of one label by '|'.
"""

from __future__ import annotations

from pathlib import Path

from .common import add_model_arguments, load_engine, positive_int, print_json, progress, random_warning, size_arg


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--labels", required=True, help='labels, e.g. "cat,dog,car|automobile"')
    parser.add_argument("--template", default=None,
                        help='prompt template, e.g. "a photo of {article} {}" (default: labels verbatim)')
    parser.add_argument("--templates", default=None,
                        help="a template ensemble instead of --template: openai (CLIP's 80 ImageNet templates) "
                             "or a file with one template a line; each label's embedding is the mean over them")
    parser.add_argument("--top-k", type=positive_int, default=5, help="how many labels to report (default: 5)")
    parser.add_argument("--size", type=size_arg, default=None, help="model input size (default: the model's)")
    parser.add_argument("--resize", default="crop", choices=["squash", "crop", "letterbox"],
                        help="how images are fitted to the input size (default: crop)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import sys

    from clippy_rt.images import load_image
    from clippy_rt.prompts import build_prompt_set, parse_cli_prompts

    from clippy_rt.errors import InputError

    if args.templates is not None and args.template is not None:
        raise InputError("give --template or --templates, not both")
    label_set = build_prompt_set(parse_cli_prompts(args.labels), args.template)
    templates = None
    if args.templates is not None:
        from clippy_rt.classification import templates_for

        templates = templates_for(args.templates, None)
    images = [load_image(Path(p)) for p in args.images]
    engine = load_engine(args)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    results = []
    for path, image in progress(list(zip(args.images, images)), "classify", enabled=not args.json):
        if templates is None:
            top = engine.classify(image, label_set, top_k=args.top_k, size=args.size, resize=args.resize)
        else:
            from clippy_rt.classification import classify_ensemble

            synonyms = {name: [p for p, owner in zip(label_set.prompts, label_set.prompt_class) if owner == index]
                        for index, name in enumerate(label_set.classes)}
            (top,) = classify_ensemble(engine, [image], synonyms, templates, top_k=args.top_k, size=args.size,
                                       resize=args.resize)
        results.append({"image": str(path), "top": [{"label": l, "probability": p} for l, p in top]})
    if args.json:
        print_json({"model": str(args.model), "random_weights": engine.random_weights, "images": results})
    else:
        for item in results:
            shown = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in item["top"])
            print(f"{item['image']}: {shown}")
    return 0
