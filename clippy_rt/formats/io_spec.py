"""The one I/O specification of the exported graphs: tensor names, dtypes and axes.

The exporter names graph inputs and outputs from here, the TensorRT builder derives its
optimisation profiles from here, and every runtime validates its feed against here, so a
name or an axis is changed in exactly one place.

Graphs (D = the embedding width, p = the patch size, h = H / p, w = W / p):

    image.onnx     pixel_values   float32 [B, 3, H, W]  ->  patch_features float32 [B, h*w, D]
                                                            image_embeds   float32 [B, D]
    text.onnx      input_ids      int64   [K, L]        ->  text_embeds    float32 [K, D]
                   attention_mask int64   [K, L]
    seg_head.onnx  patch_features float32 [B, h*w, D]   ->  labels int64   [B, H_out, W_out]
                   text_embeds    float32 [K, D]            scores float32 [B, H_out, W_out]
                   grid_size      int64   [2]  (h, w)
                   output_size    int64   [2]  (H_out, W_out)

Graph inputs and outputs are float32 in every precision: a float16 graph casts after its
inputs and before its outputs, so callers never see the compute precision.

Axes are either fixed integers or symbolic names. ``"embed"`` is fixed per model (resolved
from the config); the other names are dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple, Union

import numpy as np

from ..config import ClippyConfig
from ..errors import InputError

Axis = Union[int, str]

# dtype name -> (numpy dtype, ONNX TensorProto enum value). The enum values are ONNX's
# (FLOAT = 1, INT64 = 7, FLOAT16 = 10) so that this module does not import onnx.
DTYPES = {
    "float32": (np.dtype(np.float32), 1),
    "int64": (np.dtype(np.int64), 7),
    "float16": (np.dtype(np.float16), 10),
}

# Axis names fixed by the model rather than by the caller.
FIXED_AXES = ("embed",)

# The compute precisions a graph file can hold (its inputs and outputs stay float32).
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, dtype name and axes."""

    name: str
    dtype: str
    axes: Tuple[Axis, ...]
    doc: str = ""

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype][0]

    @property
    def onnx_type(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        """{axis index: symbolic name} for the axes that vary between calls."""
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str) and a not in FIXED_AXES}

    def shape(self, dims: Mapping[str, int]) -> Tuple[int, ...]:
        """The concrete shape for the named sizes in ``dims``."""
        return tuple(a if isinstance(a, int) else int(dims[a]) for a in self.axes)

    def describe(self, fixed: Mapping[str, int]) -> Dict[str, object]:
        """JSON description for manifests: name, dtype and the shape with fixed axes filled in."""
        return {"name": self.name, "dtype": self.dtype,
                "shape": [fixed.get(a, a) if isinstance(a, str) else a for a in self.axes]}


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file stem, inputs and outputs."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    def filename(self, precision: str = "fp32") -> str:
        """``image.onnx`` for float32, ``image.fp16.onnx`` for float16."""
        return f"{self.name}.onnx" if precision == "fp32" else f"{self.name}.{precision}.onnx"

    @property
    def input_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        """The ``dynamic_axes`` argument of ``torch.onnx.export``."""
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.inputs + self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def describe(self, config: ClippyConfig) -> Dict[str, object]:
        fixed = fixed_dims(config)
        return {"inputs": [t.describe(fixed) for t in self.inputs],
                "outputs": [t.describe(fixed) for t in self.outputs]}


IMAGE = GraphSpec(
    name="image",
    inputs=(TensorSpec("pixel_values", "float32", ("batch", 3, "height", "width"),
                       "normalised RGB pixels; height and width multiples of the patch size"),),
    outputs=(TensorSpec("patch_features", "float32", ("batch", "patches", "embed"),
                        "L2-normalised patch features, row-major on the (height/p, width/p) grid"),
             TensorSpec("image_embeds", "float32", ("batch", "embed"),
                        "max-pooled, L2-normalised image embedding")),
)

TEXT = GraphSpec(
    name="text",
    inputs=(TensorSpec("input_ids", "int64", ("prompts", "length"), "T5 token ids, right-padded with pad_id"),
            TensorSpec("attention_mask", "int64", ("prompts", "length"), "1 for real tokens, 0 for padding")),
    outputs=(TensorSpec("text_embeds", "float32", ("prompts", "embed"), "L2-normalised text embedding"),),
)

SEG_HEAD = GraphSpec(
    name="seg_head",
    inputs=(TensorSpec("patch_features", "float32", ("batch", "patches", "embed")),
            TensorSpec("text_embeds", "float32", ("prompts", "embed")),
            TensorSpec("grid_size", "int64", (2,), "(h, w) with h * w = patches"),
            TensorSpec("output_size", "int64", (2,), "(height, width) of the label map")),
    outputs=(TensorSpec("labels", "int64", ("batch", "out_height", "out_width")),
             TensorSpec("scores", "float32", ("batch", "out_height", "out_width"))),
)

# The towers, in export order. seg_head.onnx is optional and not part of this tuple.
TOWERS = (IMAGE, TEXT)
GRAPHS = {g.name: g for g in (IMAGE, TEXT, SEG_HEAD)}


def fixed_dims(config: ClippyConfig) -> Dict[str, int]:
    """Sizes of the model-fixed axes."""
    return {"embed": config.embed_dim}


