"""Zero-shot classification of images against free-text labels.

Labels are separated by commas, synonyms of one label by '|'. Each label is filled into the
model's prompt template, or --template's (--no-template: verbatim); --templates averages the
label's embedding over a template ensemble instead.
"""

from __future__ import annotations

from pathlib import Path

from .common import (add_model_arguments, add_template_arguments, load_engine, model_prompts, positive_int, print_json,
                     progress, random_warning, size_arg)


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--labels", required=True, help='labels, e.g. "cat,dog,car|automobile"')
    add_template_arguments(parser, "label")
    parser.add_argument("--templates", default=None,
                        help="a template ensemble instead of --template: openai (CLIP's 80 ImageNet templates), "
                             "single (the model's template) or a file with one template a line; each label's "
                             "embedding is the mean over them")
    parser.add_argument("--top-k", type=positive_int, default=5, help="how many labels to report (default: 5)")
    parser.add_argument("--size", type=size_arg, default=None, help="model input size (default: the model's)")
    parser.add_argument("--resize", default="crop", choices=["squash", "crop", "letterbox"],
                        help="how images are fitted to the input size (default: crop)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    import sys

    from clippy_rt.images import load_image
    from clippy_rt.prompts import check_template, parse_cli_prompts

    from clippy_rt.errors import InputError

    if args.templates is not None and args.template is not None:
        raise InputError("give --template / --no-template or --templates, not both")
    label_set = parse_cli_prompts(args.labels)  # the template is applied once the model is loaded
    check_template(args.template)
    templates = None
    if args.templates is not None:
        from clippy_rt.classification import templates_for

        templates = templates_for(args.templates, None)  # checked before the model loads
    images = [load_image(Path(p)) for p in args.images]
    engine = load_engine(args)
    warning = random_warning(engine)
    if warning:
        print(warning, file=sys.stderr)
    if templates is None:
        label_set = model_prompts(label_set, args, engine)
    else:
        templates = templates_for(args.templates, engine.template)
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
