"""Export both towers to ONNX, check the graphs, and write a self-contained ONNX directory.

An ONNX directory holds everything the ONNX Runtime and TensorRT paths need, without the
source model directory::

    config.json       the model config (as in the model directory)
    spiece.model      (or tokenizer.json) the tokenizer
    vocabulary.json   where the model directory has one (listed and hashed like the rest)
    image.onnx        pixel_values -> patch_features, image_embeds      (float32)
    text.onnx         input_ids, attention_mask -> text_embeds           (float32)
    image.fp16.onnx   the same graphs in float16 (with ``fp16=True``)
    text.fp16.onnx
    image.int8.onnx   int8 weight products for the CPU (with ``int8=True``, see ``int8``)
    text.int8.onnx
    image.int8.ov.xml OpenVINO int8 graphs, weights in the .bin beside each (with
    text.int8.ov.xml  ``openvino_int8=True``, see ``openvino_int8``)
    seg_head.onnx     patch_features, text_embeds, grid and output size -> labels, scores
    manifest.json     config, tensor names and shapes, file sizes and sha256, the sha256 of
                      the source weights, opset, precisions, tool versions, logit scale and
                      the parity table measured at export

Tensor names, dtypes and dynamic axes come from ``io_spec``. The graphs are traced with
``torch.onnx.export(dynamo=False)``: the TorchScript tracer records shape arithmetic as
graph operations, so batch, height, width, prompt count and length all stay dynamic, and
it needs no dependency beyond torch and onnx.

Position embeddings: the image graph resizes the position embedding inside the graph
(an ONNX ``Resize``, cubic, coefficient -0.75, half-pixel, the same sampling as
``F.interpolate(mode="bicubic", align_corners=False)``). The model skips the resize at
its trained grid; the tracer would freeze that Python branch, so the graph is traced at
a grid that differs from the trained one in both directions and from itself, which
records the resize. At the trained grid a bicubic resize to the same size is the identity
(every sample falls on a source pixel with weights (0, 1, 0, 0)), so the graph is exact
there too; the parity check at export measures it.
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from clippy_rt.config import ClippyConfig
from clippy_rt.errors import BackendUnavailableError, InputError, ModelDirError
from clippy_rt.formats.atomic import atomic_directory, check_output_dir
from clippy_rt.formats.io_spec import DTYPES, GRAPHS, IMAGE, SEG_HEAD, TEXT, TOWERS, GraphSpec, check_io
from clippy_rt.formats.model_dir import VOCABULARY_FILE
from clippy_rt.formats.onnx_dir import CONFIG_FILE, FORMAT, FORMAT_VERSION, MANIFEST_FILE, OPENVINO_INT8, sha256_file

MIN_OPSET = 17
# The highest opset the TorchScript exporter of the supported torch versions writes.
MAX_OPSET = 20
DEFAULT_OPSET = 17

# Class names whose prompts drive the label-agreement column of the parity table.
PARITY_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                  "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
                  "potted plant", "sheep", "sofa", "train", "tv monitor")


# ----------------------------------------------------------------------------------------------
# Graph wrappers and tracing
# ----------------------------------------------------------------------------------------------

class ImageGraph(nn.Module):
    """pixel_values [B, 3, H, W] -> (patch_features [B, N, D], image_embeds [B, D])."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.visual = model.visual

    def forward(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.visual(pixel_values)


class TextGraph(nn.Module):
    """input_ids, attention_mask int64 [K, L] -> text_embeds [K, D]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text = model.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, attention_mask)


def image_example(config: ClippyConfig, batch: int = 2) -> torch.Tensor:
    """Tracing input: a grid of (g + 1) x (g + 2) patches, g the trained grid (see the module doc)."""
    patch, grid = config.image.patch_size, config.image.pos_grid
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, (grid + 1) * patch, (grid + 2) * patch, generator=generator)


def text_example(config: ClippyConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Tracing input: two prompts of length min(7, max_length), the second one padded."""
    length = min(7, config.text.max_length)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.text.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2 + 1:] = 0
    input_ids[1, length // 2 + 1:] = config.text.pad_id
    return input_ids, attention_mask


def trace_to_onnx(module: nn.Module, graph: GraphSpec, args: Tuple[torch.Tensor, ...], opset: int):
    """Trace ``module`` with ``args`` into an ONNX ModelProto named and shaped by ``graph``."""
    import io

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns about every Python-side shape comparison and the legacy exporter
        # about its own deprecation; both are expected here and checked by the parity test.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=opset,
                              input_names=list(graph.input_names), output_names=list(graph.output_names),
                              dynamic_axes=graph.dynamic_axes(), do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def drop_noop_casts(model):
    """Remove ``Cast`` nodes whose input already has the target type; returns the count.

    The tracer emits one per ``.float()`` on a float32 tensor (the T5 norm calls it twice);
    ONNX Runtime 1.32's cast elimination then drops such a node but leaves a consumer
    pointing at its output, and the session fails to load ("Node input ... is not a graph
    input, initializer, or output of a previous node").
    """
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    types: Dict[str, int] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    graph_outputs = {o.name for o in model.graph.output}
    rename: Dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in rename:
                node.input[index] = rename[name]
        if node.op_type == "Cast" and node.output[0] not in graph_outputs:
            target = next(a.i for a in node.attribute if a.name == "to")
            if types.get(node.input[0]) == target:
                rename[node.output[0]] = node.input[0]
                continue
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(rename)


def check_graph(model, graph: GraphSpec, where: str):
    """Full ``onnx.checker`` check, strict shape inference, and the I/O names and dtypes
    against ``graph``. Returns the model with inferred shapes (value_info) filled in."""
    import onnx
    from onnx import shape_inference

    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ModelDirError(f"{where}: the ONNX graph failed its check: {exc}") from None
    check_graph_io(inferred, graph, where)
    return inferred


def check_graph_io(model, graph: GraphSpec, where: str) -> None:
    """The graph's inputs and outputs must be the spec's, in order, with the spec's dtypes and ranks."""
    names = {onnx_type: name for name, (_, onnx_type) in DTYPES.items()}

    def declared(values):
        return [(v.name, names.get(v.type.tensor_type.elem_type, f"ONNX type {v.type.tensor_type.elem_type}"),
                 len(v.type.tensor_type.shape.dim)) for v in values]

    check_io(graph, declared(model.graph.input), declared(model.graph.output), where)


def export_towers(model: nn.Module, opset: int = DEFAULT_OPSET,
                  names: Sequence[str] = (IMAGE.name, TEXT.name)) -> Dict[str, object]:
    """Trace, clean and check the towers in ``names``. Returns {graph name: float32 ModelProto}."""
    _check_opset(opset)
    config = model.cfg
    graphs = {}
    for graph, module, args in ((IMAGE, ImageGraph(model), (image_example(config),)),
                                (TEXT, TextGraph(model), text_example(config))):
        if graph.name not in names:
            continue
        proto = trace_to_onnx(module, graph, args, opset)
        drop_noop_casts(proto)
        proto.producer_name = "clippy-rt"
        proto.doc_string = f"clippy-rt {graph.name} tower ({config.arch})"
        graphs[graph.name] = check_graph(proto, graph, f"{graph.name} graph")
    return graphs


def _check_opset(opset: int) -> None:
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityRow:
    """Torch float32 against one ONNX graph at one input shape.

    ``max_abs`` maps each output to its max absolute error; ``label_agreement`` is the % of
    patches whose argmax over the parity prompts' text embeddings is the same (patch-grid
    labels, text and image embeddings from the same runtime); ``class_agreement`` the % of
    images whose top class (pooled embedding) is the same.
    """

    precision: str
    size: Tuple[int, int]
    batch: int
    max_abs: Dict[str, float]
    label_agreement: float
    class_agreement: float

    def to_dict(self) -> Dict[str, object]:
        return {"precision": self.precision, "size": list(self.size), "batch": self.batch,
                "max_abs": dict(self.max_abs), "label_agreement": self.label_agreement,
                "class_agreement": self.class_agreement}


def parity_prompts(config: ClippyConfig) -> List[str]:
    from clippy_rt.config import format_prompt

    return [format_prompt(config.prompt_template, name) for name in PARITY_CLASSES]


def measure_parity(model: nn.Module, tokenizer, runners: Mapping[str, Tuple[object, object]],
                   sizes: Sequence[Tuple[int, int]], batches: Sequence[int] = (1, 2),
                   seed: int = 0) -> List[ParityRow]:
    """Compare the torch model (float32) with ONNX Runtime graphs on random pixels.

    ``runners`` maps a precision to (image runner, text runner), each with
    ``infer(feed) -> {output name: np.ndarray}``. Returns one row per precision, size and batch.
    """
    input_ids, attention_mask = tokenizer.encode(parity_prompts(model.cfg))
    with torch.no_grad():
        text_ref = model.text(input_ids, attention_mask)
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for height, width in sizes:
        for batch in batches:
            pixels = torch.randn(batch, 3, height, width, generator=generator)
            with torch.no_grad():
                patch_ref, pooled_ref = model.visual(pixels)
            for precision, (image_runner, text_runner) in runners.items():
                out = image_runner.infer({IMAGE.inputs[0].name: pixels.numpy()})
                text_out = text_runner.infer({"input_ids": input_ids.numpy(),
                                              "attention_mask": attention_mask.numpy()})
                patch, pooled = (torch.from_numpy(out[n]) for n in IMAGE.output_names)
                text = torch.from_numpy(text_out[TEXT.outputs[0].name])
                errors = {
                    "patch_features": _max_abs(patch, patch_ref),
                    "image_embeds": _max_abs(pooled, pooled_ref),
                    "text_embeds": _max_abs(text, text_ref),
                }
                labels = (patch @ text.T).argmax(-1)
                labels_ref = (patch_ref @ text_ref.T).argmax(-1)
                top = (pooled @ text.T).argmax(-1)
                top_ref = (pooled_ref @ text_ref.T).argmax(-1)
                rows.append(ParityRow(
                    precision=precision, size=(height, width), batch=batch, max_abs=errors,
                    label_agreement=100.0 * float((labels == labels_ref).float().mean()),
                    class_agreement=100.0 * float((top == top_ref).float().mean())))
    return rows


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def format_parity_table(rows: Sequence[ParityRow]) -> str:
    """A markdown table of parity rows."""
    lines = ["| precision | size (HxW) | batch | patch_features max abs | image_embeds max abs | "
             "text_embeds max abs | patch labels agree % | top class agree % |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        err = row.max_abs
        lines.append(f"| {row.precision} | {row.size[0]}x{row.size[1]} | {row.batch} | "
                     f"{err['patch_features']:.2e} | {err['image_embeds']:.2e} | {err['text_embeds']:.2e} | "
                     f"{row.label_agreement:.2f} | {row.class_agreement:.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The ONNX directory
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Dict[str, object]
    parity: List[ParityRow] = field(default_factory=list)


def require_onnx():
    """``import onnx`` and check that onnxruntime is importable (both needed to export)."""
    try:
        import onnx
        # The parity check and the float16 converter run on onnxruntime.
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"clippy-rt export needs onnx and onnxruntime ({exc}); install them with: "
                                      f"pip install 'clippy-rt[onnx]'") from exc
    del onnxruntime
    return onnx


def tool_versions() -> Dict[str, str]:
    import onnx

    versions = {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    from clippy_rt import __version__

    versions["clippy_rt"] = __version__
    return versions


def _sizes(check_sizes: Optional[Sequence], config: ClippyConfig) -> List[Tuple[int, int]]:
    if check_sizes is None:
        base = config.image.image_size
        check_sizes = (base, 2 * base)
    sizes = []
    patch = config.image.patch_size
    for size in check_sizes:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height <= 0 or width <= 0 or height % patch or width % patch:
            raise InputError(f"check size {height}x{width} must be positive multiples of the patch size {patch}")
        sizes.append((int(height), int(width)))
    if not sizes:
        raise InputError("give at least one check size")
    return sizes


def export_onnx(model_dir: Path, out: Path, *, fp16: bool = False, int8: bool = False,
                openvino_int8: bool = False, calibration: Optional[Tuple[Sequence, Sequence[str], str]] = None,
                opset: int = DEFAULT_OPSET, check_sizes: Optional[Sequence] = None, check_batches: Sequence[int] = (1, 2),
                seg_head: bool = True, overwrite: bool = False,
                log: Optional[Callable[[str], None]] = None) -> ExportResult:
    """Export ``model_dir`` to the ONNX directory ``out`` (written atomically).

    ``fp16`` adds float16 graphs beside the float32 ones, ``int8`` int8 ones (recorded under
    the manifest's ``quantization``). ``openvino_int8`` adds OpenVINO int8 graphs quantised
    by NNCF on ``calibration`` = (images, prompts, a description of their source)
    (``openvino_int8``; recorded under the manifest's ``openvino_int8``). ``check_sizes`` are image sizes
    (ints or (H, W)) for the parity check, by default the config's size and twice it.
    Raises ``InputError`` for bad arguments, ``ModelDirError`` / ``CheckpointError`` for a
    bad model directory, and ``ModelDirError`` if a graph fails its check.
    """
    onnx = require_onnx()

    from clippy_rt.backends.onnxruntime import OrtRunner
    from clippy_rt.formats.model_dir import load_model
    from clippy_rt.tokenizer import load_tokenizer

    from .fp16 import convert_to_fp16

    log = log or (lambda message: None)
    _check_opset(opset)
    out = Path(out)
    check_output_dir(out, overwrite)
    model, info = load_model(Path(model_dir))
    config = info.config
    sizes = _sizes(check_sizes, config)
    if not check_batches or any(not isinstance(b, int) or b < 1 for b in check_batches):
        raise InputError(f"check batches must be positive integers, got {check_batches!r}")
    tokenizer = load_tokenizer(info.tokenizer, config)
    if openvino_int8 and calibration is None:
        raise InputError("OpenVINO int8 graphs need calibration images and prompts")

    log(f"tracing the image and text towers (opset {opset})")
    graphs = {"fp32": export_towers(model, opset)}
    if fp16:
        log("converting to float16")
        graphs["fp16"] = {name: convert_to_fp16(proto, name) for name, proto in graphs["fp32"].items()}
        for name, proto in graphs["fp16"].items():
            check_graph(proto, GRAPHS[name], f"{name} fp16 graph")

    with atomic_directory(out, overwrite=overwrite) as tmp:
        files: Dict[str, Dict[str, object]] = {}
        for precision, protos in graphs.items():
            for graph in TOWERS:
                filename = graph.filename(precision)
                onnx.save_model(protos[graph.name], str(tmp / filename))
                files[filename] = {"graph": graph.name, "precision": precision}
        precisions = list(graphs)
        quantization = None
        if int8:
            from .int8 import write_int8_graphs

            log("quantising the weight products to int8")
            int8_files, quantization = write_int8_graphs(tmp, check_graph)
            files.update(int8_files)
            precisions.append("int8")
        openvino_entry = None
        if openvino_int8:
            from .openvino_int8 import write_openvino_int8

            images, prompts, source = calibration
            log(f"quantising for OpenVINO with NNCF on {len(images)} images and {len(prompts)} prompts")
            openvino_files, openvino_entry = write_openvino_int8(tmp, config, tokenizer, images, prompts, source)
            files.update(openvino_files)
        if seg_head:
            from .seg_head_graph import export_seg_head

            export_seg_head(tmp / SEG_HEAD.filename(), opset)
            files[SEG_HEAD.filename()] = {"graph": SEG_HEAD.name, "precision": "fp32"}
        config.save(tmp / CONFIG_FILE)
        shutil.copyfile(info.tokenizer, tmp / info.tokenizer.name)
        # Every file is listed and hashed, the tokenizer and config.json included.
        files[CONFIG_FILE] = {}
        files[info.tokenizer.name] = {}
        if (Path(model_dir) / VOCABULARY_FILE).is_file():
            shutil.copyfile(Path(model_dir) / VOCABULARY_FILE, tmp / VOCABULARY_FILE)
            files[VOCABULARY_FILE] = {}
        for filename, entry in files.items():
            entry["bytes"] = (tmp / filename).stat().st_size
            entry["sha256"] = sha256_file(tmp / filename)

        log(f"checking parity with ONNX Runtime at {', '.join(f'{h}x{w}' for h, w in sizes)}")
        runners = {precision: (OrtRunner(tmp / IMAGE.filename(precision), IMAGE, config),
                               OrtRunner(tmp / TEXT.filename(precision), TEXT, config))
                   for precision in precisions}
        rows = measure_parity(model, tokenizer, runners, sizes, check_batches)

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": config.to_dict(),
            "logit_scale": float(model.logit_scale.detach()),
            "opset": opset,
            "precisions": precisions,
            "io_kept_float32": True,
            "graphs": {graph.name: graph.describe(config) for graph in TOWERS + ((SEG_HEAD,) if seg_head else ())},
            "files": files,
            "tokenizer": info.tokenizer.name,
            "source": {"model_dir": str(Path(model_dir).resolve()), "weights_sha256": sha256_file(info.weights)},
            "tools": tool_versions(),
            "parity": [row.to_dict() for row in rows],
        }
        if quantization is not None:
            manifest["quantization"] = quantization
        if openvino_entry is not None:
            manifest[OPENVINO_INT8] = openvino_entry
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(path=out, manifest=manifest, parity=rows)