def validate_feed(graph: GraphSpec, feed: Mapping[str, object], config: ClippyConfig,
                  ) -> Dict[str, int]:
    """Check a feed against ``graph``'s inputs; return the named sizes it binds.

    ``feed`` maps input names to numpy arrays or torch tensors. Raises ``InputError``
    (expected vs received) for a missing or unexpected name, a wrong dtype, a wrong rank,
    a fixed axis of the wrong size, a named axis bound to two sizes, an empty axis, and
    the model's own constraints: image sides must be multiples of the patch size, prompt
    length at most ``max_length``, token ids inside the vocabulary.
    """
    if not isinstance(feed, Mapping):
        raise InputError(f"{graph.name} feed must be a mapping of input name -> array, got "
                         f"{type(feed).__name__}")
    expected = set(graph.input_names)
    missing = sorted(expected - set(feed))
    unexpected = sorted(set(feed) - expected)
    if missing or unexpected:
        raise InputError(f"{graph.name} graph takes inputs {', '.join(graph.input_names)}; "
                         f"missing {missing or 'none'}, unexpected {unexpected or 'none'}")
    dims: Dict[str, int] = dict(fixed_dims(config))
    for spec in graph.inputs:
        value = feed[spec.name]
        shape, dtype = _shape_and_dtype(value, spec.name)
        if dtype != spec.dtype:
            raise InputError(f"input {spec.name!r} must be {spec.dtype}, got {dtype}")
        if len(shape) != len(spec.axes):
            raise InputError(f"input {spec.name!r} must have shape {_pretty(spec.axes)} "
                             f"({len(spec.axes)} dimensions), got {tuple(shape)}")
        for index, (axis, size) in enumerate(zip(spec.axes, shape)):
            if isinstance(axis, int):
                if size != axis:
                    raise InputError(f"input {spec.name!r} dimension {index} must be {axis} "
                                     f"(shape {_pretty(spec.axes)}), got {tuple(shape)}")
                continue
            if size < 1:
                raise InputError(f"input {spec.name!r} has an empty dimension {index} ({axis}): "
                                 f"shape {tuple(shape)}")
            if axis in dims and dims[axis] != size:
                raise InputError(f"input {spec.name!r} dimension {index} ({axis}) is {size} but another "
                                 f"input binds {axis} = {dims[axis]}")
            dims[axis] = size
    _check_model_constraints(graph, feed, dims, config)
    return dims


def _check_model_constraints(graph: GraphSpec, feed: Mapping[str, object], dims: Dict[str, int],
                             config: ClippyConfig) -> None:
    if graph.name == IMAGE.name:
        patch = config.image.patch_size
        height, width = dims["height"], dims["width"]
        if height % patch or width % patch:
            raise InputError(f"pixel_values height and width must be multiples of the patch size {patch}, "
                             f"got {height}x{width}")
    elif graph.name == TEXT.name:
        if dims["length"] > config.text.max_length:
            raise InputError(f"prompt length {dims['length']} exceeds the model's max_length "
                             f"{config.text.max_length}")
        ids = feed["input_ids"]
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= config.text.vocab_size:
            raise InputError(f"input_ids must lie in [0, {config.text.vocab_size}), got values in "
                             f"[{low}, {high}]")


def _shape_and_dtype(value: object, name: str) -> Tuple[Tuple[int, ...], str]:
    if isinstance(value, np.ndarray):
        return tuple(value.shape), str(value.dtype)
    # torch is imported only when a tensor is actually passed.
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(f"input {name!r} must be a numpy array or a torch tensor, got "
                         f"{type(value).__name__}")
    dtype_name = str(dtype).replace("torch.", "")
    return tuple(int(s) for s in shape), dtype_name


def _pretty(axes: Sequence[Axis]) -> str:
    return "[" + ", ".join(str(a) for a in axes) + "]"


def graph_for(name: str) -> GraphSpec:
    try:
        return GRAPHS[name]
    except KeyError:
        raise InputError(f"unknown graph {name!r}; known: {', '.join(GRAPHS)}") from None



def check_io(graph: GraphSpec, inputs: Sequence[Tuple[str, object, object]],
             outputs: Sequence[Tuple[str, object, object]], where: object, ordered: bool = True) -> None:
    """Check a loaded graph's declared tensors against ``graph``'s spec.

    ``inputs`` and ``outputs`` list ``(name, dtype name or None, rank or None)`` as the
    graph file or engine declares them (None: not checked). With ``ordered`` the names must
    come in the spec's order. Raises ``ModelDirError`` naming ``where`` and the mismatch.
    """
    from ..errors import ModelDirError

    for kind, declared, specs in (("inputs", inputs, graph.inputs), ("outputs", outputs, graph.outputs)):
        names = [entry[0] for entry in declared]
        expected = [spec.name for spec in specs]
        if (names if ordered else sorted(names)) != (expected if ordered else sorted(expected)):
            raise ModelDirError(f"{where}: graph {kind} are {names}, but the {graph.name} graph must have "
                                f"{expected}")
        by_name = {entry[0]: entry for entry in declared}
        for spec in specs:
            _, dtype, rank = by_name[spec.name]
            if dtype is not None and dtype != spec.dtype:
                raise ModelDirError(f"{where}: {spec.name} is {dtype}, expected {spec.dtype}")
            if rank is not None and rank != len(spec.axes):
                raise ModelDirError(f"{where}: {spec.name} has rank {rank}, expected {len(spec.axes)}")
